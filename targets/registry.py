"""Declarative target registry: one TOML file per target (like TVM's target tags).

A target file holds:

    name = "x86-avx512"                 # [a-z0-9._-]+
    description = "..."
    arch = "x86_64"                      # x86_64 | aarch64 | cuda
    threads = 2                          # default thread count (TVM_NUM_THREADS, num-cores)
    rpc_key = "x86-avx512"               # key a board's rpc_server registers with the tracker
    lut = "x86-avx512.json"              # relative to targets/luts/ (built-ins) or to the TOML's folder
    cross_compiler = "aarch64-linux-gnu-gcc"   # optional; absent = host compiler
    [tvm]                                # the TVM target as a JSON dict (never a string)
    kind = "llvm"; mtriple = "..."; mcpu = "..."; mattr = ["+neon"]; num-cores = 4
    [costmodel]                          # optional parameters of targets/costmodel.py

Built-ins live in targets/builtin/*.toml; a user passes a path to their own file wherever a target
name is accepted. Nothing is read at import time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcpnas.errors import TargetError
from dcpnas.io import is_finite_number, read_toml

if TYPE_CHECKING:  # pragma: no cover
    from dcpnas.targets.lut import LatencyTable

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
LUT_DIR = Path(__file__).resolve().parent / "luts"
ARCHES = ("x86_64", "aarch64", "cuda")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_REQUIRED = {"name": str, "description": str, "arch": str, "threads": int, "rpc_key": str, "lut": str, "tvm": dict}
_OPTIONAL = {"cross_compiler": str, "costmodel": dict}


@dataclass(frozen=True)
class Target:
    """A compilation and timing target.

    tvm: the TVM target dict (kind, mtriple, mcpu, mattr, num-cores; cuda: arch and host).
    cross_compiler: C compiler for export_library (None: the host's). threads: default thread count.
    lut_path: where its latency table lives. costmodel: parameters for a `modeled` LUT ({} = defaults).
    """

    name: str
    description: str
    arch: str
    tvm: dict
    threads: int
    rpc_key: str
    lut_path: Path
    cross_compiler: str | None = None
    costmodel: dict = field(default_factory=dict)
    source: Path | None = None

    @property
    def is_local(self) -> bool:
        """True when code for this target runs on this (x86-64) machine without RPC."""
        return self.arch == "x86_64"

    def with_threads(self, threads: int) -> "Target":
        """A copy with another thread count (also the TVM dict's num-cores for CPU targets)."""
        if threads < 1:
            raise TargetError(f"threads must be >= 1, got {threads}")
        tvm = dict(self.tvm)
        if tvm.get("kind") == "llvm":
            tvm["num-cores"] = threads
        return replace(self, threads=threads, tvm=tvm)

    def tvm_target(self):
        """The tvm.target.Target (imports TVM)."""
        import tvm

        try:
            return tvm.target.Target(self.tvm)
        except Exception as e:  # TVM raises several types for a bad dict
            raise TargetError(f"target {self.name}: TVM rejects its target dict {self.tvm}: {e}") from None

    def lut_path_for(self, threads: int | None = None) -> Path:
        """The LUT file that holds `threads`-thread figures: `<lut stem>.t<N>.json` beside the `lut` file where
        one is shipped (one table per thread count), else the `lut` file itself (None: that file; its own
        thread count is inside it, and callers refuse a mismatch: LatencyTable.check_threads)."""
        if threads is not None:
            p = self.threads_lut_path(threads)
            if p.is_file():
                return p
        return self.lut_path

    def threads_lut_path(self, threads: int) -> Path:
        """Where a table measured at `threads` threads lives beside the `lut` file (present or not)."""
        return self.lut_path.with_name(f"{self.lut_path.stem}.t{int(threads)}.json")

    def lut_thread_counts(self) -> list[int]:
        """The thread counts of the shipped per-thread tables (`<lut stem>.t<N>.json`), ascending."""
        out = []
        for p in self.lut_path.parent.glob(f"{self.lut_path.stem}.t*.json"):
            n = p.name[len(self.lut_path.stem) + 2:-len(".json")]
            if n.isdigit():
                out.append(int(n))
        return sorted(out)

    def load_lut(self, threads: int | None = None) -> "LatencyTable":
        """Its latency table (for `threads`: lut_path_for); LutError telling to run `dcpnas lut build` when
        there is none."""
        from dcpnas.targets.lut import LatencyTable

        return LatencyTable.load(self.lut_path_for(threads), expect_target=self.name)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "arch": self.arch, "tvm": self.tvm,
            "threads": self.threads, "rpc_key": self.rpc_key, "lut_path": str(self.lut_path),
            "cross_compiler": self.cross_compiler, "costmodel": self.costmodel,
            "source": str(self.source) if self.source else None,
        }


def parse_target(data: dict, source: Path | None = None, lut_dir: Path | None = None) -> Target:
    """Validate a target record (a parsed TOML table) and build the Target; TargetError says what is wrong."""
    where = str(source) if source else "target record"
    for key, typ in _REQUIRED.items():
        if key not in data:
            raise TargetError(f"{where}: missing field {key!r} (required: {', '.join(_REQUIRED)})")
        if not isinstance(data[key], typ) or (typ is int and isinstance(data[key], bool)):
            raise TargetError(f"{where}: field {key!r} must be a {typ.__name__}, got {data[key]!r}")
    for key, typ in _OPTIONAL.items():
        if key in data and not isinstance(data[key], typ):
            raise TargetError(f"{where}: field {key!r} must be a {typ.__name__}, got {data[key]!r}")
    unknown = set(data) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise TargetError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = data["name"]
    if not _NAME.match(name):
        raise TargetError(f"{where}: bad name {name!r} (lower-case letters, digits, '.', '_', '-')")
    if data["arch"] not in ARCHES:
        raise TargetError(f"{where}: arch must be one of {', '.join(ARCHES)}, got {data['arch']!r}")
    if data["threads"] < 1:
        raise TargetError(f"{where}: threads must be >= 1, got {data['threads']}")
    cm = data.get("costmodel", {})
    for table in ("coef", "scale"):
        v = cm.get(table, {})
        if not isinstance(v, dict) or not all(is_finite_number(x) and x >= 0 for x in v.values()):
            raise TargetError(f"{where}: [costmodel.{table}] must map features to finite numbers >= 0, got {v!r}")
    if "reference" in cm and not isinstance(cm["reference"], str):
        raise TargetError(f"{where}: [costmodel] reference must be a target name, got {cm['reference']!r}")
    tvm = dict(data["tvm"])
    kind = tvm.get("kind")
    if kind not in ("llvm", "cuda"):
        raise TargetError(f"{where}: [tvm] kind must be 'llvm' or 'cuda', got {kind!r}")
    if kind == "llvm":
        for k in ("mtriple", "mcpu"):
            if not isinstance(tvm.get(k), str) or not tvm[k]:
                # mcpu "native" silently becomes "generic" in the PyPI wheel (TVM.md): insist on both
                raise TargetError(f"{where}: [tvm] needs {k!r} (a string) for an llvm target")
        if tvm["mcpu"] == "native":
            raise TargetError(f"{where}: [tvm] mcpu 'native' falls back to generic code; name the CPU (e.g. znver4)")
        cores = tvm.get("num-cores", 1)
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise TargetError(f"{where}: [tvm] num-cores must be an integer >= 1, got {cores!r}")
        if "mattr" in tvm and not (isinstance(tvm["mattr"], list) and all(isinstance(a, str) for a in tvm["mattr"])):
            raise TargetError(f"{where}: [tvm] mattr must be a list of strings like ['+neon']")
        want = {"x86_64": "x86_64", "aarch64": "aarch64"}.get(data["arch"])
        if want is None or not tvm["mtriple"].startswith(want):
            raise TargetError(f"{where}: arch {data['arch']!r} does not match mtriple {tvm['mtriple']!r}")
    else:
        if data["arch"] != "cuda":
            raise TargetError(f"{where}: a cuda [tvm] kind needs arch = 'cuda'")
        if not re.match(r"^sm_\d+$", str(tvm.get("arch", ""))):
            raise TargetError(f"{where}: [tvm] arch must be like 'sm_80' for a cuda target")
    cc = data.get("cross_compiler") or None
    lut = Path(data["lut"])
    if not lut.is_absolute():
        base = lut_dir if lut_dir is not None else (source.parent if source else Path.cwd())
        lut = base / lut
    return Target(name=name, description=data["description"], arch=data["arch"], tvm=tvm,
                  threads=data["threads"], rpc_key=data["rpc_key"], lut_path=lut, cross_compiler=cc,
                  costmodel=dict(data.get("costmodel", {})), source=source)


def load_target_file(path: str | Path, lut_dir: Path | None = None) -> Target:
    """Read and validate one target TOML file (a user's own: `--target-file`, or a built-in)."""
    path = Path(path)
    return parse_target(read_toml(path, TargetError), source=path, lut_dir=lut_dir)


def check_llvm_cpu(target: Target) -> None:
    """Refuse an llvm target whose mcpu LLVM does not know for its mtriple (TVM would log an error per
    compiled function and fall back to generic code). Imports TVM."""
    if target.tvm.get("kind") != "llvm":
        return
    import tvm
    from tvm.target import codegen

    triple, cpu = target.tvm["mtriple"], target.tvm["mcpu"]
    try:
        known = set(codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm", "mtriple": triple})))
    except Exception as e:  # TVM raises its own error types for an unknown triple
        raise TargetError(f"{target.source or target.name}: [tvm] mtriple {triple!r} is not known to LLVM "
                          f"({str(e).strip().splitlines()[-1]})") from None
    if known and cpu not in known:
        close = sorted(k for k in known if k[:3] == cpu[:3])[:6] or sorted(known)[:6]
        raise TargetError(f"{target.source or target.name}: [tvm] mcpu {cpu!r} is not a CPU LLVM knows for "
                          f"{triple} (e.g. {', '.join(close)})")


def is_builtin_target(name: str) -> bool:
    """Whether `name` names a built-in target: the only kind a received genotype or manifest may pick (a target
    file names a cross compiler that the build runs)."""
    return name in {t.name for t in list_targets()}


def list_targets(builtin_dir: Path = BUILTIN_DIR, lut_dir: Path = LUT_DIR) -> list[Target]:
    """The built-in targets, sorted by name."""
    targets = [load_target_file(p, lut_dir=lut_dir) for p in sorted(builtin_dir.glob("*.toml"))]
    names = [t.name for t in targets]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise TargetError(f"duplicate built-in target names: {', '.join(sorted(dup))}")
    return sorted(targets, key=lambda t: t.name)


def get_target(name_or_path: str | Path | Target, threads: int | None = None) -> Target:
    """A built-in target by name, or a user's target TOML by path; `threads` overrides the default."""
    if isinstance(name_or_path, Target):
        target = name_or_path
    else:
        s = str(name_or_path)
        if s.endswith(".toml") or Path(s).is_file():
            target = load_target_file(s)
            check_llvm_cpu(target)  # a user's file: the built-ins are known good (and stay TVM-free)
        else:
            known = {t.name: t for t in list_targets()}
            if s not in known:
                raise TargetError(f"unknown target {s!r}; known: {', '.join(known)} (or pass a target .toml file)")
            target = known[s]
    return target.with_threads(threads) if threads else target


def describe(target: Target) -> dict[str, Any]:
    """Record for `dcpnas targets`: name, arch, description, threads, and the state of its LUT."""
    from dcpnas.errors import DcpnasError
    from dcpnas.targets.lut import LatencyTable

    row = {"target": target.name, "arch": target.arch, "description": target.description,
           "threads": target.threads, "rpc_key": target.rpc_key, "lut_path": str(target.lut_path)}
    if not target.lut_path.is_file():
        row.update(lut="missing", lut_method=None, lut_device=None, lut_entries=0, lut_created=None)
        return row
    try:
        lut = LatencyTable.load(target.lut_path, expect_target=target.name)
    except DcpnasError as e:
        row.update(lut="invalid", lut_method=None, lut_device=None, lut_entries=0, lut_created=None, lut_error=str(e))
        return row
    row.update(lut=lut.method, lut_method=lut.method, lut_device=lut.device, lut_entries=len(lut.entries),
               lut_created=lut.created, lut_threads=lut.threads,
               lut_thread_counts=sorted({lut.threads, *target.lut_thread_counts()}))
    return row

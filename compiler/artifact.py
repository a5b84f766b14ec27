"""A build folder build/<name>-<target>/: model.onnx, the deployable library, manifest.json.

manifest.json (schema dcpnas.build/1), written atomically:
    {"schema", "name", "binary", "target": {"name", "tvm", "threads", "arch"}, "tvm_version",
     "genotype": digest | null, "space": SearchSpace dict | null, "weights": path | "fresh" | "onnx",
     "input": {"name", "shape"}, "output": {"name", "shape"}, "normalization": {"mean","std"} | null,
     "files": {"onnx": {"path", "bytes", "sha256"}, "lib": {...}},
     "onnx_weight_bytes": {"binary", "float"}, "parity": {...parity.compare...},
     "expected_latency_ms": float | null, "expected_latency_source": str,
     "compile_s": {"export", "import", "build", "parity"},
     "layers": [{"name", "op", "nodes", "funcs": [{"name", "args": [[shape, dtype], ...]}], "input_parts", "input_offset"}]}
`layers` lets `dcpnas bench` time every PrimFunc of the library by name (time_evaluator) with args of
those shapes. The library is loadable with the plain TVM runtime (tvm.runtime.load_module) and runs with
relax.VirtualMachine(lib, dev)["main"].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dcpnas.errors import ArtifactError
from dcpnas.io import read_json, sha256_file, write_json

SCHEMA = "dcpnas.build/1"
MANIFEST = "manifest.json"
_REQUIRED = ("name", "binary", "target", "tvm_version", "input", "output", "files", "parity", "layers")


MAX_INPUT_ELEMENTS = 64 * 2**20  # one input of a build: 3 x 4096 x 4096 at most


def _check_fields(m: dict, where: Path) -> None:
    """The types of the manifest fields that loaders and `dcpnas bench` use (a hand-edited or foreign file
    fails here in one line, not later in a traceback)."""
    def bad(field: str, want: str):
        raise ArtifactError(f"{where}: {field} must be {want}; rebuild the folder with `dcpnas compile`")
    if not isinstance(m["binary"], bool):
        bad("binary", "true or false")
    for key in ("target", "input", "output", "files", "parity"):
        if not isinstance(m[key], dict):
            bad(key, "a JSON object")
    if not isinstance(m["layers"], list):
        bad("layers", "a list")
    if not isinstance(m["target"].get("name"), str) or not isinstance(m["target"].get("tvm", {}), dict):
        bad("target", "an object with a name and a TVM target")
    shape = m["input"].get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 5
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        bad("input.shape", "a list of positive integers")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        bad("input.shape", f"at most {MAX_INPUT_ELEMENTS} elements")


def file_record(folder: Path, name: str) -> dict:
    p = folder / name
    return {"path": name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}


@dataclass
class Artifact:
    """A validated build folder. manifest: the parsed manifest.json."""

    path: Path
    manifest: dict

    @property
    def lib_path(self) -> Path:
        return self.path / self.manifest["files"]["lib"]["path"]

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest["files"]["onnx"]["path"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input"]["shape"])

    def save(self) -> Path:
        return write_json(self.path / MANIFEST, self.manifest)

    @classmethod
    def load(cls, path: str | Path, verify_hashes: bool = True) -> "Artifact":
        """Read and validate DIR/manifest.json and the files it names (sizes and sha256)."""
        path = Path(path)
        if not path.is_dir():
            raise ArtifactError(f"{path}: build folder not found (run `dcpnas compile` first)")
        m = read_json(path / MANIFEST, schema=SCHEMA)
        missing = [k for k in _REQUIRED if k not in m]
        if missing:
            raise ArtifactError(f"{path / MANIFEST}: missing field(s) {', '.join(missing)}")
        _check_fields(m, path / MANIFEST)
        for key in ("onnx", "lib"):
            rec = m["files"].get(key)
            if not isinstance(rec, dict) or "path" not in rec:
                raise ArtifactError(f"{path / MANIFEST}: files.{key} is missing")
            name = rec["path"]
            if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
                raise ArtifactError(f"{path / MANIFEST}: files.{key}.path must name a file inside the build folder")
            f = path / name
            if not f.is_file():
                raise ArtifactError(f"{f}: file named in the manifest is missing")
            if verify_hashes and (f.stat().st_size != rec.get("bytes") or sha256_file(f) != rec.get("sha256")):
                raise ArtifactError(f"{f}: does not match the manifest (size or sha256); rebuild the folder")
        return cls(path, m)

    def load_module(self):
        """The library as a runtime module (local; an RPC session loads self.lib_path itself)."""
        import tvm

        return tvm.runtime.load_module(str(self.lib_path))

    def vm(self, dev=None):
        """(relax.VirtualMachine on the local device, library module) for this artifact."""
        import tvm
        from tvm import relax

        lib = self.load_module()
        if dev is None:
            dev = tvm.cuda() if self.manifest["target"]["tvm"].get("kind") == "cuda" else tvm.cpu()
        return relax.VirtualMachine(lib, dev), lib

    def run(self, x):
        """Logits of one input batch x (numpy, the compiled input shape) through the local VM."""
        import tvm

        vm, _ = self.vm()
        dev = tvm.cpu()
        return vm["main"](tvm.runtime.tensor(x, dev)).numpy()


def find_func_module(lib, name: str):
    """The module (lib or one of its imports) that implements PrimFunc `name` (for time_evaluator)."""
    for m in [lib] + list(lib.imports):
        if m.implements_function(name):
            return m
    raise ArtifactError(f"the library has no function {name!r}")


class StagedFolder:
    """A build made in a temporary folder beside `out` and swapped in only when complete, so that a failed,
    interrupted or killed compile never replaces (or half-overwrites) an earlier good build.

        with StagedFolder(out) as stage:      # stage.path: the temporary folder to build into
            ...                               # an exception removes stage.path; `out` is untouched
            stage.commit()                    # replace `out` by the finished build

    An existing `out` must be a build folder (manifest.json) or empty: a folder of other files is refused,
    never replaced. A kill -9 leaves only a hidden `.<name>.partial-*` folder beside `out`.
    """

    def __init__(self, out: str | Path):
        out = Path(out)
        self.out = out.resolve() if out.name in ("", ".", "..") else out  # `-o .` has no name to swap
        self.path: Path | None = None

    def __enter__(self) -> "StagedFolder":
        import tempfile

        from dcpnas.io import umask

        out = self.out
        if out.exists() and not out.is_dir():
            raise ArtifactError(f"{out}: exists and is not a folder; choose another -o")
        if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise ArtifactError(f"{out}: exists and is not a build folder (no {MANIFEST}); choose a new or empty -o")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
            self.path.chmod(0o777 & ~umask())
        except OSError as e:
            blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
            why = f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))
            raise ArtifactError(f"{out}: cannot create the build folder ({why})") from None
        return self

    def holds_good_build(self) -> bool:
        """True when `out` is a loadable build folder whose parity passed."""
        try:
            return bool(Artifact.load(self.out, verify_hashes=False).manifest["parity"].get("passed"))
        except (ArtifactError, AttributeError, TypeError):
            return False

    def commit(self, dest: Path | None = None) -> Path:
        """Move the finished build to `dest` (default `out`), replacing what was there; return `dest`."""
        import os
        import shutil

        dest = Path(dest or self.out)
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        try:
            if dest.exists():
                os.replace(dest, old)
            os.replace(self.path, dest)
        except OSError as e:
            if old.exists() and not dest.exists():
                os.replace(old, dest)
            raise ArtifactError(f"{dest}: cannot move the finished build in place ({e.strerror or e})") from None
        shutil.rmtree(old, ignore_errors=True)
        self.path = None
        return dest

    def __exit__(self, *exc) -> None:
        import shutil

        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

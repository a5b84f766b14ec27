"""Latency lookup tables (schema `dcpnas.lut/1`, DESIGN.md).

    {"schema": "dcpnas.lut/1", "target": "x86-avx512", "tvm_version": "0.27.0", "device": "...",
     "threads": 2, "method": "measured" | "modeled" | "emulated", "created": "2026-...Z",
     "statistic": "median" | "min",
     "entries": {"sep_conv_3x3|8|8|28|28|1": {"mean_ms": 0.05, "std_ms": 0.001, "count": 50, ...}},
     "glue": {"per_cell_ms": 0.01, ...}            # optional, see `query`
     "costmodel": {"coef": {...}, "source": "..."} # optional: fitted cost-model coefficients
     "measurement": {"reference_key", "reference_ms", "median_rel_iqr", ...}  # optional: how stable (measure.py)
     "notes": "..."}

`mean_ms` holds the figure the search uses: for measured tables the `statistic` of the timing
rounds (median; or min on a shared, loaded CPU, where contention only ever adds time), calibrated
by a reference kernel timed in the same rounds, less the VM's call overhead; `std_ms` the spread;
`count` the number of rounds. `threads` is the thread count the figures hold for: `dcpnas lut
check` runs at it (and refuses another), `dcpnas bench` shows the LUT column only at it, and a
search records it with the expected latency.
`emulated` tables (timed under qemu) prove a path works and are never shipped as a target's LUT.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dcpnas.errors import ArtifactError, LutError
from dcpnas.io import atomic_write_text, is_finite_number, read_json, to_json

SCHEMA = "dcpnas.lut/1"
METHODS = ("measured", "modeled", "emulated")
PRE_OPS = ("pre_conv1x1", "pre_reduce")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LatencyTable:
    """OpKey -> latency (ms) of one target. `query(key)` is what dcpnas.latency uses.

    glue: what a sum of op latencies misses, so that a sum over a network's keys (genotype_latency,
    expected_latency) predicts the network:
      call_overhead_ms: the VM's cost of one call, measured at build time and subtracted from every
        measured op; a network pays it once, so it is charged to the `stem` key (one per network);
      per_cell_ms: node adds, concat and dispatch of one cell, fitted by `dcpnas lut check --fit-glue`;
        charged half to each of the two preprocessing keys every cell has (pre_conv1x1 / pre_reduce).
    """

    target: str
    method: str
    device: str
    threads: int
    entries: dict[str, dict] = field(default_factory=dict)
    tvm_version: str = ""
    created: str = ""
    glue: dict = field(default_factory=dict)
    costmodel: dict = field(default_factory=dict)
    notes: str = ""
    statistic: str = "median"
    measurement: dict = field(default_factory=dict)
    path: Path | None = None

    # ---- lookups -------------------------------------------------------------------------------
    def query(self, key: str) -> float:
        """Latency in ms of OpKey `key` (+ its glue share); LutError naming the key when missing."""
        entry = self.entries.get(key)
        if entry is None:
            where = f" ({self.path})" if self.path else ""
            raise LutError(
                f"the {self.method} LUT of target {self.target}{where} has no entry {key!r}; "
                f"run `dcpnas lut build --target {self.target}` with the search space that produces it"
            )
        ms = float(entry["mean_ms"])
        if self.glue:
            op = key.split("|", 1)[0].split(":", 1)[0]
            if op in PRE_OPS:
                ms = max(0.0, ms + 0.5 * float(self.glue.get("per_cell_ms", 0.0)))
            elif op == "stem":
                ms += float(self.glue.get("call_overhead_ms", 0.0))
        return ms

    def check_threads(self, threads: int, what: str) -> None:
        """LutError unless this table was measured with `threads` threads (what: the command that asks)."""
        if int(threads) != self.threads:
            where = f" ({self.path})" if self.path else ""
            raise LutError(f"the {self.target} LUT{where} holds {self.threads}-thread figures; {what} at {threads} "
                           f"threads would not compare with them: use --threads {self.threads}, or build a LUT "
                           f"at {threads} (`dcpnas lut build --target {self.target} --threads {threads} -o FILE`)")

    def raw(self, key: str) -> float:
        """The op's own latency in ms, without glue."""
        if key not in self.entries:
            self.query(key)  # raises the LutError
        return float(self.entries[key]["mean_ms"])

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def missing(self, keys) -> list[str]:
        return [k for k in keys if k not in self.entries]

    # ---- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "target": self.target, "tvm_version": self.tvm_version, "device": self.device,
             "threads": self.threads, "method": self.method, "created": self.created or utc_now(),
             "statistic": self.statistic, "entries": self.entries}
        if self.glue:
            d["glue"] = self.glue
        if self.costmodel:
            d["costmodel"] = self.costmodel
        if self.measurement:
            d["measurement"] = self.measurement
        if self.notes:
            d["notes"] = self.notes
        return d

    def save(self, path: str | Path | None = None) -> Path:
        """Write atomically (temp file + rename) to `path` (default: where it was loaded from)."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise LutError("LatencyTable.save needs a path")
        d = self.to_dict()
        validate(d, str(path))
        atomic_write_text(path, dumps(d))
        self.path = path
        return path

    @classmethod
    def from_dict(cls, d: dict, where: str = "LUT", path: Path | None = None) -> "LatencyTable":
        validate(d, where)
        return cls(target=d["target"], method=d["method"], device=d["device"], threads=int(d["threads"]),
                   entries={k: dict(v) for k, v in d["entries"].items()}, tvm_version=d.get("tvm_version", ""),
                   created=d.get("created", ""), glue=dict(d.get("glue", {})),
                   costmodel=dict(d.get("costmodel", {})), notes=d.get("notes", ""),
                   statistic=d.get("statistic", "median"), measurement=dict(d.get("measurement", {})), path=path)

    @classmethod
    def load(cls, path: str | Path, expect_target: str | None = None) -> "LatencyTable":
        """Load and validate; LutError with the fix when the file is missing or malformed."""
        path = Path(path)
        if not path.is_file():
            name = expect_target or path.stem
            raise LutError(f"no LUT at {path}; run `dcpnas lut build --target {name}`")
        try:
            d = read_json(path, schema=SCHEMA)
        except ArtifactError as e:
            raise LutError(str(e)) from None
        lut = cls.from_dict(d, str(path), path)
        if expect_target is not None and lut.target != expect_target:
            raise LutError(f"{path}: LUT is for target {lut.target!r}, expected {expect_target!r}")
        return lut


def dumps(d: dict) -> str:
    """JSON of a LUT record, one entry per line (thousands of entries stay diff- and grep-friendly)."""
    head = {k: v for k, v in d.items() if k != "entries"}
    lines = ",\n".join(f"    {to_json(k)}: {to_json(v, separators=(', ', ': '))}" for k, v in d["entries"].items())
    body = to_json(head, indent=2)[:-2]  # drop the closing "\n}"
    return f"{body},\n  \"entries\": {{\n{lines}\n  }}\n}}\n"


def _finite_nonneg(v) -> bool:
    return is_finite_number(v) and v >= 0


def validate(d: dict, where: str = "LUT") -> None:
    """Check a LUT record against `dcpnas.lut/1`; LutError says which field is wrong."""
    if not isinstance(d, dict):
        raise LutError(f"{where}: a LUT is a JSON object")
    if d.get("schema") != SCHEMA:
        raise LutError(f"{where}: expected schema {SCHEMA!r}, found {d.get('schema')!r}")
    for k, typ in (("target", str), ("device", str), ("method", str), ("entries", dict)):
        if not isinstance(d.get(k), typ):
            raise LutError(f"{where}: field {k!r} missing or not a {typ.__name__}")
    if d["method"] not in METHODS:
        raise LutError(f"{where}: method must be one of {', '.join(METHODS)}, got {d['method']!r}")
    if not isinstance(d.get("threads"), int) or isinstance(d.get("threads"), bool) or d["threads"] < 1:
        raise LutError(f"{where}: field 'threads' must be an integer >= 1")
    from dcpnas.latency import parse_key

    for key, e in d["entries"].items():
        parse_key(key)
        if not isinstance(e, dict):
            raise LutError(f"{where}: entry {key!r} must be an object with mean_ms, std_ms, count")
        for f in ("mean_ms", "std_ms"):
            if not _finite_nonneg(e.get(f)):
                raise LutError(f"{where}: entry {key!r}: {f} must be a finite number >= 0, got {e.get(f)!r}")
        if not isinstance(e.get("count"), int) or isinstance(e.get("count"), bool) or e["count"] < 0:
            raise LutError(f"{where}: entry {key!r}: count must be an integer >= 0")
    if d.get("statistic", "median") not in ("median", "min"):
        raise LutError(f"{where}: statistic must be 'median' or 'min', got {d.get('statistic')!r}")
    glue = d.get("glue", {})
    if not isinstance(glue, dict) or not all(_finite_nonneg(v) for k, v in glue.items() if k.endswith("_ms")):
        raise LutError(f"{where}: 'glue' must be an object of finite *_ms numbers >= 0")
    for k in ("costmodel", "measurement"):
        v = d.get(k, {})
        if not isinstance(v, dict) or not _all_finite(v):
            raise LutError(f"{where}: {k!r} must be an object whose numbers are all finite")


def _all_finite(v) -> bool:
    """Every number inside `v` (nested objects and lists) is finite."""
    if isinstance(v, dict):
        return all(_all_finite(x) for x in v.values())
    if isinstance(v, list):
        return all(_all_finite(x) for x in v)
    return not isinstance(v, float) or math.isfinite(v)

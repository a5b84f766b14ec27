"""Tuning records of the CPU binary conv (data only; tuning.py measures them): the best register tile per
conv shape. compiler/records/<family>-<mcpu>.json, {"schema": "dcpnas.kernel_records/1", "target",
"tvm_version", "entries": {"<workload key>": {"tile": [form, fv, fn, xt], "ms", "default_ms"}}}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dcpnas.errors import ArtifactError
from dcpnas.io import read_json, write_json

from .binary_conv import ConvGeometry
from .targets import as_target, family

SCHEMA = "dcpnas.kernel_records/1"
RECORDS_DIR = Path(__file__).resolve().parent.parent / "records"


def records_path(target: Any, records_dir: Path = RECORDS_DIR) -> Path:
    t = as_target(target)
    return Path(records_dir) / f"{family(t)}-{t.attrs.get('mcpu', 'generic')}.json"


def workload_key(geo: ConvGeometry) -> str:
    a = geo.attrs
    return (f"n{geo.n}c{geo.c_in}h{geo.h}w{geo.w}o{geo.c_out}k{a.kernel_shape[0]}x{a.kernel_shape[1]}"
            f"s{a.strides[0]}x{a.strides[1]}p{'_'.join(map(str, a.pads))}d{a.dilations[0]}x{a.dilations[1]}g{a.group}")


def load_records(target: Any, records_dir: Path = RECORDS_DIR) -> dict:
    """Entries of the target's records file ({} when there is none); ArtifactError if it is malformed."""
    path = records_path(target, records_dir)
    if not path.exists():
        return {}
    obj = read_json(path, schema=SCHEMA)
    entries = obj.get("entries")
    if not isinstance(entries, dict):
        raise ArtifactError(f"{path}: 'entries' must be an object")
    for k, v in entries.items():
        tile = v.get("tile") if isinstance(v, dict) else None
        if not (isinstance(tile, list) and len(tile) == 4 and tile[0] in ("channel", "pixel")
                and all(isinstance(i, int) and i >= 1 for i in tile[1:])):
            raise ArtifactError(f"{path}: entry {k!r} has no valid 'tile' [form, fv, fn, xt]")
    return entries


def lookup_tile(entries: dict, geo: ConvGeometry) -> tuple | None:
    e = entries.get(workload_key(geo))
    return tuple(e["tile"]) if e else None


def save_records(target: Any, entries: dict, records_dir: Path = RECORDS_DIR) -> Path:
    import tvm

    t = as_target(target)
    path = records_path(t, records_dir)
    merged = load_records(t, records_dir) if path.exists() else {}
    merged.update(entries)
    return write_json(path, {"schema": SCHEMA, "target": target if isinstance(target, dict) else str(t),
                             "tvm_version": tvm.__version__, "entries": dict(sorted(merged.items()))})

"""Versioned JSON artifacts written atomically (temp file + rename) and loaded with validation."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from dcpnas.errors import ArtifactError


def umask() -> int:
    """The process umask, read without changing it (Linux); elsewhere by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def make_folder(path: str | os.PathLike) -> Path:
    """mkdir -p `path`; a file in the way, a read-only or virtual parent raise ArtifactError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))
        raise ArtifactError(f"{path}: cannot create the output folder ({why})") from None
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` so that a reader never sees a half-written file. The file gets the mode a
    plain open() would give it (0666 less the umask), not mkstemp's private 0600. A path that cannot be
    written (a file where a folder should be, a read-only or virtual folder) raises ArtifactError."""
    path = Path(path)
    tmp = None
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else (e.strerror or str(e))
        raise ArtifactError(f"{path}: cannot write ({why})") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def is_finite_number(v: Any) -> bool:
    """v is an int or float (not a bool) and finite: a figure read from an artifact or a config file."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any, **kwargs) -> str:
    """json.dumps, with every NaN or infinite float written as null: JSON has no such numbers (Python would
    write bare NaN/Infinity tokens, which other parsers and parse_json refuse)."""
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _refuse_constant(token: str):
    raise ValueError(f"{token} is not a JSON number")


def parse_json(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity (ValueError, as for any other malformed JSON)."""
    return json.loads(text, parse_constant=_refuse_constant)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON (non-finite floats as null), atomically."""
    return atomic_write_text(path, to_json(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, schema: str | None = None) -> dict:
    """Read a JSON object; with `schema`, check its "schema" field (e.g. "dcpnas.lut/1")."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        obj = parse_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: malformed, NaN/Infinity, an int too long
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ArtifactError(f"{path}: not valid JSON (nested too deeply)") from None
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    if schema is not None and obj.get("schema") != schema:
        raise ArtifactError(f"{path}: expected schema {schema!r}, found {obj.get('schema')!r}")
    return obj


def read_toml(path: str | os.PathLike, error: type[Exception] = ArtifactError) -> dict:
    """Read a TOML file; a missing or malformed file raises `error` naming the path."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise error(f"{path}: not valid TOML (nested too deeply)") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (metrics logs); flushed so that an interrupted run keeps what it wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(to_json(record) + "\n")
        f.flush()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

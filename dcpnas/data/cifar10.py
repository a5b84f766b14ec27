"""CIFAR-10 batches without running anybody's code.

Two on-disk formats are read:
  python  cifar-10-batches-py/data_batch_1..5, test_batch: pickled dicts {b"data": uint8 [N, 3072],
          b"labels": [N ints], ...}. They are read with `SafeUnpickler`, which admits only the handful of
          globals such a file contains (numpy's array/dtype reconstruction and _frombuffer, `_codecs.encode` for bytes
          re-pickled by Python 3) and refuses every other global, so a crafted batch cannot run code.
  binary  cifar-10-batches-bin/data_batch_1..5.bin, test_batch.bin: records of 1 label byte + 3072 bytes.
`read_batches(folder)` returns ((train_x, train_y), (test_x, test_y)) as uint8 [N, 3, 32, 32] / int64 [N].
"""

from __future__ import annotations

import _codecs
import io
import pickle
from pathlib import Path

import numpy as np

from dcpnas.errors import DataError

IMAGE_BYTES = 3 * 32 * 32
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def _numpy_private(module: str, name: str):
    """numpy's own array-rebuilding function `name` (numpy >= 2 moved numpy.core to numpy._core)."""
    import importlib

    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:  # numpy < 2
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


# (module, name) -> the object; everything else is refused. Both numpy module spellings occur in the field.
_ALLOWED = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _numpy_private("multiarray", "_reconstruct")
       for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _numpy_private("numeric", "_frombuffer")  # protocol 5
       for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for data files: plain containers, numbers, strings, bytes and numpy arrays only."""

    def find_class(self, module: str, name: str):
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (not part of a data file)")
        return obj


def safe_load(data: bytes):
    """Unpickle `data` with SafeUnpickler (Python 2 strings read as bytes, as the CIFAR files need)."""
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


def _python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = safe_load(path.read_bytes())
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, RecursionError) as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{path}: not a CIFAR-10 python batch (expected a dict with b'data' and b'labels')")
    try:
        x = np.asarray(d[b"data"])
        y = np.asarray(d[b"labels"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != IMAGE_BYTES:
        raise DataError(f"{path}: data must be uint8 [N, {IMAGE_BYTES}], found {x.dtype} {list(x.shape)}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: labels must be {len(x)} integers, found {y.dtype} {list(y.shape)}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(path, np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw.size == 0 or raw.size % (IMAGE_BYTES + 1):
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of CIFAR-10 binary records "
                        f"({IMAGE_BYTES + 1} bytes each)")
    rec = raw.reshape(-1, IMAGE_BYTES + 1)
    return rec[:, 1:].reshape(-1, 3, 32, 32).copy(), rec[:, 0].astype(np.int64)


def find_folder(folder: Path) -> tuple[Path, str] | None:
    """(batch folder, "python" | "binary") for a CIFAR-10 folder or its parent; None if it is neither."""
    for f in (folder, folder / "cifar-10-batches-py", folder / "cifar-10-batches-bin"):
        if (f / "data_batch_1").is_file():
            return f, "python"
        if (f / "data_batch_1.bin").is_file():
            return f, "binary"
    return None


def read_batches(folder: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train_x, train_y), (test_x, test_y)) of a CIFAR-10 folder in either format."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected cifar-10-batches-py or cifar-10-batches-bin)")
    found = find_folder(folder)
    if found is None:
        raise DataError(f"{folder}: missing data_batch_1 (expected data_batch_1..5 and test_batch, "
                        f"python or .bin format)")
    folder, fmt = found
    suffix, read = ("", _python_batch) if fmt == "python" else (".bin", _binary_batch)

    def batch(name: str):
        p = folder / (name + suffix)
        if not p.is_file():
            raise DataError(f"{folder}: missing {p.name} (expected data_batch_1..5 and test_batch)")
        x, y = read(p)
        if len(y) and not (y.min() >= 0 and y.max() < 10):
            raise DataError(f"{p}: labels must be 0..9, found {int(y.min())}..{int(y.max())}")
        return x, y

    parts = [batch(n) for n in TRAIN_BATCHES]
    test = batch(TEST_BATCH)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), test

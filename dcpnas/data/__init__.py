"""Datasets, all held in memory as uint8 images [N, C, H, W] with int64 labels.

`load_dataset(spec)` picks a loader with one string (the `--data` flag):
  "embedded" (default)        a stratified Fashion-MNIST subset shipped in this package (offline)
  "fashion-mnist:DIR"         the four idx files (optionally .gz) of Fashion-MNIST / MNIST in DIR
  "cifar10:DIR"               cifar-10-batches-py (read without running pickled code) or cifar-10-batches-bin
  "imagefolder:DIR"           DIR/train/<class>/*.png|jpg and DIR/test (or val)/<class>/...
A bare existing folder is recognised by its content. Missing or malformed data raise DataError
naming the path and what was expected.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from dcpnas.data.cifar10 import find_folder, read_batches
from dcpnas.errors import DataError

EMBEDDED_FILE = "fashion_mnist_subset.npz"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Dataset:
    """train_x/test_x: uint8 [N, C, H, W]; train_y/test_y: int64 [N]. mean/std per channel in [0, 1] units."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(float(v) for v in (self.train_x.astype(np.float64) / 255).mean(axis=(0, 2, 3)))

    @property
    def std(self) -> tuple[float, ...]:
        """Per channel, at least one grey level (1/255): a constant channel (a blank colour plane of an
        ImageFolder) would otherwise divide by 0."""
        return tuple(max(float(v), 1 / 255) for v in (self.train_x.astype(np.float64) / 255).std(axis=(0, 2, 3)))

    def normalization(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    def tensors(self, split: str, mean=None, std=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images and labels of `train` or `test`."""
        x, y = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        return normalize(x, mean or self.mean, std or self.std), torch.from_numpy(y.astype(np.int64))

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> "Dataset":
        """A stratified random subset (all classes kept in proportion)."""
        rng = np.random.default_rng(seed)
        tx, ty = _stratified(self.train_x, self.train_y, n_train, rng)
        vx, vy = _stratified(self.test_x, self.test_y, n_test, rng)
        return Dataset(self.name, tx, ty, vx, vy, self.classes)


def normalize(x_uint8: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 (x/255 - mean) / std."""
    x = np.ascontiguousarray(x_uint8)
    x = torch.from_numpy(x if x.flags.writeable else x.copy()).float().div_(255.0)  # idx files are read-only maps
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def _stratified(x, y, n, rng):
    if n is None or n >= len(y):
        return x, y
    classes = np.unique(y)
    # n // classes per class, the remainder spread over the first classes, so that exactly n are kept
    base, extra = divmod(n, len(classes))
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: base + (k < extra)]
                          for k, c in enumerate(classes)])
    idx = np.sort(idx)
    return x[idx], y[idx]


def load_dataset(spec: str | None = "embedded") -> Dataset:
    spec = spec or "embedded"
    if spec == "embedded":
        return load_embedded()
    kind, _, path = spec.partition(":")
    loaders = {"fashion-mnist": load_idx_folder, "mnist": load_idx_folder,
               "cifar10": load_cifar10, "imagefolder": load_imagefolder}
    if kind in loaders and path:
        return loaders[kind](Path(path))
    p = Path(spec)
    if p.is_dir():
        if find_folder(p) is not None:
            return load_cifar10(p)
        if any(p.glob("train-images-idx3-ubyte*")):
            return load_idx_folder(p)
        return load_imagefolder(p)
    raise DataError(
        f"unknown dataset {spec!r}: use 'embedded', 'fashion-mnist:DIR', 'cifar10:DIR', 'imagefolder:DIR' "
        f"or an existing folder"
    )


def load_embedded() -> Dataset:
    ref = resources.files("dcpnas.data").joinpath(EMBEDDED_FILE)
    try:
        with resources.as_file(ref) as path, np.load(path) as z:
            return Dataset("fashion-mnist-subset", z["train_x"], z["train_y"].astype(np.int64),
                           z["test_x"], z["test_y"].astype(np.int64), FASHION_CLASSES)
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        raise DataError(
            f"embedded dataset {EMBEDDED_FILE} is missing or damaged ({e}); rebuild it with "
            f"scripts/build_embedded_data.py"
        ) from None


# -- idx (MNIST / Fashion-MNIST) -----------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) of unsigned bytes."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read idx file ({e})") from None
    if len(data) < 4:
        raise DataError(f"{path}: too short for an idx file")
    zero, dtype, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{path}: not an idx file of unsigned bytes (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} = {int(np.prod(dims))} bytes, file holds {body.size}")
    return body.reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder}: missing {stem}[.gz] (expected the four Fashion-MNIST idx files)")


def load_idx_folder(folder: Path) -> Dataset:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected the Fashion-MNIST idx files)")
    tx = read_idx(_find(folder, "train-images-idx3-ubyte"))
    ty = read_idx(_find(folder, "train-labels-idx1-ubyte"))
    vx = read_idx(_find(folder, "t10k-images-idx3-ubyte"))
    vy = read_idx(_find(folder, "t10k-labels-idx1-ubyte"))
    for x, y, split in ((tx, ty, "train"), (vx, vy, "test")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
        if len(y) and y.max() >= len(FASHION_CLASSES):
            raise DataError(f"{folder}: {split} labels must be 0..{len(FASHION_CLASSES) - 1}, found {int(y.max())}")
    return Dataset("fashion-mnist", tx[:, None], ty.astype(np.int64), vx[:, None], vy.astype(np.int64),
                   FASHION_CLASSES)


# -- CIFAR-10 (python batches read without unpickling code, or the binary format) -------------------

def load_cifar10(folder: Path) -> Dataset:
    (tx, ty), (vx, vy) = read_batches(folder)
    return Dataset("cifar10", tx, ty, vx, vy, CIFAR10_CLASSES)


# -- ImageFolder ----------------------------------------------------------------------------------

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_imagefolder(folder: Path, size: tuple[int, int] | None = None) -> Dataset:
    """DIR/train/<class>/* and DIR/test|val/<class>/*; images resized to the first image's size
    (or `size` = (H, W)), grayscale kept as 1 channel when every image is grayscale."""
    from PIL import Image

    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (expected train/<class>/ and test/<class>/ image folders)")
    test_dir = next((folder / n for n in ("test", "val") if (folder / n).is_dir()), None)
    if not (folder / "train").is_dir() or test_dir is None:
        raise DataError(f"{folder}: expected subfolders train/<class>/ and test/<class>/ (or val/<class>/)")
    classes = tuple(sorted(d.name for d in (folder / "train").iterdir() if d.is_dir()))
    if len(classes) < 2:
        raise DataError(f"{folder / 'train'}: expected one subfolder per class, found {len(classes)}")
    files = {s: [(f, k) for k, c in enumerate(classes) for f in sorted((d / c).glob("*"))
                 if f.suffix.lower() in IMAGE_SUFFIXES] for s, d in (("train", folder / "train"), ("test", test_dir))}
    if not files["train"] or not files["test"]:
        raise DataError(f"{folder}: no images found (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
    images = {}
    for split, items in files.items():
        imgs = []
        for f, _ in items:
            try:
                with Image.open(f) as im:
                    im.load()  # read now and close the file: a large folder must not exhaust file handles
                    imgs.append(im.copy())
            except (OSError, Image.DecompressionBombError, ValueError) as e:  # a bomb is no OSError
                raise DataError(f"{f}: cannot read image ({str(e).splitlines()[0][:200]})") from None
        images[split] = imgs
    gray = all(im.mode in ("L", "1", "I;16") for imgs in images.values() for im in imgs)
    H, W = size or (images["train"][0].height, images["train"][0].width)

    def arr(imgs):
        out = [np.asarray(im.convert("L" if gray else "RGB").resize((W, H)), np.uint8) for im in imgs]
        a = np.stack(out)
        return a[:, None] if gray else a.transpose(0, 3, 1, 2)

    return Dataset(f"imagefolder:{folder.name}", arr(images["train"]),
                   np.array([k for _, k in files["train"]], np.int64), arr(images["test"]),
                   np.array([k for _, k in files["test"]], np.int64), classes)

"""Dataset loaders: embedded subset, idx folders (real and written here), CIFAR-10 pickles, ImageFolder."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dcpnas.data import load_dataset, normalize, read_idx
from dcpnas.errors import DataError

SHARED_FMNIST = Path(__file__).resolve().parents[2] / "shared/data/fashion-mnist"


def _write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)
    return path


def _idx_folder(root: Path, n_train=20, n_test=10, gz=False) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    _write_idx(root / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28)), gz)
    _write_idx(root / f"train-labels-idx1-ubyte{sfx}", np.arange(n_train) % 10, gz)
    _write_idx(root / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28)), gz)
    _write_idx(root / f"t10k-labels-idx1-ubyte{sfx}", np.arange(n_test) % 10, gz)
    return root


def test_embedded():
    d = load_dataset("embedded")
    assert d.num_classes == 10 and d.input_shape == (1, 28, 28)
    assert d.train_x.shape == (6000, 1, 28, 28) and d.test_x.shape == (1000, 1, 28, 28)
    assert d.train_x.dtype == np.uint8 and d.train_y.dtype == np.int64
    assert set(np.unique(d.train_y)) == set(range(10)) and set(np.unique(d.test_y)) == set(range(10))
    assert np.bincount(d.train_y).min() >= 500  # stratified
    x, y = d.tensors("test")
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    xt, _ = d.tensors("train")
    assert abs(float(xt.mean())) < 1e-3 and abs(float(xt.std()) - 1) < 1e-3
    assert load_dataset(None).name == d.name


def test_normalize_and_subset():
    x = np.full((2, 1, 2, 2), 255, np.uint8)
    torch.testing.assert_close(normalize(x, [0.5], [0.25]), torch.full((2, 1, 2, 2), 2.0))
    d = load_dataset("embedded").subset(100, 50, seed=1)
    assert len(d.train_y) == 100 and len(d.test_y) == 50
    assert np.all(np.bincount(d.train_y, minlength=10) == 10)


@pytest.mark.skipif(not SHARED_FMNIST.is_dir(), reason=f"{SHARED_FMNIST} not present")
def test_real_fashion_mnist_folder():
    d = load_dataset(f"fashion-mnist:{SHARED_FMNIST}")
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert np.all(np.bincount(d.train_y) == 6000) and np.all(np.bincount(d.test_y) == 1000)
    assert load_dataset(str(SHARED_FMNIST)).name == "fashion-mnist"  # a bare folder is recognised


@pytest.mark.parametrize("gz", [False, True])
def test_idx_written_here(tmp_path, gz):
    root = _idx_folder(tmp_path / "fm", gz=gz)
    d = load_dataset(f"fashion-mnist:{root}")
    assert d.train_x.shape == (20, 1, 28, 28) and d.test_y.tolist() == list(range(10))
    raw = read_idx(next(root.glob("train-images*")))
    assert np.array_equal(raw, d.train_x[:, 0])


def test_idx_errors_name_the_path(tmp_path):
    root = _idx_folder(tmp_path / "fm")
    bad = root / "t10k-labels-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x0a" + b"\x01" * 5)  # says 10, holds 5
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*header says") as e:
        load_dataset(f"fashion-mnist:{root}")
    assert str(root) in str(e.value)
    bad.write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(DataError, match="not an idx file"):
        load_dataset(f"fashion-mnist:{root}")
    bad.write_bytes(b"\x00")
    with pytest.raises(DataError, match="too short"):
        load_dataset(f"fashion-mnist:{root}")
    bad.unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte") as e:
        load_dataset(f"fashion-mnist:{root}")
    assert str(root) in str(e.value)
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(f"fashion-mnist:{tmp_path / 'nope'}")
    _write_idx(root / "t10k-labels-idx1-ubyte", np.arange(7) % 10)  # 10 images, 7 labels
    with pytest.raises(DataError, match="do not match"):
        load_dataset(f"fashion-mnist:{root}")
    gzbad = _idx_folder(tmp_path / "gz", gz=True) / "train-labels-idx1-ubyte.gz"
    gzbad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read idx file"):
        load_dataset(f"fashion-mnist:{tmp_path / 'gz'}")


def test_unknown_spec():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar10:")


def _cifar_folder(root: Path, per_batch=4) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        with open(root / name, "wb") as f:
            pickle.dump(d, f)
    return root


def test_cifar10_fake_folder(tmp_path):
    root = _cifar_folder(tmp_path / "cifar-10-batches-py")
    for spec in (f"cifar10:{root}", f"cifar10:{tmp_path}", str(root)):
        d = load_dataset(spec)
        assert d.name == "cifar10" and d.num_classes == 10
        assert d.train_x.shape == (20, 3, 32, 32) and d.test_x.shape == (4, 3, 32, 32)
    raw = pickle.load(open(root / "data_batch_1", "rb"))
    assert np.array_equal(d.train_x[0].reshape(-1), raw[b"data"][0])


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_pickle_protocols(tmp_path, protocol):
    """The restricted unpickler reads every protocol a CIFAR-10 batch is found in (the original files
    are Python 2 protocol-2 pickles; re-pickled bytes go through _codecs.encode)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": b"training batch", b"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8),
             b"labels": [1, 2, 3], b"filenames": [b"a.png", b"b.png", b"c.png"]}
        (root / name).write_bytes(pickle.dumps(d, protocol=protocol))
    d = load_dataset(f"cifar10:{tmp_path}")
    assert d.train_x.shape == (15, 3, 32, 32) and list(d.test_y) == [1, 2, 3]


def test_cifar10_binary_format(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    recs = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, 4).astype(np.uint8)
        images = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
        recs[name] = (images, labels)
        (root / f"{name}.bin").write_bytes(np.concatenate([labels[:, None], images], 1).tobytes())
    for spec in (f"cifar10:{tmp_path}", str(root)):
        d = load_dataset(spec)
        assert d.train_x.shape == (20, 3, 32, 32)
        assert np.array_equal(d.test_x.reshape(4, -1), recs["test_batch"][0])
        assert np.array_equal(d.test_y, recs["test_batch"][1])
    (root / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="not a whole number of CIFAR-10 binary records"):
        load_dataset(str(root))
    (root / "test_batch.bin").write_bytes(bytes([10]) + bytes(3072))
    with pytest.raises(DataError, match="labels must be 0..9"):
        load_dataset(str(root))


def test_cifar10_errors(tmp_path):
    root = _cifar_folder(tmp_path / "c")
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3") as e:
        load_dataset(f"cifar10:{root}")
    assert str(root) in str(e.value)
    (root / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"data_batch_3: not a CIFAR-10 python batch"):
        load_dataset(f"cifar10:{root}")
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({b"labels": [1]}, f)
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_dataset(f"cifar10:{root}")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}")


def _png_folder(root: Path, mode="L") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                shape = (8, 6) if mode == "L" else (8, 6, 3)
                Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(root / split / c / f"{k}.png")
    return root


def test_imagefolder_gray_and_rgb(tmp_path):
    d = load_dataset(f"imagefolder:{_png_folder(tmp_path / 'g')}")
    assert d.classes == ("cat", "dog") and d.train_x.shape == (6, 1, 8, 6) and d.test_x.shape == (4, 1, 8, 6)
    assert d.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    d = load_dataset(f"imagefolder:{_png_folder(tmp_path / 'c', 'RGB')}")
    assert d.train_x.shape == (6, 3, 8, 6)


def test_smoke_search_on_a_grayscale_imagefolder(tmp_path):
    """`dcpnas search --data imagefolder:DIR` on small grayscale PNGs (8x6: resized to the smoke budget's 8x8)."""
    from typer.testing import CliRunner

    from dcpnas.cli import app
    from dcpnas.genotype import load_genotype

    root, out = _png_folder(tmp_path / "g"), tmp_path / "run"
    r = CliRunner().invoke(app, ["search", "--data", f"imagefolder:{root}", "--budget", "smoke", "--threads", "1",
                                 "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    s = load_genotype(out / "genotype.json").search
    assert s["dataset"] == "imagefolder:g" and s["config"]["data"] == f"imagefolder:{root}"
    assert s["space"]["input_shape"] == [1, 8, 8] and s["space"]["num_classes"] == 2
    assert 0 <= s["val_accuracy"] <= 1


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="expected subfolders train"):
        (tmp_path / "e").mkdir()
        load_dataset(f"imagefolder:{tmp_path / 'e'}")
    root = _png_folder(tmp_path / "g")
    (root / "train" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"0\.png: cannot read image"):
        load_dataset(f"imagefolder:{root}")
    one = tmp_path / "one"
    (one / "train" / "a").mkdir(parents=True)
    (one / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="one subfolder per class"):
        load_dataset(f"imagefolder:{one}")

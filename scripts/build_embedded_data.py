"""Build dcpnas/data/fashion_mnist_subset.npz: a stratified Fashion-MNIST subset shipped in the package.

Usage: python scripts/build_embedded_data.py [IDX_DIR] [--train-per-class 600] [--test-per-class 100]
IDX_DIR defaults to ../shared/data/fashion-mnist, else /usr/share/datasets/fashion-mnist.
"""

import argparse
from pathlib import Path

import numpy as np

from dcpnas.data import load_idx_folder

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [ROOT.parent / "shared/data/fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("idx_dir", nargs="?", type=Path)
    ap.add_argument("--train-per-class", type=int, default=600)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    src = args.idx_dir or next((c for c in CANDIDATES if c.is_dir()), CANDIDATES[0])
    ds = load_idx_folder(src)
    rng = np.random.default_rng(args.seed)

    def pick(y, per):
        return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per] for c in range(10)]))

    ti, vi = pick(ds.train_y, args.train_per_class), pick(ds.test_y, args.test_per_class)
    out = ROOT / "dcpnas/data/fashion_mnist_subset.npz"
    np.savez_compressed(out, train_x=ds.train_x[ti], train_y=ds.train_y[ti].astype(np.uint8),
                        test_x=ds.test_x[vi], test_y=ds.test_y[vi].astype(np.uint8))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {len(ti)} train, {len(vi)} test images from {src}")


if __name__ == "__main__":
    main()

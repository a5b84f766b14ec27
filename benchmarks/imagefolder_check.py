"""Does the default search work on data it was not tuned on? (issue 12: "any ImageFolder of small
grayscale images").

Writes scikit-learn's bundled digits (1797 8x8 grayscale images, 10 classes, no download) as an
ImageFolder, DIR/train/<digit>/*.png and DIR/test/<digit>/*.png (a stratified split, the images kept at
their native 8x8: the search resizes them to its image_size, 16 by default, bilinear), runs

    dcpnas search --data imagefolder:DIR -o OUT/search -q [SEARCH ARGS]

and writes OUT/imagefolder_check.json (or --json PATH): the Child's and Parent's val accuracy on the test
split, the final alpha entropy per cell type (fraction of uniform), the per-epoch diagnostics, wall and CPU
time (the search's own record in genotype.json), the command and the dataset split.

    python benchmarks/imagefolder_check.py -o runs/imagefolder-check --json benchmarks/results/imagefolder_check.json
    python benchmarks/imagefolder_check.py -o /tmp/ifc --search-args="--budget smoke"    # a pipeline check
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dcpnas.io import write_json

SCHEMA = "dcpnas.imagefolder-check/1"


def write_digits(root: Path, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """sklearn's digits as root/{train,test}/<digit>/<index>.png (uint8, 8x8, mode L); a stratified split."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    idx = np.arange(len(digits.target))
    train, test = train_test_split(idx, test_size=test_fraction, stratify=digits.target, random_state=seed)
    for split, ids in (("train", train), ("test", test)):
        for i in ids:
            folder = root / split / str(int(digits.target[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], "L").save(folder / f"{int(i):04d}.png")
    return {"source": "sklearn.datasets.load_digits", "root": str(root), "image_shape": [1, 8, 8],
            "classes": 10, "train": len(train), "test": len(test), "test_fraction": test_fraction, "seed": seed}


def dcpnas_command() -> list[str]:
    """The `dcpnas` console script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).with_name("dcpnas")
    found = str(beside) if beside.is_file() else shutil.which("dcpnas")
    if found is None:
        raise SystemExit("no `dcpnas` command found beside this Python or on PATH: pip install -e . first")
    return [found]


def summarize(genotype_json: Path) -> dict:
    """The numbers this check reports, from a search's genotype.json ("search" record)."""
    g = json.loads(genotype_json.read_text())
    s = g["search"]
    diagnostics = s.get("diagnostics") or []
    last = diagnostics[-1] if diagnostics else {}
    return {"val_accuracy": s.get("val_accuracy"), "parent_val_accuracy": s.get("parent_val_accuracy"),
            "entropy_normal": last.get("entropy_normal"), "entropy_reduce": last.get("entropy_reduce"),
            "time_s": s.get("time_s"), "cpu_s": s.get("cpu_s"), "dataset": s.get("dataset"),
            "budget": s.get("config", {}).get("budget"), "epochs": s.get("epochs"), "seed": s.get("seed"),
            "diagnostics": diagnostics,
            "genotype": {k: g.get(k) for k in ("normal", "normal_concat", "reduce", "reduce_concat")}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", type=Path, required=True, help="a new folder: the images (digits/) and the search")
    ap.add_argument("--json", type=Path, default=None, help="the result [default: OUT/imagefolder_check.json]")
    ap.add_argument("--search-args", default="", help="more `dcpnas search` arguments, e.g. \"--budget smoke\"")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    args = ap.parse_args(argv)

    data_dir, search_dir = args.out / "digits", args.out / "search"
    for folder in (data_dir, search_dir):
        if folder.exists():
            raise SystemExit(f"{folder} exists: choose a new -o folder")
    split = write_digits(data_dir, args.test_fraction, args.seed)
    cmd = [*dcpnas_command(), "search", "--data", f"imagefolder:{data_dir}", "-o", str(search_dir), "-q",
           *shlex.split(args.search_args)]
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the search failed (exit {done.returncode}): {shlex.join(cmd)}")
    check = shlex.join([Path(sys.executable).name, "benchmarks/imagefolder_check.py",
                        *(argv if argv is not None else sys.argv[1:])])
    record = {"schema": SCHEMA, "command": shlex.join(cmd), "check_command": check, "data": split,
              **summarize(search_dir / "genotype.json"), "subprocess_wall_s": wall}
    path = write_json(args.json or args.out / "imagefolder_check.json", record)
    shown = {k: record[k] for k in ("val_accuracy", "parent_val_accuracy", "entropy_normal", "entropy_reduce",
                                     "time_s", "cpu_s")}
    print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()) + f" -> {path}")
    return record


if __name__ == "__main__":
    main()

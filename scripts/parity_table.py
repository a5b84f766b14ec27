"""Collect the parity records of build folders into one JSON table (and print it).

    python scripts/parity_table.py BUILD_DIR... -o benchmarks/results/published-genotypes/parity.json
        [--command "the command line that made the builds"]

Each row: the build's name, genotype digest, cells x channels, target, and from its manifest's parity
block: passed, top-1 agreement, max |ORT - torch|, max |TVM - torch|, benign flips (ORT, TVM).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcpnas.compiler.artifact import Artifact
from dcpnas.io import write_json


def row(folder: Path) -> dict:
    m = Artifact.load(folder).manifest
    p, s = m["parity"], m.get("space") or {}
    return {"build": folder.name, "genotype": m.get("genotype"), "cells": s.get("cells"), "channels": s.get("channels"),
            "target": m["target"]["name"], "weights": m.get("weights"), "inputs": p.get("inputs"),
            "passed": p.get("passed"), "top1_agreement": p.get("top1_agreement"),
            "max_abs_diff_ort": p.get("max_abs_diff_ort"), "max_abs_diff_tvm": p.get("max_abs_diff_tvm"),
            "benign_flips_ort": p.get("benign_flips_ort"), "benign_flips_tvm": p.get("benign_flips_tvm"),
            "tvm_run": p.get("tvm_run")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("builds", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--command", default="", help="how the builds were made (recorded in the JSON)")
    a = ap.parse_args(argv)
    rows = [row(b) for b in a.builds]
    write_json(a.out, {"schema": "dcpnas.parity-table/1", "command": a.command, "rows": rows})
    for r in rows:
        print(f"{r['build']:<24} {r['cells']}x{r['channels']:<3} passed {r['passed']}  top-1 {r['top1_agreement']:.3f}  "
              f"|ORT-torch| {r['max_abs_diff_ort']:.3g}  |TVM-torch| {r['max_abs_diff_tvm']:.3g}  "
              f"benign flips ORT {r['benign_flips_ort']} TVM {r['benign_flips_tvm']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

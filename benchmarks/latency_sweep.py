"""Does the latency term work? Search at several latency weights; the predicted (LUT) and measured
(compiled, timed) latency of the found genotypes should fall as the weight rises.

    python benchmarks/latency_sweep.py [--target x86-avx512] [--weights 0,0.5,1,2] [--form mul]
                                       [--mode direct] [--json] [--out runs/latency-sweep]

Weight = beta of the `mul` form L * (E[LAT]/T)^beta, or gamma of the `add` form L + gamma (E[LAT]-T)/T
(T = the expected latency of the uniform supernet); weight 0 is the search without the term. Every
search uses the same seed and data; only the weight changes. Measured latency: the 1-bit network of
the genotype on the search space, compiled through dcpnas.compiler and timed with the Profiler
(local targets only). Prints a table (or --json: {"target", "form", "rows": [...], "spearman_*"}) and
writes sweep.json into --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="x86-avx512")
    p.add_argument("--weights", default="0,0.5,1,2", help="comma-separated latency weights")
    p.add_argument("--form", default="mul", choices=("mul", "add"))
    p.add_argument("--mode", default="direct", choices=("dcp", "cp", "direct"),
                   help="search mode (direct: real-valued DARTS, the cheapest that uses the term)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="steps per epoch")
    p.add_argument("--cells", type=int, default=3)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch-lr", type=float, default=None, help="architecture learning rate [default: the config's]")
    p.add_argument("--threads", type=int, default=None, help="threads of the timing [default: the target's]")
    p.add_argument("--no-measure", action="store_true", help="predicted latency only")
    p.add_argument("--statistic", default="min", choices=("median", "min"))
    p.add_argument("--out", default="runs/latency-sweep")
    p.add_argument("--json", action="store_true")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (the lower figure is kept)")
    p.add_argument("--add", action="append", help="sweep.json of an earlier run on the same space: its rows join this one")
    return p.parse_args(argv)


def sweep(args) -> dict:
    import numpy as np

    from dcpnas.config import SearchConfig
    from dcpnas.data import load_dataset
    from dcpnas.latency import genotype_latency
    from dcpnas.model import Network
    from dcpnas.search import run_search
    from dcpnas.targets import get_target
    from dcpnas.targets.measure import default_compile_fn, spearman
    from dcpnas.targets.profiler import Profiler

    target = get_target(args.target)
    lut = target.load_lut()
    weights = [float(w) for w in args.weights.split(",")] if args.weights else []
    out = Path(args.out)
    measure = not args.no_measure and target.is_local
    prof = Profiler(target.with_threads(args.threads) if args.threads else target, repeat=30, min_repeat_ms=0.5,
                    statistic=args.statistic) if measure else None
    compile_fn = default_compile_fn() if measure else None
    rows = []
    input_shape = load_dataset("embedded").input_shape
    for w in weights:
        cfg = SearchConfig.load(overrides={
            "name": f"w{w:g}", "mode": args.mode, "epochs": args.epochs, "warmup_epochs": 1,
            "steps_per_epoch": args.steps, "cells": args.cells, "channels": args.channels,
            "image_size": args.image_size, "n_train": args.n_train, "n_eval": 200, "seed": args.seed,
            "target": target.name, "latency_form": args.form, "arch_lr": args.arch_lr,
            ("latency_beta" if args.form == "mul" else "latency_gamma"): w})
        geno = run_search(cfg, out / f"w{w:g}")
        space = cfg.space(input_shape)
        row = {"weight": w, "genotype": geno.to_dict(), "predicted_ms": genotype_latency(geno, space, lut),
               "val_accuracy": (geno.search or {}).get("val_accuracy"), "measured_ms": None}
        rows.append(row)
        print(f"weight {w:g}: predicted {row['predicted_ms']:.4f} ms", file=sys.stderr, flush=True)
    for extra in args.add or []:  # rows of earlier sweeps (same space), measured again here with the rest
        rows += [r for r in json.loads(Path(extra).read_text())["rows"] if r["weight"] not in weights]
    rows.sort(key=lambda r: r["weight"])
    weights = [r["weight"] for r in rows]
    space = SearchConfig.load(overrides={"cells": args.cells, "channels": args.channels,
                                         "image_size": args.image_size}).space(input_shape)
    if measure:
        # compile every genotype first, then time them in interleaved rounds (short samples, the lower
        # figure kept) so that load from other processes hits all of them alike
        from dcpnas.genotype import Genotype

        shape = (1, *space.input_shape)
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        with tempfile.TemporaryDirectory(prefix="dcpnas-sweep-") as tmp, prof.session() as s:
            mods = [s.load(compile_fn(Network(Genotype.from_dict(r["genotype"]), space, binary=True).eval(), shape,
                                      target, Path(tmp) / f"g{i}")) for i, r in enumerate(rows)]
            for _ in range(args.rounds):
                for r, mod in zip(rows, mods):
                    t = s.time_vm(mod, [x]).value(args.statistic)
                    r["measured_ms"] = t if r["measured_ms"] is None else min(r["measured_ms"], t)
    report = {
        "schema": "dcpnas.latency-sweep/1", "target": target.name, "lut_method": lut.method, "form": args.form,
        "mode": args.mode, "statistic": args.statistic, "threads": prof.threads if prof else None,
        "space": {"cells": args.cells, "channels": args.channels, "image_size": args.image_size}, "rows": rows,
        "spearman_weight_predicted": spearman(weights, [r["predicted_ms"] for r in rows]),
        "spearman_weight_measured": spearman(weights, [r["measured_ms"] for r in rows]) if measure else None,
    }
    from dcpnas.io import write_json

    write_json(out / "sweep.json", report)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    report = sweep(args)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"latency sweep on {report['target']} ({report['lut_method']} LUT), form {report['form']}, mode {report['mode']}")
    print(f"{'weight':>8} {'predicted ms':>13} {'measured ms':>12} {'val acc':>8}  genotype normal ops")
    for r in report["rows"]:
        ops = ",".join(op for op, _ in r["genotype"]["normal"])
        m = "-" if r["measured_ms"] is None else f"{r['measured_ms']:.4f}"
        acc = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.3f}"
        print(f"{r['weight']:>8g} {r['predicted_ms']:>13.4f} {m:>12} {acc:>8}  {ops}")
    print(f"Spearman(weight, predicted) = {report['spearman_weight_predicted']:.3f}; "
          f"Spearman(weight, measured) = {report['spearman_weight_measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-step cost of the Child's architecture step with each curvature estimator vs a first-order step.

Same supernet, same batch, same alphas; each variant is timed `--reps` times after one warm-up and the
median is reported, side by side, with ratios to the first-order step (g_C only, what lambda = 0 costs)
and ggn's speed-up over exact. Also times the weight steps, so the cost of a whole search iteration
(weight step + architecture step) can be compared. Prints a table, or JSON with --json.

    python benchmarks/curvature.py [--budget default] [--reps 5] [--threads 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="default", help="SearchConfig preset giving the supernet and batch size")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from dcpnas.config import SearchConfig
    from dcpnas.parent_child import ParentChild
    from dcpnas.search import prepare_data

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    base = SearchConfig.load(overrides={"budget": args.budget})
    data = prepare_data(base)
    space = base.space(data.input_shape, data.num_classes)
    bs = base.batch_size
    wx, wy, ax, ay = data.w_x[:bs], data.w_y[:bs], data.a_x[:bs], data.a_y[:bs]

    def make(**changes):
        pc = ParentChild(space, base.replace(**changes), total_steps=100)
        pc.set_tangent(ax, ay)
        return pc

    def timed(fn, reps):
        fn()  # warm-up
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return statistics.median(out)

    rows = {}
    pc = make(lam=0.0, decoupled=False)
    rows["parent_weight_step"] = timed(lambda: pc.parent_weight_step(wx, wy), args.reps)
    rows["child_weight_step"] = timed(lambda: pc.child_weight_step(wx, wy), args.reps)
    rows["first_order"] = timed(lambda: pc.child_arch_step(ax, ay), args.reps)
    for name in ("fisher", "ggn", "exact"):
        pc = make(curvature=name, decoupled=False)
        rows[name] = timed(lambda: pc.child_arch_step(ax, ay), args.reps)
    fo, w = rows["first_order"], rows["child_weight_step"]
    result = {
        "space": space.to_dict(), "batch_size": bs, "threads": args.threads, "reps": args.reps,
        "arch_step_s": {k: rows[k] for k in ("first_order", "fisher", "ggn", "exact")},
        "weight_step_s": {"parent": rows["parent_weight_step"], "child": w},
        "ratio_to_first_order": {k: rows[k] / fo for k in ("fisher", "ggn", "exact")},
        "ggn_speedup_over_exact": rows["exact"] / rows["ggn"],
        # a child iteration = weight step + architecture step
        "iteration_ratio_to_first_order": {k: (w + rows[k]) / (w + fo) for k in ("fisher", "ggn", "exact")},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"supernet cells={space.cells} C={space.channels} input={space.input_shape} batch={bs} threads={args.threads}")
    print(f"{'step':<14}{'seconds':>10}{'x first-order':>16}{'iteration x':>14}")
    for k in ("first_order", "fisher", "ggn", "exact"):
        r = result["ratio_to_first_order"].get(k, 1.0)
        it = result["iteration_ratio_to_first_order"].get(k, 1.0)
        print(f"{k:<14}{rows[k]:>10.3f}{r:>16.2f}{it:>14.2f}")
    print(f"{'child weights':<14}{w:>10.3f}   parent weights {rows['parent_weight_step']:.3f} s")
    print(f"ggn is {result['ggn_speedup_over_exact']:.2f}x cheaper than exact")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

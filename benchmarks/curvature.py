"""Seconds per Child architecture step: first-order vs the curvature estimators, side by side in one process.

Same supernet, same batches, same alphas. Each variant runs in interleaved rounds (so a busy machine slows
all of them alike); a round is `curvature_every` consecutive architecture steps of the search config, so a
curvature estimator's time is what the search pays per step: one M v refresh plus curvature_every - 1
first-order steps that reuse it. `*_refresh_s` is the cost of a step that refreshes M v (curvature_every
= 1). Ratios are to the first-order step (g_C only, what lambda = 0 costs). Seconds are this process's CPU
seconds (time.process_time, all its threads), the median over rounds: on a shared host, other jobs stretch
wall time but hardly the CPU time a step needs.

    python benchmarks/curvature.py --json          # {"first_order_s", "ggn_s", "exact_s", "fisher_s", ...}
    python benchmarks/curvature.py --json --out benchmarks/results/curvature.json
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
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    args = ap.parse_args(argv)

    from dcpnas.config import SearchConfig
    from dcpnas.io import write_json
    from dcpnas.parent_child import ParentChild
    from dcpnas.search import prepare_data

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    base = SearchConfig.load(overrides={"budget": args.budget})
    data = prepare_data(base)
    space = base.space(data.input_shape, data.num_classes)
    bs, every = base.batch_size, base.curvature_every
    batches = [(data.a_x[i * bs:(i + 1) * bs], data.a_y[i * bs:(i + 1) * bs]) for i in range(every)]

    def make(**changes):
        pc = ParentChild(space, base.replace(decoupled=False, **changes), total_steps=100)
        pc.set_tangent(*batches[0])
        pc.child_arch_step(*batches[0])  # warm-up (and the first M v)
        return pc

    variants = {"first_order": make(lam=0.0)}
    for name in ("ggn", "exact", "fisher"):
        variants[name] = make(curvature=name)
        variants[f"{name}_refresh"] = make(curvature=name, curvature_every=1)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, pc in variants.items():
            pc.arch_count = 0  # each round starts with a refresh
            t = time.process_time()  # this process's CPU seconds: robust to other jobs on a shared host
            for x, y in batches:
                pc.child_arch_step(x, y)
            times[name].append((time.process_time() - t) / len(batches))
    sec = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    fo = sec["first_order_s"]
    result = {**sec, "ratio_to_first_order": {k[:-2]: v / fo for k, v in sec.items() if k != "first_order_s"},
              "curvature_every": every, "batch_size": bs, "threads": args.threads, "rounds": args.rounds,
              "clock": "process CPU seconds per architecture step (median over rounds)",
              "space": space.to_dict(), "schema": "dcpnas.bench-curvature/1"}
    if args.out:
        write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"supernet cells={space.cells} C={space.channels} input={space.input_shape} batch={bs} "
          f"curvature_every={every} threads={args.threads}")
    print(f"{'arch step':<18}{'seconds':>10}{'x first-order':>16}")
    for k, v in sec.items():
        print(f"{k[:-2]:<18}{v:>10.3f}{v / fo:>16.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Seconds per training step of the accuracy recipe's network, eager vs one CUDA graph, side by side.

The network of benchmarks/accuracy.py (DDPNAS_MCN_2, 4 cells x 16 channels, reductions 0,2, `authors`
policy, 1-bit weights and activations), batch 64, AdamW, optionally distilled from its float twin (a
second forward). Each round times `--steps` eager steps, then `--steps` replays of the captured step, on
the same model; the table gives the median of the rounds and the ratio per round.

    python benchmarks/train_step.py --device cuda --json      # on a GPU machine
    python benchmarks/train_step.py --device cpu              # eager only (no graphs on a CPU)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcpnas.cuda_graph import GraphedStep, capturable_adamw, eager_step, set_lr  # noqa: E402
from dcpnas.genotype import DDPNAS_MCN_2  # noqa: E402
from dcpnas.model import Network  # noqa: E402
from dcpnas.train import default_eval_space, training_loss  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50, help="steps timed per round and mode")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--distilled", action="store_true", help="add the float twin's forward (the -kd rows)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args(argv)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible to PyTorch", file=sys.stderr)
        return 1
    space = default_eval_space(cells=args.cells, channels=args.channels, policy="authors", reductions=(0, 2))
    torch.manual_seed(0)
    net = Network(DDPNAS_MCN_2, space, binary=True).to(dev)
    teacher = Network(DDPNAS_MCN_2, space, binary=False).to(dev).eval() if args.distilled else None
    x = torch.randn(args.batch_size, *space.input_shape, device=dev)
    y = torch.randint(0, space.num_classes, (args.batch_size,), device=dev)

    loss_fn = training_loss(net, teacher)
    # the eager baseline is the plain fused AdamW (train() on CUDA uses the capturable one with or without the
    # graph); its zero_grad(set_to_none) leaves the graph's gradient buffers alone: timing only
    eager_opt = torch.optim.AdamW(net.parameters(), lr=5e-3, fused=True)
    eager = eager_step(eager_opt, loss_fn)

    modes = {"eager": eager}
    if dev == "cuda":
        graph_opt = capturable_adamw(net.parameters(), 5e-3, 0.0, dev)
        t0 = time.perf_counter()
        modes["graph"] = GraphedStep(net, graph_opt, loss_fn, x, y)
        torch.cuda.synchronize()
        capture_s = time.perf_counter() - t0
    else:
        capture_s = None

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    times = {m: [] for m in modes}
    for _ in range(args.rounds):
        for m, step in modes.items():
            if m == "graph":
                set_lr(graph_opt, 5e-3)
            step(x, y)  # one untimed step per round
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            sync()
            times[m].append((time.perf_counter() - t0) / args.steps)
    out = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
           "network": f"DDPNAS_MCN_2 {args.cells}x{args.channels} authors", "batch_size": args.batch_size,
           "distilled": args.distilled, "steps_per_round": args.steps, "rounds": args.rounds,
           "capture_s": capture_s, "threads": torch.get_num_threads(),
           "step_s": {m: statistics.median(v) for m, v in times.items()}, "step_s_rounds": times,
           "command": "python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if "graph" in times:
        out["speedup_graph_vs_eager"] = [e / g for e, g in zip(times["eager"], times["graph"])]
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for m, v in out["step_s"].items():
            print(f"{m:6s} {1e3 * v:8.2f} ms/step (median of {args.rounds} rounds x {args.steps} steps)")
        if "speedup_graph_vs_eager" in out:
            print("graph vs eager per round: " + ", ".join(f"{r:.1f}x" for r in out["speedup_graph_vs_eager"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

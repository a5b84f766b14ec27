"""Which mu lets L_R shape the Child's weights without freezing their signs (METHOD.md "Scaling").

One Parent is trained for --parent-steps, then for each mu a Child starts from the same initialisation and
trains its weights (KL to the Parent + mu * L_R, L_R per binary weight) for --child-steps on the same
batches. Per mu: the fraction of binary weight signs that flipped, the share of weights whose update
direction L_R decides (sign of the total gradient != sign of the KL gradient, on the last batch), L_R at
the end, and the Child's accuracy on the fixed held-out set.

    python benchmarks/scaling.py --json benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from dcpnas.binary import BinaryConv2d, reconstruction_loss
from dcpnas.config import SearchConfig
from dcpnas.curvature import kl_to_parent
from dcpnas.io import write_json
from dcpnas.parent_child import ParentChild, binary_signs
from dcpnas.search import prepare_data


def lr_decided_share(pc: ParentChild, x: torch.Tensor, mu: float) -> float:
    """Fraction of binary weights whose total gradient sign differs from the KL gradient's sign."""
    weights = [m.weight for m in pc.child.modules() if isinstance(m, BinaryConv2d) and m.binary_weight]
    p = pc._parent_probs(x)
    g_kl = torch.autograd.grad(kl_to_parent(p, pc.child(x)), weights)
    if mu == 0:
        return 0.0
    g_lr = torch.autograd.grad(mu * reconstruction_loss(pc.child), weights)
    flips = sum(int(((a + b).sign() != a.sign()).sum()) for a, b in zip(g_kl, g_lr))
    return flips / sum(w.numel() for w in weights)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mu", default="0,0.2,2,20,200")
    ap.add_argument("--parent-steps", type=int, default=24)
    ap.add_argument("--child-steps", type=int, default=24)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cfg = SearchConfig.load()
    data = prepare_data(cfg)
    space = cfg.space(data.input_shape, data.num_classes)
    base = ParentChild(space, cfg.replace(mu=0.0), total_steps=args.parent_steps + args.child_steps)
    b = cfg.batch_size
    n = len(data.w_y)
    for i in range(args.parent_steps):
        idx = torch.arange(i * b, (i + 1) * b) % n
        base.parent_weight_step(data.w_x[idx], data.w_y[idx])
    rows = []
    for mu in [float(v) for v in args.mu.split(",")]:
        pc = copy.deepcopy(base)
        pc.config = cfg.replace(mu=mu)
        before = binary_signs(pc.child)
        t = time.perf_counter()
        for i in range(args.child_steps):
            idx = torch.arange(i * b, (i + 1) * b) % n
            pc.child_weight_step(data.w_x[idx], data.w_y[idx])
        row = {"mu": mu, "sign_flip_fraction": float((binary_signs(pc.child) != before).float().mean()),
               "lr_decided_share": lr_decided_share(pc, data.w_x[:b], mu),
               "L_R": float(reconstruction_loss(pc.child).detach()),
               "child_val_acc": pc.evaluate(pc.child, data.e_x, data.e_y, calib=data.w_x[:cfg.bn_calibration]), "train_s": time.perf_counter() - t}
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {"schema": "dcpnas.bench-scaling/1", "parent_steps": args.parent_steps, "child_steps": args.child_steps,
              "batch_size": b, "config": cfg.to_dict(), "rows": rows,
              "parent_val_acc": base.evaluate(base.parent, data.e_x, data.e_y)}
    if args.json:
        write_json(args.json, record)
    print(json.dumps({k: v for k, v in record.items() if k != "config"}))


if __name__ == "__main__":
    main()

"""The recipe experiment of issue 13: how accurate can a 1-bit network built from a DARTS genotype get
on full Fashion-MNIST on this machine, and what does each choice cost?

Rows (each one `dcpnas.train.train` of the same genotype and evaluation network, its own folder
RUNS/<row>/ (default runs/accuracy), resumable epoch by epoch):
    float         the real-valued twin (also the teacher of the -kd rows)
    authors       1-bit, `authors` policy (real activations into depthwise and 1x1 preprocessing convs)
    authors-kd    the same, distilled from the float row (KL to its softmax instead of the labels)
    book          1-bit, `book` policy (every conv in the cells binary, activations too)
    book-kd       the same, distilled
A -kd row needs the float row finished (run `float` first in the same or an earlier command).
Rerunning the same command skips finished rows and resumes an interrupted one; several commands with
different --rows can share one OUT (each rewrites the report from every finished row's train.json under RUNS).
Every finished row rewrites OUT/accuracy.json (schema dcpnas.accuracy/1) and OUT/accuracy.md.
`--latency TARGET` compiles each finished 1-bit row with its trained weights (`compile_genotype`) and
records the TVM latency measured by `dcpnas bench`'s timer beside its accuracy.

    # the headline run (benchmarks/results/accuracy/, its rows in benchmarks/results/accuracy-full-16ep/rows;
    # the exact command is in accuracy.json): the float twin, then the 1-bit `authors` network distilled from it
    .venv/bin/python benchmarks/accuracy.py -o benchmarks/results/accuracy \\
        --runs benchmarks/results/accuracy-full-16ep/rows --rows float,authors-kd --cells 4 --channels 16 \\
        --float-epochs 6 --binary-epochs 16 --stage1-fraction 0.34 --batch-size 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

SCHEMA = "dcpnas.accuracy/1"
ROWS = {  # name: (binary, policy, distilled)
    "float": (False, None, False),
    "authors": (True, "authors", False),
    "authors-kd": (True, "authors", True),
    "book": (True, "book", False),
    "book-kd": (True, "book", True),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/accuracy"))
    ap.add_argument("--runs", type=Path, default=Path("runs/accuracy"),
                    help="where the rows train (model.pt, checkpoints; not committed)")
    ap.add_argument("--rows", default="float,authors-kd", help=f"comma-separated, in order: {', '.join(ROWS)}")
    ap.add_argument("--genotype", default="DDPNAS_MCN_2", help="genotype.json or DDPNAS_MCN_2")
    ap.add_argument("--data", default="fashion-mnist:../shared/data/fashion-mnist")
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--reductions", default="0,2", help="reduction cell indices ('' = DARTS placement)")
    ap.add_argument("--float-epochs", type=int, default=2)
    ap.add_argument("--binary-epochs", type=int, default=3)
    ap.add_argument("--stage1-fraction", type=float, default=1 / 3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--stage2-lr", type=float, default=None,
                    help="peak lr of the 1-bit rows' stage 2 (default: --lr; its cosine restarts at stage 2)")
    ap.add_argument("--stage2-ema", type=float, default=None, metavar="DECAY",
                    help="keep an EMA of the 1-bit rows' stage-2 weights with this decay (e.g. 0.9995) and report "
                         "it as the row's network; the last weights' accuracy is recorded beside it")
    ap.add_argument("--stage1-from", type=Path, default=None, metavar="RUNS",
                    help="start each 1-bit row's stage 2 from RUNS/<row>/stage1.pt, the end of stage 1 of an earlier "
                         "run that differs only in stage-2 settings (--stage2-lr, --stage2-ema): stage 1 is not trained again")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-subset", type=int, default=None, help="stratified training images (default all)")
    ap.add_argument("--test-subset", type=int, default=None, help="stratified test images (default all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="torch device to train on")
    ap.add_argument("--no-augment", action="store_true", help="no random shifts/flips (short schedules)")
    ap.add_argument("--latency", default=None, metavar="TARGET",
                    help="compile each finished 1-bit row for TARGET and time it (after training)")
    ap.add_argument("--latency-threads", type=int, default=1,
                    help="TVM threads for --latency (1: a shared machine makes 2-thread timings meaningless)")
    ap.add_argument("--no-cuda-graph", action="store_true", help="on cuda, run each training step eagerly "
                    "(default: one CUDA graph replayed per step, dcpnas.cuda_graph)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from finished rows")
    ap.add_argument("--throughput", action="store_true",
                    help="time training throughput of network/format/batch choices side by side (throughput.json)")
    args = ap.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown row(s) {', '.join(bad)}; choose from {', '.join(ROWS)}")
    if args.stage2_ema is not None and not 0.0 < args.stage2_ema < 1.0:
        ap.error(f"--stage2-ema must be a decay in (0, 1), got {args.stage2_ema}")
    args.rows = rows
    return args


def row_config(args, row: str):
    from dcpnas.train import TrainConfig

    binary, policy, _ = ROWS[row]
    reductions = tuple(int(r) for r in args.reductions.split(",") if r.strip()) or None
    return TrainConfig(epochs=args.binary_epochs if binary else args.float_epochs,
                       stage1_fraction=args.stage1_fraction, batch_size=args.batch_size, lr=args.lr,
                       binary=binary, cells=args.cells, channels=args.channels, reductions=reductions,
                       policy=policy or "authors", data=args.data, seed=args.seed,
                       train_subset=args.train_subset, test_subset=args.test_subset, augment=not args.no_augment,
                       device=args.device, stage2_lr=args.stage2_lr if binary else None,
                       stage2_ema=(args.stage2_ema or 0.0) if binary else 0.0)


def load_genotype(spec: str):
    from dcpnas import genotype as G

    return getattr(G, spec) if spec == "DDPNAS_MCN_2" else G.load_genotype(spec)


def stage1_source(args, row: str) -> Path | None:
    """The stage1.pt that --stage1-from gives a 1-bit row (None for the float row or without the flag)."""
    return args.stage1_from / row / "stage1.pt" if args.stage1_from is not None and ROWS[row][0] else None


def run_row(args, row: str, geno) -> None:
    from dcpnas.train import train

    out = args.runs / row
    if (out / "train.json").is_file():
        print(f"{row}: finished earlier, skipped", flush=True)
        return
    teacher = None
    if ROWS[row][2]:
        teacher = args.runs / "float" / "model.pt"
        if not (args.runs / "float" / "train.json").is_file():
            raise SystemExit(f"{row} needs the float row finished first ({teacher} is missing)")
    cfg = row_config(args, row)
    t0 = time.perf_counter()
    printed = {}  # phase -> the step of its last line (each stage counts its steps from 1)

    def progress(phase, done, total, **m):  # train() reports every few steps: print one line per >= 20
        if "test_acc" not in m and done - printed.get(phase, 0) >= 20:
            printed[phase] = done
            print(f"{row}: {phase} step {done}/{total} loss {m['loss']:.3f} train accuracy {m['acc']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if "test_acc" in m:
            print(f"{row}: {phase} epoch {m['epoch']} test accuracy {m['test_acc']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    res = train(geno, cfg, out, progress=progress, resume=True, teacher=teacher, cuda_graph=not args.no_cuda_graph,
                start_from=stage1_source(args, row))
    print(f"{row}: test accuracy {res.test_accuracy:.4f}, {res.seconds:.0f} s", flush=True)


def measure_latency(args, policy: str, geno, target: str) -> dict:
    """Compile the recipe's 1-bit network with `policy` for `target` and time it end to end with `dcpnas
    bench`'s profiler (1-bit and its float twin through TVM, interleaved). Latency does not depend on the
    weight values, so the network is the row's architecture with fresh weights (BatchNorm calibrated)."""
    import torch

    from dcpnas.checkpoint import save_model
    from dcpnas.compiler.pipeline import calibrate_batchnorm, compile_genotype
    from dcpnas.data import load_dataset
    from dcpnas.model import Network
    from dcpnas.targets import get_target
    from dcpnas.targets.bench import bench
    from dcpnas.targets.profiler import Profiler
    from dcpnas.train import eval_space

    data = load_dataset("embedded")
    cfg = row_config(args, "authors").__class__(**{**row_config(args, "authors").to_dict(), "policy": policy})
    space = eval_space(geno, cfg, data.input_shape, data.num_classes)
    torch.manual_seed(0)
    net = Network(geno, space, binary=True)
    norm = data.normalization()
    calibrate_batchnorm(net, data.tensors("train")[0])
    folder = args.runs / "latency" / policy
    save_model(folder / "model.pt", net, norm, {"purpose": "latency only: fresh weights"})
    geno.save(folder / "genotype.json")
    art = compile_genotype(folder / "genotype.json", target, folder / f"build-{target}", weights=folder / "model.pt",
                           parity_inputs=16)
    tgt = get_target(target, threads=args.latency_threads)
    rep = bench(art.path, Profiler(tgt, threads=args.latency_threads), per_layer=False, ort=False)
    return {"target": target, "threads": args.latency_threads, "policy": policy, "binary_ms": rep["binary_ms"], "binary_iqr_ms": rep["binary_iqr_ms"],
            "float_tvm_ms": rep["float_tvm_ms"], "speedup_vs_float_tvm": rep["speedup_vs_float_tvm"],
            "parity_passed": art.manifest["parity"]["passed"], "space": space.to_dict()}


THROUGHPUT_PEERS = [  # (label, cells, channels, reductions, policy, binary, batch, channels_last)
    ("6x8 DARTS reductions, book (old default)", 6, 8, None, "book", True, 128, True),
    ("6x8 DARTS reductions, authors", 6, 8, None, "authors", True, 128, True),
    ("4x8 reductions 0,2, authors", 4, 8, (0, 2), "authors", True, 128, True),
    ("4x8 reductions 0,2, authors, contiguous", 4, 8, (0, 2), "authors", True, 128, False),
    ("4x8 reductions 0,2, authors, batch 64", 4, 8, (0, 2), "authors", True, 64, True),
    ("4x8 reductions 0,2, authors, batch 256", 4, 8, (0, 2), "authors", True, 256, True),
    ("4x8 reductions 0,2, book", 4, 8, (0, 2), "book", True, 128, True),
    ("4x8 reductions 0,2, float", 4, 8, (0, 2), None, False, 128, True),
]


def throughput(args, geno, rounds: int = 3, steps: int = 2) -> dict:
    """Training images/s (forward + backward + AdamW step, 1-bit stage 2) of each THROUGHPUT_PEERS entry,
    timed side by side in interleaved rounds in this one process (median over rounds), and the ratio
    to the first entry. Written to OUT/throughput.json."""
    import statistics

    import torch
    import torch.nn.functional as F

    from dcpnas.binary import set_binary_weights
    from dcpnas.io import write_json
    from dcpnas.model import Network
    from dcpnas.train import default_eval_space

    peers = []
    for label, cells, ch, red, policy, binary, bs, cl in THROUGHPUT_PEERS:
        torch.manual_seed(0)
        net = Network(geno, default_eval_space(cells=cells, channels=ch, policy=policy or "authors",
                                               reductions=red, steps=geno.steps), binary=binary)
        fmt = torch.channels_last if cl else torch.contiguous_format
        net = net.to(memory_format=fmt).train()
        if binary:
            set_binary_weights(net, True)
        x = torch.randn(bs, 1, 28, 28).contiguous(memory_format=fmt)
        y = torch.randint(0, 10, (bs,))
        peers.append((label, net, torch.optim.AdamW(net.parameters(), 1e-3), x, y))
    rates: dict[str, list[float]] = {p[0]: [] for p in peers}
    for r in range(rounds + 1):  # round 0 warms up
        for label, net, opt, x, y in peers:
            t = time.perf_counter()
            for _ in range(steps):
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if r:
                rates[label].append(steps * len(y) / (time.perf_counter() - t))
        print(f"throughput round {r}/{rounds}", flush=True)
    base = statistics.median(rates[peers[0][0]])
    rows = [{"peer": label, "images_per_s": statistics.median(v), "ratio_to_first": statistics.median(v) / base,
             "rounds": v} for label, v in rates.items()]
    out = {"schema": SCHEMA + "-throughput", "command": " ".join(sys.argv), "machine": _machine(),
           "threads": torch.get_num_threads(), "note": "shared machine: compare ratios, not absolute rates",
           "rows": rows}
    write_json(args.out / "throughput.json", out)
    return out


def report(args) -> dict:
    """Rebuild accuracy.json / accuracy.md from every finished row under RUNS."""
    from dcpnas.io import atomic_write_text, write_json

    runs = {}
    for row in ROWS:
        f, m = args.runs / row / "train.json", args.runs / row / "metrics.jsonl"
        if f.is_file():
            runs[row] = {**json.loads(f.read_text()), "finished": True}
        elif m.is_file() and m.read_text().strip():  # a row still training: its finished epochs so far
            hist = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
            cfg = row_config(args, row)
            runs[row] = {"test_accuracy": hist[-1]["test_accuracy"], "seconds": hist[-1]["seconds"],
                         "config": cfg.to_dict(), "dataset": None, "n_train": cfg.train_subset, "n_test": None,
                         "space": None, "history": hist, "finished": False}
    lat = {}
    lat_file = args.out / "latency.json"
    if lat_file.is_file():
        lat = json.loads(lat_file.read_text()).get("policies", {})
    flt = runs.get("float") if runs.get("float", {}).get("finished") else None
    rows = []
    for name, r in runs.items():
        binary, policy, kd = ROWS[name]
        rows.append({
            "row": name, "finished": r["finished"], "epochs_done": len(r["history"]), "binary": binary, "policy": policy if binary else None, "distilled": kd,
            "test_accuracy": r["test_accuracy"], "train_s": r["seconds"], "epochs": r["config"]["epochs"],
            "dataset": r["dataset"], "n_train": r["n_train"], "n_test": r["n_test"], "space": r["space"],
            "epoch_test_accuracy": [h["test_accuracy"] for h in r["history"]],
            "latency": lat.get(policy) if binary else None,
            "stage1_from": r.get("stage1_from"),  # stage 1 trained by an earlier run (its seconds are in train_s)
            # with --stage2-ema: the accuracy of the last (not averaged) weights of the same run
            "last_weights_test_accuracy": (r.get("last_weights") or {}).get("test_accuracy"),
            "epoch_test_accuracy_ema": [h.get("test_accuracy_ema") for h in r["history"]],
        })
    best = max((r for r in rows if r["binary"] and r["finished"]), key=lambda r: r["test_accuracy"], default=None)
    summary = {
        "schema": SCHEMA,
        "dataset": (best or (rows[0] if rows else {})).get("dataset"),
        "genotype": args.genotype,
        "binary_row": best["row"] if best else None,
        "binary_test_accuracy": best["test_accuracy"] if best else None,
        "float_test_accuracy": flt["test_accuracy"] if flt else None,
        "gap_points": (100 * (flt["test_accuracy"] - best["test_accuracy"])) if best and flt else None,
        "train_s": (best["train_s"] + (flt["seconds"] if best["distilled"] and flt else 0.0)) if best else None,
        "train_s_note": "1-bit training seconds, plus the float teacher's for a distilled row",
        "command": train_command(args, [r["row"] for r in rows]),
        "machine": _machine(),
        "rows": rows,
    }
    write_json(args.out / "accuracy.json", summary)
    lines = ["| row | 1-bit | policy | distilled | epochs done | test accuracy % | train s | 1-bit latency ms (TVM) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        la = r["latency"]
        lat_s = (f"{la['binary_ms']:.3f} vs float twin {la['float_tvm_ms']:.3f} ({la['target']}, "
                 f"{la.get('threads', '?')} thread)") if la else "-"
        lines.append(f"| {r['row']} | {'yes' if r['binary'] else 'no'} | {r['policy'] or '-'} | "
                     f"{'yes' if r['distilled'] else 'no'} | {r['epochs_done']} of {r['epochs']}"
                     f"{'' if r['finished'] else ' (running)'} | {100 * r['test_accuracy']:.2f} | "
                     f"{r['train_s']:.0f} | {lat_s} |")
    averaged = [r for r in rows if r["last_weights_test_accuracy"] is not None]
    if averaged:  # --stage2-ema: the row's network is the weight average; the same run's last weights beside it
        lines += ["", "Stage 2's weight average (the rows' networks above) against the last weights of the same run:",
                  "", "| row | weight average % | last weights % |", "|---|---|---|"]
        lines += [f"| {r['row']} | {100 * r['test_accuracy']:.2f} | {100 * r['last_weights_test_accuracy']:.2f} |"
                  for r in averaged]
    atomic_write_text(args.out / "accuracy.md",
                      f"Dataset {summary['dataset']}, genotype {args.genotype}; command:\n\n    "
                      f"{summary['command']}\n\n" + "\n".join(lines) + "\n")
    return summary


def train_command(args, rows: list[str]) -> str:
    """The command that trains (or resumes) `rows` with this budget (what the report's numbers come from)."""
    parts = ["nice", "-n", "10", ".venv/bin/python", "benchmarks/accuracy.py", "-o", str(args.out), "--runs", str(args.runs),
             "--genotype", args.genotype, "--data", args.data, "--cells", str(args.cells), "--channels",
             str(args.channels), "--reductions", args.reductions, "--float-epochs", str(args.float_epochs),
             "--binary-epochs", str(args.binary_epochs), "--stage1-fraction", repr(args.stage1_fraction),
             "--batch-size", str(args.batch_size), "--lr", repr(args.lr), "--seed", str(args.seed)]
    for flag, v in (("--train-subset", args.train_subset), ("--test-subset", args.test_subset),
                    ("--stage2-lr", args.stage2_lr), ("--stage2-ema", args.stage2_ema),
                    ("--stage1-from", args.stage1_from)):
        if v is not None:
            parts += [flag, str(v)]
    if args.no_augment:
        parts.append("--no-augment")
    if args.device != "cpu":
        parts += ["--device", args.device]
    return shlex.join(parts + ["--rows", ",".join(rows or args.rows)])


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cpus"


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    geno = load_genotype(args.genotype)
    if args.throughput:
        for r in throughput(args, geno)["rows"]:
            print(f"{r['peer']:45s} {r['images_per_s']:7.1f} img/s  {r['ratio_to_first']:.2f}x", flush=True)
    if not args.report_only:
        from dcpnas.errors import DcpnasError
        from dcpnas.train import stage1_snapshot

        try:
            for row in args.rows:  # a snapshot that does not fit fails now, not after the rows before it
                if stage1_source(args, row) is not None and not (args.runs / row / "train.json").is_file():
                    stage1_snapshot(stage1_source(args, row), geno, row_config(args, row))
            for row in args.rows:
                run_row(args, row, geno)
                report(args)
        except DcpnasError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if args.latency:
        from dcpnas.io import write_json

        lat_file = args.out / "latency.json"
        lat = json.loads(lat_file.read_text()) if lat_file.is_file() else {"policies": {}}
        for policy in ("authors", "book"):
            lat["policies"][policy] = measure_latency(args, policy, geno, args.latency)
            write_json(lat_file, {"schema": SCHEMA + "-latency", "command": " ".join(sys.argv), **lat})
    s = report(args)
    print(f"wrote {args.out / 'accuracy.json'}: 1-bit {s['binary_test_accuracy']}, float {s['float_test_accuracy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

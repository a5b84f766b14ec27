"""The ablation of METHOD.md section 5 (the paper's tables 4.2-4.3, issue 12 item 7), paired, resumable by piece.

Rows, every one with the same search budget and the same training budget:
    dcp          DCP-NAS as shipped (tangent propagation, ggn curvature, L_R, decoupled optimisation)
    cp           lambda = 0 (no tangent propagation: the CP-NAS-like baseline)
    mu0          mu = 0 (no reconstruction loss L_R)
    nodecouple   no decoupled optimisation (plain first-order alpha updates, no psi)
    direct       real-valued DARTS search, the genotype binarised at training
    random       alphas drawn from the seed, no search
Paired design: a search seed fixes the data subset, the batch order and the supernets' initialisation, the
same for every row; each genotype is then trained with the same training seeds (--train-seeds, shared by
all rows). Endpoints per piece (row, search seed): the search-time Child val accuracy (the fixed held-out
set of the search; the Parent's for `direct`, none for `random`), the final 1-bit test accuracy (mean over
the training seeds) and the number of binary convs of the genotype's evaluation network. The report gives
per row the mean of each endpoint and the paired difference to dcp (row - dcp over the search seeds both
finished) with a 95% Student-t interval, in OUT/ablation.md and OUT/ablation.json.

A piece is written to OUT/pieces/<row>-seed<s>.json as soon as it finishes; its search and each training
resume from their checkpoints, so rerunning the same command continues an interrupted run, across
sessions (`--max-pieces N` stops after N new pieces; `--workers N` runs N copies side by side, each piece
claimed by an flock on OUT/runs/<piece>.lock). Pieces run seed-major, so a partial run has every row.

    # the CPU run on full Fashion-MNIST (2 shared cores; resumable, hours):
    nice -n 10 .venv/bin/python benchmarks/ablation.py -o benchmarks/results/ablation-paired \
        --seeds 0 1 2 3 --train-seeds 0 1 --train-epochs 4 --train-subset 6000 --threads 1
    # rebuild the table from its finished pieces (the same budget arguments + --report-only)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = f"fashion-mnist:{REPO.parent / 'shared' / 'data' / 'fashion-mnist'}"
SCHEMA = "dcpnas.ablation/2"
PIECE_SCHEMA = "dcpnas.ablation-piece/2"
BASELINE = "dcp"

ROWS: dict[str, dict] = {
    "dcp": {"mode": "dcp"},
    "cp": {"mode": "cp"},
    "mu0": {"mode": "dcp", "mu": 0.0},
    "nodecouple": {"mode": "dcp", "decoupled": False},
    "direct": {"mode": "direct"},
    "random": {"mode": "random"},
}
LABELS = {
    "dcp": "DCP-NAS (default: ggn)",
    "cp": "lambda = 0 (CP-NAS-like)",
    "mu0": "mu = 0 (no L_R)",
    "nodecouple": "no decoupled optimisation",
    "direct": "direct (real-valued DARTS, binarised)",
    "random": "random genotype",
}
ENDPOINTS = ("test_accuracy", "search_val_accuracy", "binary_convs")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "ablation-paired")
    p.add_argument("--data", default=DEFAULT_DATA, help="dataset spec (default: full Fashion-MNIST)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3], help="search seeds (paired across rows)")
    p.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1], help="training seeds, shared by all rows")
    # search budget (the same for every row)
    p.add_argument("--search-budget", default="default", help="SearchConfig budget preset")
    p.add_argument("--search-epochs", type=int, default=None)
    p.add_argument("--search-steps", type=int, default=None, help="steps per search epoch")
    p.add_argument("--search-n-train", type=int, default=None, help="images used by the search")
    # training budget (the same for every row)
    p.add_argument("--train-epochs", type=int, default=6)
    p.add_argument("--train-subset", type=int, default=None, help="training images (default: all)")
    p.add_argument("--test-subset", type=int, default=None, help="test images (default: all)")
    p.add_argument("--cells", type=int, default=None, help="evaluation network cells (default: dcpnas.train's)")
    p.add_argument("--channels", type=int, default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-pieces", type=int, default=0, help="stop after this many new pieces (0: all)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table from finished pieces")
    p.add_argument("--note", default="", help="a sentence added to the Markdown table (e.g. what the budget is for)")
    p.add_argument("--workers", type=int, default=1, help="run this many copies side by side (give --threads too)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def budget_record(a: argparse.Namespace) -> dict:
    """What must be identical for every piece in one results folder."""
    return {"data": a.data, "train_seeds": list(a.train_seeds),
            "search": {"budget": a.search_budget, "epochs": a.search_epochs,
                       "steps_per_epoch": a.search_steps, "n_train": a.search_n_train},
            "train": {"epochs": a.train_epochs, "train_subset": a.train_subset, "test_subset": a.test_subset,
                      "cells": a.cells, "channels": a.channels}}


def search_config(a: argparse.Namespace, row: str, seed: int):
    from dcpnas.config import SearchConfig

    overrides = {"budget": a.search_budget, "epochs": a.search_epochs, "steps_per_epoch": a.search_steps,
                 "n_train": a.search_n_train, "data": a.data, "seed": seed, "threads": a.threads,
                 "device": a.device, "name": f"{row}-seed{seed}", **ROWS[row]}
    return SearchConfig.load(None, overrides)


def train_config(a: argparse.Namespace, seed: int):
    from dcpnas.train import TrainConfig

    return TrainConfig(epochs=a.train_epochs, data=a.data, seed=seed, train_subset=a.train_subset,
                       test_subset=a.test_subset, cells=a.cells, channels=a.channels, device=a.device)


def binary_convs(genotype, space) -> int:
    """Number of 1-bit convolutions in the genotype's evaluation network (cells only, as trained)."""
    from dcpnas.binary import BinaryConv2d
    from dcpnas.model import Network

    net = Network(genotype, space, binary=True)
    return sum(isinstance(m, BinaryConv2d) for m in net.cells.modules())


def run_piece(a: argparse.Namespace, row: str, seed: int, log) -> dict:
    from dcpnas.search import run_search
    from dcpnas.train import train

    base = a.out / "runs" / f"{row}-seed{seed}"
    t0 = time.perf_counter()
    genotype = run_search(search_config(a, row, seed), base / "search", resume=True)
    log(f"  searched {row} seed {seed}: {genotype.to_darts()}")
    trainings = []
    for ts in a.train_seeds:
        result = train(genotype, train_config(a, ts), base / f"train-seed{ts}", resume=True)
        trainings.append({"train_seed": ts, "test_accuracy": result.test_accuracy, "train_time_s": result.seconds})
        log(f"  trained {row} seed {seed} (training seed {ts}): {100 * result.test_accuracy:.2f}%")
    diag = (genotype.search.get("diagnostics") or [{}])[-1]
    return {"schema": PIECE_SCHEMA, "row": row, "seed": seed, "budget": budget_record(a),
            "genotype": genotype.to_dict(), "genotype_digest": genotype.digest(),
            "search_time_s": genotype.search.get("time_s"), "search_val_accuracy": genotype.search.get("val_accuracy"),
            "search_diagnostics": diag, "trainings": trainings,
            "test_accuracy": statistics.fmean(t["test_accuracy"] for t in trainings),
            "binary_convs": binary_convs(genotype, result.space),
            "wall_s_this_session": time.perf_counter() - t0}


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with df degrees of freedom: bisection on its CDF, computed by
    Simpson's rule on the density (no SciPy in the dependencies)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 2000) -> float:  # P(T <= x) for x >= 0
        h = x / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def paired_difference(row_vals: dict[int, float], base_vals: dict[int, float]) -> dict:
    """Mean of row - baseline over the seeds both have, with a 95% t interval (None with < 2 pairs)."""
    seeds = sorted(s for s in row_vals if s in base_vals and row_vals[s] is not None and base_vals[s] is not None)
    d = [row_vals[s] - base_vals[s] for s in seeds]
    if not d:
        return {"n": 0, "mean": None, "ci95": None, "seeds": []}
    mean = statistics.fmean(d)
    if len(d) < 2:
        return {"n": 1, "mean": mean, "ci95": None, "seeds": seeds}
    half = t_quantile(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return {"n": len(d), "mean": mean, "ci95": [mean - half, mean + half], "seeds": seeds}


def correlation(xs: list[float], ys: list[float]) -> dict | None:
    """Pearson r of the pairs with a 95% interval (Fisher z: atanh r +- 1.96 / sqrt(n - 3)); None with fewer than
    4 pairs or a constant side."""
    n = len(xs)
    if n < 4 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    r = statistics.correlation(xs, ys)
    if abs(r) >= 1.0:
        return {"n": n, "r": r, "ci95": [r, r]}
    z, half = math.atanh(r), 1.959963984540054 / math.sqrt(n - 3)
    return {"n": n, "r": r, "ci95": [math.tanh(z - half), math.tanh(z + half)]}


def binary_convs_vs_accuracy(pieces: list[dict]) -> dict | None:
    """Across every finished piece: does the final test accuracy follow the genotype's number of binary convs?"""
    return correlation([float(p["binary_convs"]) for p in pieces], [p["test_accuracy"] for p in pieces])


def aggregate(pieces: list[dict], rows: list[str], seeds: list[int]) -> list[dict]:
    by = {(p["row"], p["seed"]): p for p in pieces}
    out = []
    for row in rows:
        got = [by[(row, s)] for s in seeds if (row, s) in by]
        rec = {"row": row, "label": LABELS[row], "n": len(got), "seeds": [p["seed"] for p in got],
               "genotypes": [p["genotype_digest"] for p in got], "search_time_s_mean": _mean([p["search_time_s"] for p in got])}
        for e in ENDPOINTS:
            vals = {p["seed"]: p[e] for p in got}
            rec[e] = vals and {str(k): v for k, v in vals.items()}
            rec[f"{e}_mean"] = _mean(list(vals.values()))
            if row != BASELINE:
                base = {s: by[(BASELINE, s)][e] for s in seeds if (BASELINE, s) in by}
                rec[f"{e}_paired_vs_{BASELINE}"] = paired_difference(vals, base)
        out.append(rec)
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def ordering_note(table: list[dict]) -> str:
    """Whether the paper's ordering dcp > cp > direct > random held, judged by the paired 95% intervals of
    the final test accuracy (a row is below dcp only when its whole interval is below zero)."""
    m = {r["row"]: r for r in table if r.get("test_accuracy_mean") is not None}
    chain = [k for k in ("dcp", "cp", "direct", "random") if k in m]
    if len(chain) < 2:
        return "too few finished rows to compare"
    means = ", ".join(f"{k} {100 * m[k]['test_accuracy_mean']:.2f}%" for k in chain)
    held_means = all(m[x]["test_accuracy_mean"] > m[y]["test_accuracy_mean"] for x, y in zip(chain, chain[1:]))
    parts = [f"paper ordering {' > '.join(chain)} in the means: {'held' if held_means else 'did not hold'} ({means})"]
    for k in chain[1:]:
        pd = m[k].get(f"test_accuracy_paired_vs_{BASELINE}") or {}
        ci = pd.get("ci95")
        if ci is None:
            parts.append(f"{k} - dcp: too few paired seeds for an interval")
        else:
            verdict = "dcp better" if ci[1] < 0 else ("dcp worse" if ci[0] > 0 else "not separated")
            parts.append(f"{k} - dcp: {100 * pd['mean']:+.2f} points [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] ({verdict})")
    return "; ".join(parts)


def fmt(v, scale=1.0, digits=2):
    return "-" if v is None else f"{scale * v:.{digits}f}"


def fmt_paired(pd: dict | None, scale: float, digits: int) -> str:
    if not pd or pd.get("mean") is None:
        return "-"
    if pd.get("ci95") is None:
        return f"{scale * pd['mean']:+.{digits}f} (n={pd['n']})"
    lo, hi = pd["ci95"]
    return f"{scale * pd['mean']:+.{digits}f} [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}] (n={pd['n']})"


def write_report(a: argparse.Namespace, pieces: list[dict], command: str) -> tuple[Path, Path]:
    from dcpnas.io import atomic_write_text, write_json

    table = aggregate(pieces, a.rows, a.seeds)
    note = ordering_note(table)
    budget = budget_record(a)
    lines = [
        "# DCP-NAS ablation (METHOD.md section 5), paired over search seeds", "",
        f"Command: `{command}`", "",
        f"Data: `{a.data}`. Budget, the same for every row: search {json.dumps(budget['search'])}; "
        f"training {json.dumps(budget['train'])} (1-bit two-stage recipe, cross-entropy, no teacher), training "
        f"seeds {list(a.train_seeds)} shared by every row. Search seeds planned: {a.seeds}; finished pieces: "
        f"{len(pieces)} of {len(a.rows) * len(a.seeds)}.", "",
        "Each cell: the row's mean over its finished search seeds; paired = row - dcp on the same search seeds "
        "(same data order and initialisation), mean [95% t interval] (n pairs).", "",
        "| row | seeds done | test acc % | paired test acc vs dcp, points | search Child acc % | paired search acc "
        "vs dcp, points | binary convs | paired binary convs vs dcp | search time s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['label']} | {r['n']} | {fmt(r['test_accuracy_mean'], 100)} | "
            f"{fmt_paired(r.get('test_accuracy_paired_vs_dcp'), 100, 2)} | {fmt(r['search_val_accuracy_mean'], 100)} | "
            f"{fmt_paired(r.get('search_val_accuracy_paired_vs_dcp'), 100, 2)} | {fmt(r['binary_convs_mean'], digits=1)} | "
            f"{fmt_paired(r.get('binary_convs_paired_vs_dcp'), 1, 1)} | {fmt(r['search_time_s_mean'], digits=0)} |")
    corr = binary_convs_vs_accuracy(pieces)
    lines += ["", f"Result: {note}.", ""]
    if corr:
        lines += [f"Binary convs vs final test accuracy over all {corr['n']} pieces (every row and seed): Pearson r = "
                  f"{corr['r']:+.2f} [{corr['ci95'][0]:+.2f}, {corr['ci95'][1]:+.2f}] (95%, Fisher z).", ""]
    lines += ([a.note, ""] if a.note else []) + [
        "The search Child accuracy is the supernet's on the search's fixed held-out set (the Parent's for direct; "
        "random has none). The test accuracy is the final 1-bit network's on the dataset's test split, mean over "
        "the training seeds (no model selection on it). Binary convs: 1-bit convolutions in the cells of the "
        "evaluation network."]
    md = atomic_write_text(a.out / "ablation.md", "\n".join(lines) + "\n")
    js = write_json(a.out / "ablation.json", {"schema": SCHEMA, "command": command, "budget": budget,
                                               "rows": table, "note": note,
                                               "binary_convs_vs_test_accuracy": corr, "pieces": pieces})
    return md, js


def claim(lock: Path):
    """An open file holding an exclusive flock on `lock` (close it to release), or None when another
    process holds it. The lock file itself stays: the kernel, not the file, says who holds it."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    f = open(lock, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def run_workers(argv: list[str], n: int, command: str) -> int:
    """Start n copies of this command, each with `--workers 1` appended (argparse keeps the last value), and
    wait for all; the first failure wins."""
    import subprocess

    env = dict(os.environ, DCPNAS_ABLATION_COMMAND=command)  # the workers' reports name the command run
    procs = [subprocess.Popen([sys.executable, __file__, *argv, "--workers", "1"], env=env) for _ in range(n)]
    codes = [p.wait() for p in procs]
    code = next((c for c in codes if c), 0)
    return 128 - code if code < 0 else code  # killed by signal s: 128 + s, as a shell reports it


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    command = os.environ.get("DCPNAS_ABLATION_COMMAND") or " ".join([".venv/bin/python", "benchmarks/ablation.py", *argv])
    log = (lambda s: None) if a.quiet else (lambda s: print(s, flush=True))
    a.out.mkdir(parents=True, exist_ok=True)
    if a.report_only and (a.out / "ablation.json").is_file():  # keep the command that ran the pieces
        command = json.loads((a.out / "ablation.json").read_text()).get("command", command)
    budget_file = a.out / "budget.json"
    budget = budget_record(a)
    if budget_file.is_file():
        old = json.loads(budget_file.read_text())
        if old != budget:
            print(f"error: {a.out} holds pieces of another budget ({old}); use another -o folder", file=sys.stderr)
            return 1
    else:
        from dcpnas.io import write_json

        write_json(budget_file, budget)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    pieces_dir = a.out / "pieces"
    pieces_dir.mkdir(exist_ok=True)

    def finished() -> list[dict]:
        out = []
        for f in sorted(pieces_dir.glob("*.json")):
            p = json.loads(f.read_text())
            if p.get("schema") == PIECE_SCHEMA and p["row"] in a.rows and p["seed"] in a.seeds:
                out.append(p)
        return out

    if a.workers > 1 and not a.report_only:
        if a.max_pieces:
            print("error: --max-pieces counts one process's pieces; give it without --workers", file=sys.stderr)
            return 1
        try:
            code = run_workers(argv, a.workers, command)
        finally:  # the workers' own reports may land out of order: this one sees every finished piece
            md, _ = write_report(a, finished(), command)
        if not code:
            log(md.read_text())
        return code
    new = 0
    if not a.report_only:
        from dcpnas.io import write_json

        for seed in a.seeds:  # seed-major: a partial run still has every row
            for row in a.rows:
                f = pieces_dir / f"{row}-seed{seed}.json"
                if f.is_file():
                    continue
                if a.max_pieces and new >= a.max_pieces:
                    break
                held = claim(a.out / "runs" / f"{row}-seed{seed}.lock")
                if held is None:
                    continue  # another worker runs it
                with held:
                    if f.is_file():  # finished by another worker meanwhile
                        continue
                    log(f"piece {row} seed {seed}")
                    piece = run_piece(a, row, seed, log)
                    write_json(f, piece)
                new += 1
                log(f"  test accuracy {100 * piece['test_accuracy']:.2f}%  search {piece['search_time_s']:.1f} s  "
                    f"train {sum(t['train_time_s'] for t in piece['trainings']):.1f} s")
                write_report(a, finished(), command)
    md, js = write_report(a, finished(), command)
    if not os.environ.get("DCPNAS_ABLATION_COMMAND"):  # a worker leaves the table to its parent
        log(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

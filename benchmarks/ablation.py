"""The ablation of METHOD.md section 5 (the paper's tables 4.2-4.3) at our scale, resumable piece by piece.

Rows (3 seeds each by default), every one with the same search budget and the same training budget:
    dcp-ggn      DCP-NAS as shipped (tangent propagation, GGN curvature, decoupled optimisation)
    cp           lambda = 0 (no tangent propagation: the CP-NAS-like baseline)
    direct       real-valued DARTS search, the genotype binarised at training
    random       alphas drawn from the seed, no search
    dcp-exact    DCP-NAS with the exact Hessian-vector product
    dcp-fisher   DCP-NAS with the rank-one Fisher curvature
Each piece (row, seed) = `dcpnas.search.run_search` + `dcpnas.train.train` of the found genotype (1-bit,
two-stage recipe, labels as targets: no teacher, the same for every row); its result is written to
OUT/pieces/<row>-seed<s>.json as soon as it finishes. Rerunning the same command skips finished pieces
and resumes an interrupted one (search and training both resume from their checkpoints), so the full run
can be spread over several sessions (`--max-pieces N` stops after N new pieces). `--workers N` runs N
copies of the same command side by side (a worker runs a piece while it holds an flock on
OUT/runs/<piece>.lock, so no piece runs twice; the kernel drops the lock when a worker dies, however it
dies). Every run rewrites
OUT/ablation.md (Markdown table: mean ± std test accuracy of the trained 1-bit network, search time,
expected latency) and OUT/ablation.json from all finished pieces.

    # the committed 3-seed table (2-core CPU, 114 min): benchmarks/results/ablation-cpu/ablation.md
    .venv/bin/python benchmarks/ablation.py -o benchmarks/results/ablation-cpu --search-epochs 3 \
        --train-epochs 4 --train-subset 3000 --threads 1 --workers 2 --target x86-avx512
    # the larger budget, on a GPU box without a dcpnas install (10 of 18 pieces so far)
    bash benchmarks/ablation_remote.sh OUT 450 -o benchmarks/results/ablation \
        --data fashion-mnist:../shared/data/fashion-mnist --train-epochs 4 --train-subset 6000 \
        --threads 2 --workers 6 --device cuda --target x86-avx512
    # rebuild a table from its finished pieces (the same budget arguments + --report-only)

--target T reports the latency of each trained network (the genotype on the evaluation network's space)
predicted by T's LUT (the search itself is not latency-aware here, as in the paper's ablation); a
network with layers missing from the LUT leaves it blank.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = f"fashion-mnist:{REPO.parent / 'shared' / 'data' / 'fashion-mnist'}"
SCHEMA = "dcpnas.ablation/1"
PIECE_SCHEMA = "dcpnas.ablation-piece/1"

ROWS: dict[str, dict] = {
    "dcp-ggn": {"mode": "dcp", "curvature": "ggn"},
    "cp": {"mode": "cp"},
    "direct": {"mode": "direct"},
    "random": {"mode": "random"},
    "dcp-exact": {"mode": "dcp", "curvature": "exact"},
    "dcp-fisher": {"mode": "dcp", "curvature": "fisher"},
}
LABELS = {
    "dcp-ggn": "DCP-NAS (default: ggn)",
    "cp": "lambda = 0 (CP-NAS-like)",
    "direct": "direct (real-valued DARTS, binarised)",
    "random": "random genotype",
    "dcp-exact": "DCP-NAS, curvature exact",
    "dcp-fisher": "DCP-NAS, curvature fisher",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-o", "--out", type=Path, default=REPO / "benchmarks" / "results" / "ablation")
    p.add_argument("--data", default=DEFAULT_DATA, help="dataset spec (default: full Fashion-MNIST)")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
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
    p.add_argument("--target", default=None, help="report expected latency from this target's LUT")
    p.add_argument("--max-pieces", type=int, default=0, help="stop after this many new pieces (0: all)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table from finished pieces")
    p.add_argument("--note", default="", help="a sentence added to the Markdown table (e.g. what the budget is for)")
    p.add_argument("--workers", type=int, default=1, help="run this many copies side by side (give --threads too)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def budget_record(a: argparse.Namespace) -> dict:
    """What must be identical for every piece in one results folder."""
    return {"data": a.data, "search": {"budget": a.search_budget, "epochs": a.search_epochs,
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


def expected_latency(genotype, space, target: str | None):
    """(ms or None, note) of the trained network (genotype on `space`) from `target`'s LUT."""
    if not target:
        return None, None
    from dcpnas.errors import DcpnasError
    from dcpnas.latency import genotype_latency
    from dcpnas.targets import get_target

    try:
        table = get_target(target).load_lut()
        return genotype_latency(genotype, space, table), getattr(table, "method", None)
    except (DcpnasError, KeyError) as e:
        return None, str(e).splitlines()[0]


def run_piece(a: argparse.Namespace, row: str, seed: int, log) -> dict:
    from dcpnas.search import run_search
    from dcpnas.train import train

    base = a.out / "runs" / f"{row}-seed{seed}"
    t0 = time.perf_counter()
    genotype = run_search(search_config(a, row, seed), base / "search", resume=True)
    log(f"  searched {row} seed {seed}: {genotype.to_darts()}")
    result = train(genotype, train_config(a, seed), base / "train", resume=True)
    lat, lat_note = expected_latency(genotype, result.space, a.target)
    return {"schema": PIECE_SCHEMA, "row": row, "seed": seed, "budget": budget_record(a),
            "genotype": genotype.to_dict(), "genotype_digest": genotype.digest(),
            "search_time_s": genotype.search.get("time_s"), "search_val_accuracy": genotype.search.get("val_accuracy"),
            "test_accuracy": result.test_accuracy, "train_time_s": result.seconds,
            "expected_latency_ms": lat, "latency_note": lat_note, "target": a.target,
            "wall_s_this_session": time.perf_counter() - t0}


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(pieces: list[dict], rows: list[str], seeds: list[int]) -> list[dict]:
    out = []
    for row in rows:
        got = sorted((p for p in pieces if p["row"] == row), key=lambda p: p["seed"])
        acc, acc_sd = _mean_std([p["test_accuracy"] for p in got])
        st, _ = _mean_std([p["search_time_s"] for p in got])
        lat, lat_sd = _mean_std([p["expected_latency_ms"] for p in got])
        out.append({"row": row, "label": LABELS[row], "n": len(got), "seeds": [p["seed"] for p in got],
                    "test_accuracy_mean": acc, "test_accuracy_std": acc_sd, "search_time_s_mean": st,
                    "expected_latency_ms_mean": lat, "expected_latency_ms_std": lat_sd,
                    "test_accuracies": [p["test_accuracy"] for p in got],
                    "genotypes": [p["genotype_digest"] for p in got]})
    return out


def ordering_note(table: list[dict]) -> str:
    """Whether the paper's ordering (DCP-NAS > lambda = 0 > random; exact ~ ggn) held in the means."""
    m = {r["row"]: r["test_accuracy_mean"] for r in table if r["test_accuracy_mean"] is not None}
    parts = []
    chain = [k for k in ("dcp-ggn", "cp", "random") if k in m]
    if len(chain) >= 2:
        held = all(m[x] > m[y] for x, y in zip(chain, chain[1:]))
        parts.append(f"paper ordering {' > '.join(chain)}: {'held' if held else 'did not hold'} "
                     f"({', '.join(f'{k} {100 * m[k]:.2f}%' for k in chain)})")
    if "direct" in m and "dcp-ggn" in m:
        parts.append(f"DCP-NAS {'beat' if m['dcp-ggn'] > m['direct'] else 'did not beat'} the direct "
                     f"(binarised real-valued) search ({100 * m['dcp-ggn']:.2f}% vs {100 * m['direct']:.2f}%)")
    if "dcp-exact" in m and "dcp-ggn" in m:
        parts.append(f"ggn vs exact curvature: {100 * (m['dcp-ggn'] - m['dcp-exact']):+.2f} points")
    return "; ".join(parts) or "too few finished rows to compare"


def fmt(v, scale=1.0, digits=2):
    return "-" if v is None else f"{scale * v:.{digits}f}"


def write_report(a: argparse.Namespace, pieces: list[dict], command: str) -> tuple[Path, Path]:
    from dcpnas.io import atomic_write_text, write_json

    table = aggregate(pieces, a.rows, a.seeds)
    note = ordering_note(table)
    budget = budget_record(a)
    lines = [
        "# DCP-NAS ablation (METHOD.md section 5) at our scale", "",
        f"Command: `{command}`", "",
        f"Data: `{a.data}`. Budget, the same for every row: search {json.dumps(budget['search'])}; "
        f"training {json.dumps(budget['train'])} (1-bit two-stage recipe, cross-entropy, no teacher). "
        f"Seeds planned: {a.seeds}; finished pieces: {len(pieces)} of {len(a.rows) * len(a.seeds)}.", "",
        f"| row | seeds done | test accuracy % (mean ± std) | search time s (mean) | expected latency ms ({a.target or 'no target'}) |",
        "|---|---|---|---|---|",
    ]
    for r in table:
        acc = "-" if r["test_accuracy_mean"] is None else \
            f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f}"
        lat = fmt(r["expected_latency_ms_mean"], digits=3)
        lines.append(f"| {r['label']} | {r['n']} | {acc} | {fmt(r['search_time_s_mean'], digits=1)} | {lat} |")
    lines += ["", f"Result: {note}.", ""] + ([a.note, ""] if a.note else []) + [
              "std is the sample standard deviation over seeds (0 with one seed). The test accuracy is the "
              "final 1-bit network's on the dataset's held-out test split (no model selection on it)."]
    if not a.target:
        lines.append("No --target was given, so no expected latency was computed.")
    md = atomic_write_text(a.out / "ablation.md", "\n".join(lines) + "\n")
    js = write_json(a.out / "ablation.json", {"schema": SCHEMA, "command": command, "budget": budget,
                                               "rows": table, "note": note, "pieces": pieces})
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
                    f"train {piece['train_time_s']:.1f} s")
                write_report(a, finished(), command)
    md, js = write_report(a, finished(), command)
    if not os.environ.get("DCPNAS_ABLATION_COMMAND"):  # a worker leaves the table to its parent
        log(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

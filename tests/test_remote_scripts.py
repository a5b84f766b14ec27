"""benchmarks/ablation_remote.sh, the GPU box's ablation runner, run here on the CPU at a smoke budget: its
smoke piece and its ablation command must be valid (a stale row name once stopped it at the smoke piece)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--seeds", "0", "--train-seeds", "0", "--search-budget", "smoke", "--search-epochs", "1",
        "--train-epochs", "2", "--train-subset", "256", "--test-subset", "256", "--cells", "2", "--channels", "4",
        "--data", "embedded", "--device", "cpu", "--threads", "1"]


def test_ablation_remote_script_runs_its_smoke_piece_and_the_ablation(tmp_path):
    shim = tmp_path / "bin"  # the box's python3 is this interpreter (torch, numpy; the package from the copy)
    shim.mkdir()
    (shim / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a symlink would leave the venv
    (shim / "python3").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}", SMOKE_DEVICE="cpu")
    out, results = tmp_path / "out", tmp_path / "results"
    p = subprocess.run(["bash", "benchmarks/ablation_remote.sh", str(out), "300", "-o", str(results),
                        "--rows", "dcp", "random", *TINY], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "== smoke piece" in p.stdout and "ablation exit 0" in p.stdout
    pieces = sorted(f.name for f in (results / "pieces").glob("*.json"))
    assert pieces == ["dcp-seed0.json", "random-seed0.json"]
    report = json.loads((results / "ablation.json").read_text())
    assert report["schema"].startswith("dcpnas.ablation/")
    assert (out / "ablation.tgz").stat().st_size > 0

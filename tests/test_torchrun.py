"""The search under the real `torchrun --nproc_per_node 2` (gloo, CPU): both ranks end with the same
genotype, and a run interrupted in its second epoch resumes under torchrun to the uninterrupted result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = Path(sys.executable).with_name("torchrun")

SCRIPT = '''
import json, sys
import torch
from dcpnas.config import SearchConfig
from dcpnas.distributed import init_from_env
from dcpnas.search import run_search

out, interrupt, resume = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
dist = init_from_env("cpu")
config = SearchConfig.load(overrides={"budget": "smoke", "epochs": 2, "seed": 4, "threads": 1})

def progress(phase, done, total, **m):
    if interrupt and phase == "parent" and done > total // 2:  # every rank stops at the same step
        raise SystemExit(3)

g = run_search(config, out + "/run", progress=progress, resume=resume)
with open(f"{out}/rank{dist.rank}.json", "w") as f:
    json.dump({"genotype": g.to_darts(), "alphas": g.search["alphas"]}, f)
'''


def _torchrun(tmp_path: Path, out: Path, interrupt: bool, resume: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "search_rank.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), str(out),
           "1" if interrupt else "0", "1" if resume else "0"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed")
def test_torchrun_two_ranks_same_genotype_and_resume(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    r = _torchrun(tmp_path, full, interrupt=False, resume=False)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = (json.loads((full / f"rank{k}.json").read_text()) for k in (0, 1))
    assert r0 == r1  # the same genotype and alphas on both ranks
    assert (full / "run" / "genotype.json").is_file()

    cut = tmp_path / "cut"
    cut.mkdir()
    r = _torchrun(tmp_path, cut, interrupt=True, resume=False)
    assert r.returncode != 0 and not (cut / "rank0.json").exists()
    assert sorted(p.name for p in (cut / "run" / "checkpoints").iterdir()) == ["epoch_001.pt"]
    r = _torchrun(tmp_path, cut, interrupt=False, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = [json.loads((cut / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert resumed[0] == resumed[1] == r0  # bit-identical to the uninterrupted run

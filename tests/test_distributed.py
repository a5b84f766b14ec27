"""Data-parallel search (torchrun semantics) on CPU with gloo and 2 processes: same genotype on both ranks."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class _Lut:
    method, device = "modeled", "test"

    def query(self, key: str) -> float:
        return 0.05 if ("pool" in key or "skip" in key) else 0.3


def _worker(rank: int, world: int, store: str, out: str) -> None:
    from dcpnas.config import SearchConfig
    from dcpnas.distributed import DistContext
    from dcpnas.search import run_search

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        assert DistContext.current() == DistContext(rank, world)
        config = SearchConfig.load(overrides={"budget": "smoke", "seed": 5, "threads": 1})
        g = run_search(config, f"{out}/run", table=_Lut())
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump({"genotype": g.to_darts(), "alphas": g.search["alphas"]}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_ranks_end_with_the_same_genotype(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0 == r1
    assert (tmp_path / "run" / "genotype.json").is_file()  # written once, by rank 0

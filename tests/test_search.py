"""The search: a smoke search through the CLI, resume determinism, modes, the latency term."""

import json

import pytest
import torch
from typer.testing import CliRunner

from dcpnas.checkpoint import load_torch, save_torch
from dcpnas.config import SearchConfig
from dcpnas.errors import ConfigError
from dcpnas.genotype import load_genotype
from dcpnas.latency import all_keys, expected_latency
from dcpnas.parent_child import LatencyTerm
from dcpnas.search import run_search
from dcpnas.space import SearchSpace


class DictLut:
    """A LUT stand-in: conv ops cost more than pools and identity (ms)."""

    method, device = "modeled", "test"

    def query(self, key: str) -> float:
        op, cin, cout, h, w, stride = key.split("|")
        base = 0.05 if ("pool" in op or "skip" in op) else 0.4
        return base * int(cin) * int(h) * int(w) / 512


# 2 epochs of 1 step: the cheapest run that has an epoch boundary to interrupt at
FAST = {"budget": "smoke", "epochs": 2, "steps_per_epoch": 1, "threads": 1, "seed": 3}


def _target_covering_smoke() -> str:
    """A built-in target whose shipped LUT holds every OpKey of the smoke supernet."""
    from dcpnas.errors import DcpnasError
    from dcpnas.targets import get_target

    keys = all_keys(SearchConfig.load(overrides={"budget": "smoke"}).space())
    for name in ("arm-a72", "x86-avx512", "x86-avx2", "arm-a53"):
        try:
            lut = get_target(name).load_lut()
            for k in keys:
                lut.query(k)
            return name
        except DcpnasError:
            continue
    pytest.skip("no built-in target LUT covers the smoke search space")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    from dcpnas.cli import app

    target = _target_covering_smoke()
    out = tmp_path_factory.mktemp("search") / "run"
    result = CliRunner().invoke(app, ["search", "--budget", "smoke", "--epochs", "2", "--seed", "3",
                                      "--threads", "1", "--target", target, "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out, result.output, target


def test_cli_smoke_search_writes_every_artifact(cli_run):
    out, output, target = cli_run
    for name in ("genotype.json", "metrics.jsonl", "config.toml", "alphas.png", "losses.png",
                 "checkpoints/epoch_001.pt", "checkpoints/epoch_002.pt"):
        assert (out / name).is_file(), name
    g = load_genotype(out / "genotype.json")
    s = g.search
    assert s["target"] == target and s["lut_method"] in ("measured", "modeled")
    assert s["expected_latency_ms"] > 0 and 0 <= s["val_accuracy"] <= 1
    assert s["epochs"] == 2 and s["seed"] == 3 and s["dataset"] and s["config"]["budget"] == "smoke"
    assert len(s["alphas"]["normal"]) == 14 and len(s["alphas"]["reduce"][0]) == 8
    assert (out / "alphas.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [(r["epoch"], r["phase"]) for r in epochs] == [(0, "parent"), (0, "child"), (1, "parent"), (1, "child")]
    assert SearchConfig.load(out / "config.toml").seed == 3
    assert "genotype" in output and s["lut_method"] in output


def test_interrupted_and_resumed_search_is_bit_identical(cli_run, tmp_path):
    out_full, _, target = cli_run
    config = SearchConfig.load(overrides={**FAST, "target": target})  # what the CLI run used
    seen = []

    def interrupt(phase, done, total, **m):
        seen.append((phase, done))
        if phase == "parent" and done > total // 2:  # first step of the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path, progress=interrupt)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_001.pt"]
    # a checkpoint written before the config had the keys primitives and steps resumes with their defaults
    ckpt = tmp_path / "checkpoints" / "epoch_001.pt"
    state = load_torch(ckpt)
    del state["config"]["primitives"], state["config"]["steps"]
    save_torch(ckpt, state)
    resumed = run_search(config, tmp_path, resume=True)
    full = load_genotype(out_full / "genotype.json")
    assert resumed.search["alphas"] == full.search["alphas"]  # exact float equality
    assert resumed == full
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "epoch" for r in lines) == 4  # the partial epoch's lines were dropped

    with pytest.raises(ConfigError, match="lam"):
        run_search(config.replace(lam=config.lam / 2), tmp_path, resume=True)


@pytest.mark.parametrize("overrides", [
    {"mode": "direct"},
    {"mode": "random"},
    {"mode": "cp", "mu": 0.0},
    {"curvature": "exact", "decoupled": False, "latency_form": "add", "latency_ms": 1.0},
])
def test_modes_and_switches_run(overrides, tmp_path):
    config = SearchConfig.load(overrides={**FAST, "epochs": 1, **overrides})
    g = run_search(config, tmp_path, table=DictLut())
    s = g.search
    assert s["mode"] == config.mode and (tmp_path / "genotype.json").is_file()
    assert s["expected_latency_ms"] > 0
    if config.mode == "random":
        assert s["val_accuracy"] is None
    else:
        assert 0 <= s["val_accuracy"] <= 1
    if "latency_ms" in overrides:
        assert s["latency_target_ms"] == 1.0


def test_latency_term_matches_the_reference_and_its_gradient():
    space = SearchSpace(cells=3, channels=2, input_shape=(1, 8, 8))
    lut = DictLut()
    assert all(lut.query(k) >= 0 for k in all_keys(space))
    torch.manual_seed(0)
    a_n, a_r = torch.randn(14, 8), torch.randn(14, 8)
    for form in ("add", "mul"):
        term = LatencyTerm(space, lut, 5.0, form, gamma=0.1, beta=0.6)
        ref = expected_latency(space, lut, a_n, a_r)
        torch.testing.assert_close(term.expected(a_n, a_r), ref)
        # adjust() given L's value and gradient == autograd of the composite loss of a concrete L(alpha)
        leaves = [a_n.clone().requires_grad_(True), a_r.clone().requires_grad_(True)]
        L = (leaves[0] ** 2).sum() * 0.01 + leaves[1].sin().sum() * 0.1
        g_L = torch.autograd.grad(L, leaves, retain_graph=True)
        from dcpnas.latency import latency_loss

        total = latency_loss(L, expected_latency(space, lut, *leaves), 5.0, form)
        ref_g = torch.autograd.grad(total, leaves)
        got, lat = term.adjust(float(L.detach()), list(g_L), leaves)
        for x, y in zip(got, ref_g):
            torch.testing.assert_close(x, y)
        assert abs(lat - float(ref)) < 1e-4


def test_pareto_front_and_sweep(tmp_path):
    from dcpnas.cli import app
    from dcpnas.pareto import pareto_front

    # (latency, accuracy): 1 is dominated by 0 (slower, less accurate); 3 equals 2's latency, less accurate
    assert pareto_front([(1.0, 0.5), (2.0, 0.4), (0.5, 0.3), (0.5, 0.2)]) == [2, 0]
    target = _target_covering_smoke()
    out = tmp_path / "p"
    r = CliRunner().invoke(app, ["search", "--budget", "smoke", "--threads", "1", "--target", target,
                                 "--pareto", "2", "-o", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "Pareto front" in r.output
    rec = json.loads((out / "pareto.json").read_text())
    assert rec["schema"] == "dcpnas.pareto/1" and len(rec["runs"]) == 2 and rec["front"]
    t0 = rec["base_latency_ms"]
    assert rec["runs"][0]["latency_target_ms"] == pytest.approx(t0)
    assert rec["runs"][1]["latency_target_ms"] == pytest.approx(0.5 * t0)
    assert (out / "pareto.png").stat().st_size > 0 and (out / "pareto-1" / "genotype.json").is_file()
    # without a target the sweep is refused with one clear line
    r = CliRunner().invoke(app, ["search", "--budget", "smoke", "--pareto", "2", "-o", str(tmp_path / "q")])
    assert r.exit_code == 1

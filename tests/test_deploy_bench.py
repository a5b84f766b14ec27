"""benchmarks/deploy.py: rows saved as they finish, resumed, the 224x224 rows skippable."""

import json
import os

import pytest


@pytest.fixture(scope="module")
def deploy(benchmark_script):
    return benchmark_script("deploy")


@pytest.fixture(autouse=True)
def inline_rows(request, monkeypatch):
    """The fake rows below run in this process (a fresh process per row cannot import a monkeypatched function)."""
    if "deploy" in request.fixturenames and request.node.name != "test_each_row_runs_in_a_fresh_process":
        monkeypatch.setattr(request.getfixturevalue("deploy"), "isolated", lambda fn, *a: fn(*a))


def _fake_row(deploy, calls, fail_on=None):
    def measure_row(gname, geno, cells, channels, shape, target_name, threads, build_root, rounds, min_repeat_ms, stem):
        name = deploy.row_name(gname, cells, channels, shape, stem)
        calls.append(name)
        if name == fail_on:
            raise RuntimeError("killed")
        return {"name": name, "binary_ms": 1.0, "binary_iqr_ms": 0.1, "speedup_vs_best_float": 2.0,
                "best_float": "float_openvino", "binary_openvino_ms": 3.0, "parity": {"passed": True}}
    return measure_row


def test_rows_resume_after_a_crash(deploy, tmp_path, monkeypatch):
    out = tmp_path / "deploy.json"
    calls = []
    monkeypatch.setattr(deploy, "measure_row", _fake_row(deploy, calls, fail_on="ddpnas_mcn_2-20x36-3x32x32"))
    with pytest.raises(RuntimeError, match="killed"):
        deploy.main(["--out", str(out), "--skip-large"])
    saved = json.loads(out.read_text())
    assert [r["name"] for r in saved["rows"]] == ["ddpnas_mcn_2-8x32-1x28x28", "darts_v2-8x32-1x28x28"]
    calls.clear()
    monkeypatch.setattr(deploy, "measure_row", _fake_row(deploy, calls))
    assert deploy.main(["--out", str(out), "--skip-large", "--json"]) == 0
    assert calls == ["ddpnas_mcn_2-20x36-3x32x32", "darts_v2-20x36-3x32x32"]  # finished rows kept
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and not any("224" in r["name"] for r in rows)


def test_darts_v2_is_the_papers_cell(deploy):
    g = deploy.genotypes()["darts_v2"]
    assert g.normal[-1] == ("dil_conv_3x3", 2) and g.reduce[0] == ("max_pool_3x3", 0)


def test_the_224_rows_use_the_imagenet_stem(deploy, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(deploy, "measure_row", _fake_row(deploy, calls))
    assert deploy.main(["--out", str(tmp_path / "d.json"), "--only", "darts_v2-14x48-3x224x224-imagenet", "--json"]) == 0
    assert calls == ["darts_v2-14x48-3x224x224-imagenet"]


def test_each_row_runs_in_a_fresh_process(deploy):
    assert deploy.isolated(os.getpid) != os.getpid()


def test_only_with_an_unknown_row_is_an_error_not_an_empty_run(deploy, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        deploy.main(["--only", "ddpnas_mcn_2-14x48-3x224x224", "--out", str(tmp_path / "d.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no row named ddpnas_mcn_2-14x48-3x224x224" in err and "ddpnas_mcn_2-14x48-3x224x224-imagenet" in err
    assert not (tmp_path / "d.json").exists()

"""dcpnas.train: the two-stage recipe, artifacts, exact resume, teacher distillation, config parsing."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcpnas.binary import BinaryConv2d
from dcpnas.checkpoint import load_model, save_model
from dcpnas.errors import ArtifactError, ConfigError
from dcpnas.genotype import DDPNAS_MCN_2, Genotype
from dcpnas.train import (TrainConfig, augment_batch, cosine_lr, default_eval_space, distillation_loss, evaluate,
                          train)

TINY = dict(cells=3, channels=4, train_subset=60, test_subset=30, batch_size=20, eval_batch_size=16)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Stop(Exception):
    pass


def stop_after(epoch_end: int):
    """A progress callback that interrupts the run after the `epoch_end`-th finished epoch."""
    seen = []

    def progress(phase, done, total, **m):
        if "test_acc" in m:
            seen.append(phase)
            if len(seen) == epoch_end:
                raise Stop

    return progress


def test_stages_split():
    assert TrainConfig(epochs=6).stages() == [("stage1", 3, False, 1e-5), ("stage2", 3, True, 0.0)]
    assert TrainConfig(epochs=1).stages() == [("stage2", 1, True, 0.0)]
    assert TrainConfig(epochs=3, stage1_fraction=0.0).stages() == [("stage2", 3, True, 0.0)]
    assert [s[1] for s in TrainConfig(epochs=3).stages()] == [2, 1]
    assert TrainConfig(epochs=4, binary=False).stages() == [("float", 4, None, 1e-5)]
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        TrainConfig(device="gpu")  # one line, not torch's traceback at the first .to()


def test_default_eval_space_is_larger_than_the_supernet_default():
    from dcpnas.space import SearchSpace

    sp, sup = default_eval_space(), SearchSpace()
    assert sp.cells >= sup.cells and sp.channels >= sup.channels and (sp.cells, sp.channels) != (sup.cells, sup.channels)
    assert default_eval_space((3, 32, 32), 10, "authors").input_shape == (3, 32, 32)


def test_policy_comes_from_the_search_unless_given():
    from dcpnas.train import eval_space

    searched = Genotype(DDPNAS_MCN_2.normal, (2, 3, 4, 5), DDPNAS_MCN_2.reduce, (2, 3, 4, 5),
                        search={"space": {"policy": "authors"}})
    assert eval_space(searched, TrainConfig(), (1, 28, 28), 10).policy == "authors"
    assert eval_space(searched, TrainConfig(policy="book"), (1, 28, 28), 10).policy == "book"
    assert eval_space(DDPNAS_MCN_2, TrainConfig(), (1, 28, 28), 10).policy == "book"
    sp = eval_space(DDPNAS_MCN_2, TrainConfig(cells=4, channels=6), (3, 32, 32), 7)
    assert (sp.cells, sp.channels, sp.input_shape, sp.num_classes) == (4, 6, (3, 32, 32), 7)


def test_config_toml_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[train]\nepochs = 4\nlr = 0.002\naugment = false\npolicy = "authors"\ncells = 5\n')
    cfg = TrainConfig.from_toml(f, {"epochs": 2})
    assert (cfg.epochs, cfg.lr, cfg.augment, cfg.policy, cfg.cells) == (2, 0.002, False, "authors", 5)
    f.write_text("epochs = 3\n")
    assert TrainConfig.from_toml(f).epochs == 3
    f.write_text("epochz = 3\n")
    with pytest.raises(ConfigError, match="unknown key.*epochz"):
        TrainConfig.from_toml(f)
    f.write_text('epochs = "many"\n')
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig.from_toml(f)
    f.write_text("augment = 1\n")
    with pytest.raises(ConfigError, match="true or false"):
        TrainConfig.from_toml(f)
    f.write_text("epochs = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        TrainConfig.from_toml(f)
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_toml(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="policy"):
        TrainConfig(policy="mine")
    assert TrainConfig.from_dict(TrainConfig(epochs=5, cells=7).to_dict()) == TrainConfig(epochs=5, cells=7)


def test_cosine_and_distillation_formulas():
    assert cosine_lr(1.0, 0, 10) == 1.0 and cosine_lr(1.0, 10, 10) == pytest.approx(0.0)
    assert cosine_lr(2.0, 5, 10) == pytest.approx(1.0)
    assert cosine_lr(1.0, 3, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    for T in (1.0, 3.0):
        p, q = F.softmax(t / T, 1), F.softmax(s / T, 1)
        manual = (p * (p.log() - q.log())).sum(1).mean() * T * T
        torch.testing.assert_close(distillation_loss(s, t, T), manual)
    assert float(distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_augment_batch_is_a_shift_or_flip_of_each_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 5, 5)
    fill = torch.tensor([-3.0, -4.0])
    y = augment_batch(x, gen, fill, pad=2)
    assert y.shape == x.shape
    for n in range(6):
        big = fill.view(2, 1, 1).expand(2, 9, 9).clone()
        big[:, 2:7, 2:7] = x[n]
        cands = [big[:, dy:dy + 5, dx:dx + 5] for dy in range(5) for dx in range(5)]
        cands += [c.flip(-1) for c in cands]
        assert any(torch.equal(y[n], c) for c in cands)


def test_train_writes_artifacts_and_loadable_model(tmp_path):
    cfg = TrainConfig(epochs=2, **TINY)
    calls = []
    res = train(DDPNAS_MCN_2, cfg, tmp_path, progress=lambda ph, d, t, **m: calls.append((ph, d, t, m)))
    for name in ("model.pt", "checkpoint.pt", "metrics.jsonl", "train.json", "curves.png"):
        assert (tmp_path / name).is_file(), name
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(h["epoch"], h["stage"]) for h in lines] == [(1, "stage1"), (2, "stage2")]
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"} <= set(lines[0])
    assert [c[0] for c in calls if "test_acc" in c[3]] == ["stage1", "stage2"]
    assert all("loss" in c[3] and "acc" in c[3] for c in calls) and calls[-1][1] == calls[-1][2] == 3
    rec = json.loads((tmp_path / "train.json").read_text())
    assert rec["schema"] == "dcpnas.train/1" and rec["n_train"] == 60 and rec["n_test"] == 30
    assert rec["test_accuracy"] == res.test_accuracy == lines[-1]["test_accuracy"]
    net, meta = load_model(res.model_path, genotype=DDPNAS_MCN_2)
    assert meta["binary"] and meta["binary_weight"] and meta["space"] == res.space
    assert all(m.binary_weight for m in net.modules() if isinstance(m, BinaryConv2d))
    from dcpnas.data import load_dataset

    data = load_dataset("embedded").subset(60, 30, seed=0)
    x, y = data.tensors("test", meta["normalization"]["mean"], meta["normalization"]["std"])
    loss, acc = evaluate(net, x, y)
    assert acc == res.test_accuracy and loss == pytest.approx(res.test_loss, rel=1e-5)


def test_resume_is_exact(tmp_path):
    """Interrupted after epoch 1 (mid stage 1) and after epoch 2 (the stage boundary), then resumed:
    the same final weights, bit for bit, as one uninterrupted run."""
    cfg = TrainConfig(epochs=3, **TINY)
    ref = train(DDPNAS_MCN_2, cfg, tmp_path / "ref")
    out = tmp_path / "resumed"
    for k in (1, 2):
        with pytest.raises(Stop):
            train(DDPNAS_MCN_2, cfg, out, progress=stop_after(1), resume=True)
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == k
    res = train(DDPNAS_MCN_2, cfg, out, resume=True)
    a, _ = load_model(ref.model_path)
    b, _ = load_model(res.model_path)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    assert res.test_accuracy == ref.test_accuracy
    assert [h["test_accuracy"] for h in res.history] == [h["test_accuracy"] for h in ref.history]
    # a finished run resumes to the same result without training again
    again = train(DDPNAS_MCN_2, cfg, out, resume=True)
    assert again.test_accuracy == ref.test_accuracy and len(again.history) == 3
    with pytest.raises(ConfigError, match="another config or genotype"):
        train(DDPNAS_MCN_2, TrainConfig(epochs=4, **TINY), out, resume=True)


def test_stage2_starts_from_another_runs_stage1(tmp_path):
    """A 1-bit run keeps its checkpoint at the end of stage 1 (stage1.pt); a run that differs only in its
    stage-2 settings starts stage 2 from it: with the same config it ends bit for bit where the source run
    ended, with another stage-2 lr its stage 1 is the source's and its stage 2 is not."""
    from dcpnas.train import stage1_snapshot

    cfg = TrainConfig(epochs=3, **TINY)
    ref = train(DDPNAS_MCN_2, cfg, tmp_path / "ref")
    snap = tmp_path / "ref" / "stage1.pt"
    assert snap.is_file()
    same = train(DDPNAS_MCN_2, cfg, tmp_path / "same", start_from=snap)
    a, _ = load_model(ref.model_path)
    b, _ = load_model(same.model_path)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    assert [h["test_accuracy"] for h in same.history] == [h["test_accuracy"] for h in ref.history]
    low = train(DDPNAS_MCN_2, TrainConfig(epochs=3, stage2_lr=1e-4, **TINY), tmp_path / "low", start_from=snap)
    assert low.history[:2] == ref.history[:2] and low.history[2]["train_loss"] != ref.history[2]["train_loss"]
    rec = json.loads((tmp_path / "low" / "train.json").read_text())
    assert rec["stage1_from"] == str(snap) and rec["config"]["stage2_lr"] == 1e-4
    # a snapshot fits only runs that differ in stage 2 (or in the device): another lr or length is refused
    assert stage1_snapshot(snap, DDPNAS_MCN_2, TrainConfig(epochs=3, device="cuda", **TINY))["epoch_in_stage"] == 2
    with pytest.raises(ConfigError, match="differs in lr"):
        stage1_snapshot(snap, DDPNAS_MCN_2, TrainConfig(epochs=3, lr=1e-3, **TINY))
    with pytest.raises(ConfigError, match="differs in epochs"):
        train(DDPNAS_MCN_2, TrainConfig(epochs=4, **TINY), tmp_path / "long", start_from=snap)
    with pytest.raises(ArtifactError, match="not a checkpoint at the end of stage 1"):
        stage1_snapshot(tmp_path / "ref" / "checkpoint.pt", DDPNAS_MCN_2, cfg)  # the run's last epoch
    with pytest.raises(ArtifactError, match="no such stage-1 checkpoint"):
        stage1_snapshot(tmp_path / "none.pt", DDPNAS_MCN_2, cfg)


def test_float_teacher_distillation(tmp_path):
    float_cfg = TrainConfig(epochs=1, binary=False, **TINY)
    t = train(DDPNAS_MCN_2, float_cfg, tmp_path / "float")
    tnet, tmeta = load_model(t.model_path)
    assert not tmeta["binary"] and not any(isinstance(m, BinaryConv2d) for m in tnet.modules())
    res = train(DDPNAS_MCN_2, TrainConfig(epochs=1, **TINY), tmp_path / "kd", teacher=t.model_path)
    assert json.loads((tmp_path / "kd" / "train.json").read_text())["teacher"] == str(t.model_path)
    assert 0.0 <= res.test_accuracy <= 1.0 and math.isfinite(res.history[0]["train_loss"])
    other = Genotype(DDPNAS_MCN_2.reduce, (2, 3, 4, 5), DDPNAS_MCN_2.normal, (2, 3, 4, 5))
    with pytest.raises(ArtifactError, match="not to the given genotype"):
        train(other, TrainConfig(epochs=1, **TINY), tmp_path / "bad", teacher=t.model_path)


def test_teacher_with_other_normalisation_sees_its_own_inputs(tmp_path):
    """A teacher saved with other mean/std gets inputs renormalised to its own convention: distilling
    from it equals distilling from a module wrapper that does the same by hand."""
    from dcpnas.model import Network

    cfg = TrainConfig(epochs=1, augment=False, **TINY)
    torch.manual_seed(1)
    teacher = Network(DDPNAS_MCN_2, default_eval_space(policy="book", cells=3, channels=4), binary=False).eval()
    norm_t = {"mean": [0.5], "std": [0.2]}
    path = save_model(tmp_path / "t.pt", teacher, norm_t)
    from dcpnas.data import load_dataset

    d = load_dataset("embedded").subset(60, 30, seed=0)
    m_s, s_s = d.mean[0], d.std[0]

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            raw = x * s_s + m_s
            return self.net((raw - 0.5) / 0.2)

    first = {}

    def first_loss(key):
        return lambda ph, done, total, **m: first.setdefault(key, m["loss"])

    train(DDPNAS_MCN_2, cfg, tmp_path / "a", teacher=path, progress=first_loss("a"))
    train(DDPNAS_MCN_2, cfg, tmp_path / "b", teacher=Wrapped(load_model(path)[0]), progress=first_loss("b"))
    train(DDPNAS_MCN_2, cfg, tmp_path / "c", teacher=load_model(path)[0], progress=first_loss("c"))
    assert first["a"] == pytest.approx(first["b"], rel=1e-5)
    assert abs(first["a"] - first["c"]) > 1e-3  # the renormalisation matters


def test_cli_train(tmp_path):
    from typer.testing import CliRunner

    from dcpnas.cli import app

    cfg = tmp_path / "t.toml"
    cfg.write_text("[train]\ntrain_subset = 60\ntest_subset = 30\nbatch_size = 20\n")
    out = tmp_path / "run"
    args = ["train", "DDPNAS_MCN_2", "-o", str(out), "--epochs", "2", "--cells", "3", "--channels", "4",
            "--config", str(cfg), "--target", "x86-avx512", "--no-progress", "--threads", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "network summary" in r.output and "test accuracy" in r.output and "LUT ms" in r.output
    assert "cells.2.ops.7" in r.output and "sep_conv_5x5" in r.output  # names are not cut
    rec = json.loads((out / "train.json").read_text())
    assert rec["config"]["train_subset"] == 60 and rec["config"]["epochs"] == 2 and rec["space"]["cells"] == 3
    r = CliRunner().invoke(app, args + ["--resume"])
    assert r.exit_code == 0 and f"{100 * rec['test_accuracy']:.2f}%" in r.output
    # stage 2 again from this run's stage 1 (its folder or its stage1.pt), at another peak lr
    s2 = tmp_path / "s2"
    r = CliRunner().invoke(app, [a if a != str(out) else str(s2) for a in args] + ["--stage1-from", str(out),
                                                                              "--stage2-lr", "1e-4",
                                                                              "--stage2-ema", "0.5"])
    assert r.exit_code == 0, r.output
    rec2 = json.loads((s2 / "train.json").read_text())
    assert rec2["stage1_from"] == str(out / "stage1.pt") and rec2["config"]["stage2_lr"] == 1e-4
    assert rec2["config"]["stage2_ema"] == 0.5 and "the last weights:" in r.output
    assert rec2["history"][0] == rec["history"][0] and rec2["history"][1] != rec["history"][1]
    r = CliRunner().invoke(app, ["train", "DDPNAS_MCN_2", "-o", str(tmp_path / "s3"), "--epochs", "3", "--cells", "3",
                                 "--channels", "4", "--config", str(cfg), "--stage1-from", str(out / "stage1.pt")])
    assert r.exit_code == 1 and "differs in epochs" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["train", "DDPNAS_MCN_2", "--float", "--stage1-from", str(out)])
    assert r.exit_code == 1 and "--stage1-from" in r.output
    bad = tmp_path / "g.json"
    bad.write_text('{"schema": "dcpnas.genotype/1"}')
    r = CliRunner().invoke(app, ["train", str(bad), "-o", str(tmp_path / "x")])
    assert r.exit_code == 1 and "missing field 'normal'" in r.output
    r = CliRunner().invoke(app, ["train", "DDPNAS_MCN_2", "--float", "--teacher", str(out / "model.pt")])
    assert r.exit_code == 1 and "--teacher" in r.output


def test_reductions_placement_and_number_checks(tmp_path):
    from dcpnas.model import Network, cell_plan
    from dcpnas.train import eval_space

    cfg = TrainConfig.from_dict({"cells": 4, "reductions": [2, 0]})
    assert cfg.reductions == (0, 2)
    sp = eval_space(DDPNAS_MCN_2, cfg, (1, 28, 28), 10)
    assert sp.reductions == (0, 2) and [p.H for p in cell_plan(sp)] == [28, 14, 14, 7]
    assert Network(DDPNAS_MCN_2, sp, binary=True)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ([4], [0, 0], []):
        with pytest.raises(ConfigError, match="reductions"):
            TrainConfig(cells=4, reductions=tuple(bad))
    f = tmp_path / "c.toml"
    f.write_text('reductions = "0,2"\n')
    with pytest.raises(ConfigError, match="list of cell indices"):
        TrainConfig.from_toml(f)
    for key in ("lr", "temperature", "weight_decay"):
        with pytest.raises(ConfigError, match="finite"):
            TrainConfig(**{key: float("nan")})
    with pytest.raises(ConfigError, match="finite"):
        TrainConfig(lr=float("inf"))


def test_shipped_recipes_parse_and_build(tmp_path):
    from pathlib import Path

    from dcpnas.model import Network
    from dcpnas.train import eval_space

    root = Path(__file__).resolve().parents[1] / "configs"
    demo = TrainConfig.from_toml(root / "demo.toml")
    assert demo.binary and demo.policy == "authors" and demo.data == "embedded"
    sp = eval_space(DDPNAS_MCN_2, demo, (1, 28, 28), 10)
    assert Network(DDPNAS_MCN_2, sp, binary=True)(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    cifar = TrainConfig.from_toml(root / "cifar10-darts.toml")
    sp = eval_space(DDPNAS_MCN_2, cifar, (3, 32, 32), 10)
    assert (sp.cells, sp.channels, sp.reductions, cifar.device) == (20, 36, (6, 13), "cuda")


def test_run_folder_is_where_compile_looks(tmp_path):
    from dcpnas.train import run_folder, trained_weights

    g = tmp_path / "demo" / "genotype.json"
    assert run_folder(g) == tmp_path / "demo" / "train"
    assert run_folder(g, binary=False) == tmp_path / "demo" / "train-float"
    assert trained_weights(g) is None
    (tmp_path / "demo" / "train").mkdir(parents=True)
    (tmp_path / "demo" / "train" / "model.pt").write_bytes(b"x")
    assert trained_weights(g) == tmp_path / "demo" / "train" / "model.pt"


def test_cli_train_writes_beside_the_genotype_and_finds_the_teacher(tmp_path):
    from typer.testing import CliRunner

    from dcpnas.cli import app

    g = DDPNAS_MCN_2.save(tmp_path / "run" / "genotype.json")
    cfg = tmp_path / "t.toml"
    cfg.write_text("[train]\ntrain_subset = 40\ntest_subset = 20\nbatch_size = 20\nepochs = 1\ncells = 3\n"
                   "channels = 4\nreductions = [0, 2]\n")
    base = ["train", str(g), "--config", str(cfg), "--no-progress", "--threads", "1"]
    r = CliRunner().invoke(app, base + ["--float"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "train-float" / "model.pt").is_file()
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "run" / "train" / "train.json").read_text())
    assert rec["teacher"] == str(tmp_path / "run" / "train-float" / "model.pt") and "teacher" in r.output
    assert rec["space"]["reductions"] == [0, 2]
    r = CliRunner().invoke(app, base + ["--no-teacher", "-o", str(tmp_path / "plain")])
    assert r.exit_code == 0 and json.loads((tmp_path / "plain" / "train.json").read_text())["teacher"] is None
    r = CliRunner().invoke(app, base + ["--reductions", "0,x"])
    assert r.exit_code == 1 and "--reductions" in r.output


def test_stage2_lr_is_stage_two_peak(tmp_path, monkeypatch):
    """stage2_lr sets the peak of stage 2's cosine (stage 1 keeps lr); invalid values are refused."""
    import dcpnas.train as tr

    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match="stage2_lr"):
            TrainConfig(stage2_lr=bad)
    peaks = []
    real = tr.cosine_lr
    monkeypatch.setattr(tr, "cosine_lr", lambda base, step, total: (peaks.append(base), real(base, step, total))[1])
    train(DDPNAS_MCN_2, TrainConfig(epochs=2, stage2_lr=7e-4, lr=3e-3, **TINY), tmp_path / "r")
    assert set(peaks) == {3e-3, 7e-4} and peaks[0] == 3e-3 and peaks[-1] == 7e-4


def test_imagenet_stem_trains_on_large_images(tmp_path):
    """--stem imagenet: DARTS' stride-8 stem for large inputs (here 32x32 RGB PNGs, cells at 4x4); the
    model.pt records the stem, and configs of the cifar stem keep their old form (old checkpoints resume)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("cat", "dog"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8), "RGB").save(
                    tmp_path / "img" / split / c / f"{k}.png")
    cfg = TrainConfig(epochs=1, stem="imagenet", cells=3, channels=4, batch_size=4, binary=False,
                      data=f"imagefolder:{tmp_path / 'img'}")
    assert cfg.to_dict()["stem"] == "imagenet" and "stem" not in TrainConfig().to_dict()
    res = train(DDPNAS_MCN_2, cfg, tmp_path / "run")
    net, meta = load_model(res.model_path, genotype=DDPNAS_MCN_2)
    assert meta["space"].stem == "imagenet" and meta["space"].input_shape == (3, 32, 32)
    assert net.stem.states(torch.zeros(1, 3, 32, 32))[1].shape == (1, 4, 4, 4)
    with pytest.raises(ConfigError, match="unknown stem"):
        TrainConfig(stem="mobile")

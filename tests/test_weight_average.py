"""dcpnas.weight_average and dcpnas.batchnorm against slow references, and stage 2's weight average in dcpnas.train."""

import json

import pytest
import torch

from dcpnas.checkpoint import load_model
from dcpnas.errors import ArtifactError, ConfigError
from dcpnas.genotype import DDPNAS_MCN_2
from dcpnas.train import TrainConfig, train
from dcpnas.batchnorm import recalibrate_batchnorm
from dcpnas.weight_average import WeightEMA

TINY = dict(cells=3, channels=4, train_subset=60, test_subset=30, batch_size=20, eval_batch_size=16)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))


def test_ema_update_is_the_recurrence():
    net = _net()
    ema = WeightEMA(net, 0.8)
    ref = [p.detach().clone() for p in net.parameters()]
    for step in range(5):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        ref = [0.8 * r + 0.2 * p.detach() for r, p in zip(ref, net.parameters())]  # the slow reference
    for a, r in zip(ema.params, ref):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-6)
    again = WeightEMA(net, 0.8, state=ema.state())
    assert all(torch.equal(a, b) for a, b in zip(again.params, ema.params))
    with pytest.raises(ArtifactError, match="EMA state"):
        WeightEMA(net, 0.8, state=ema.state()[:-1])
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ConfigError):
            WeightEMA(net, bad)


def test_recalibration_is_the_plain_average_of_batch_statistics():
    net = _net()
    batches = [torch.randn(5, 2, 6, 6) * (i + 1) for i in range(3)]
    bn = net[1]
    momentum = bn.momentum
    assert recalibrate_batchnorm(net, iter(batches)) == 15
    conv = net[0]
    with torch.no_grad():
        outs = [conv(b) for b in batches]
    means = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    vars_ = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(bn.running_mean, means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, vars_, rtol=1e-5, atol=1e-6)
    assert bn.momentum == momentum and not net.training


def test_swapped_in_restores_weights_and_statistics_exactly():
    net = _net()
    ema = WeightEMA(net, 0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 2, 6, 6)
    with ema.swapped_in(net, iter([x])) as m:
        assert torch.equal(m[0].weight, ema.params[0]) and not torch.equal(m[1].running_mean, before["1.running_mean"])
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and net.training


def test_stage2_average_is_kept_and_the_last_weights_are_reported(tmp_path):
    """The same run with and without the average trains the same weights, bit for bit, over two stage-2 epochs
    (the average's evaluation after the first disturbs nothing); the average is the network kept, its accuracy is
    the last epoch's EMA figure, and an interrupted averaged run resumes exactly."""
    from dcpnas.checkpoint import load_torch

    plain = train(DDPNAS_MCN_2, TrainConfig(epochs=4, **TINY), tmp_path / "plain")
    cfg = TrainConfig(epochs=4, stage2_ema=0.5, **TINY)
    avg = train(DDPNAS_MCN_2, cfg, tmp_path / "avg")
    last_plain, last_avg = (load_torch(tmp_path / d / "checkpoint.pt")["model"] for d in ("plain", "avg"))
    for k, v in last_plain.items():
        assert torch.equal(v, last_avg[k]), k
    assert avg.last_weights == {"test_accuracy": plain.test_accuracy, "test_loss": plain.test_loss}
    assert plain.last_weights is None
    rec = json.loads((tmp_path / "avg" / "train.json").read_text())
    assert rec["last_weights"] == avg.last_weights and rec["config"]["stage2_ema"] == 0.5
    assert "stage2_ema" not in json.loads((tmp_path / "plain" / "train.json").read_text())["config"]
    strip = ("seconds", "test_loss_ema", "test_accuracy_ema")
    assert [{k: v for k, v in h.items() if k not in strip} for h in avg.history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in plain.history]
    assert ["test_accuracy_ema" in h for h in avg.history] == [False, False, True, True]
    assert avg.test_accuracy == avg.history[-1]["test_accuracy_ema"]
    a, _ = load_model(plain.model_path)
    b, _ = load_model(avg.model_path)
    assert any(not torch.equal(va, vb) for va, vb in zip(a.state_dict().values(), b.state_dict().values()))
    # interrupted after stage 2's first epoch (the third of 2 + 2), then resumed: the same average, bit for bit
    out = tmp_path / "resumed"
    seen = []

    def stop_after_third(phase, done, total, **m):
        if "test_acc" in m:
            seen.append(phase)
            if len(seen) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(DDPNAS_MCN_2, cfg, out, progress=stop_after_third)
    res = train(DDPNAS_MCN_2, cfg, out, resume=True)
    b, _ = load_model(res.model_path)
    a, _ = load_model(avg.model_path)
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), k
    # the average is a stage-2 setting: it may differ from the run whose stage 1 it starts from
    s = train(DDPNAS_MCN_2, cfg, tmp_path / "from", start_from=tmp_path / "plain" / "stage1.pt")
    assert s.test_accuracy == avg.test_accuracy
    with pytest.raises(ConfigError, match="stage2_ema"):
        TrainConfig(stage2_ema=1.0)
    with pytest.raises(ConfigError, match="float run"):
        TrainConfig(stage2_ema=0.9, binary=False)


def test_stage2_starts_only_from_a_stage1_of_the_same_teacher(tmp_path):
    """stage1.pt records the teacher its stage 1 learnt from; a run with another teacher, or none, is refused,
    and a resumed run keeps the name of the snapshot it started from."""
    from dcpnas.train import check_stage1_teacher, stage1_snapshot, teacher_digest

    t1 = train(DDPNAS_MCN_2, TrainConfig(epochs=1, binary=False, **TINY), tmp_path / "t1").model_path
    t2 = train(DDPNAS_MCN_2, TrainConfig(epochs=1, binary=False, seed=1, **TINY), tmp_path / "t2").model_path
    cfg = TrainConfig(epochs=3, **TINY)
    train(DDPNAS_MCN_2, cfg, tmp_path / "kd", teacher=t1)
    snap = tmp_path / "kd" / "stage1.pt"
    ck = stage1_snapshot(snap, DDPNAS_MCN_2, cfg)
    assert ck["teacher"] == teacher_digest(load_model(t1)[0]) != teacher_digest(load_model(t2)[0])
    with pytest.raises(ConfigError, match="another teacher"):
        train(DDPNAS_MCN_2, cfg, tmp_path / "other", teacher=t2, start_from=snap)
    with pytest.raises(ConfigError, match="has none"):
        train(DDPNAS_MCN_2, cfg, tmp_path / "none", start_from=snap)
    train(DDPNAS_MCN_2, cfg, tmp_path / "labels")
    with pytest.raises(ConfigError, match="learnt from the labels"):
        check_stage1_teacher(stage1_snapshot(tmp_path / "labels" / "stage1.pt", DDPNAS_MCN_2, cfg), "x",
                             ck["teacher"])
    out = tmp_path / "same"

    def stop_at_stage2(phase, done, total, **m):
        if "test_acc" in m and phase == "stage2":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(DDPNAS_MCN_2, TrainConfig(epochs=3, stage2_ema=0.5, **TINY), out, teacher=t1, start_from=snap,
              progress=stop_at_stage2)
    res = train(DDPNAS_MCN_2, TrainConfig(epochs=3, stage2_ema=0.5, **TINY), out, teacher=t1, resume=True)
    assert json.loads((out / "train.json").read_text())["stage1_from"] == str(snap) and len(res.history) == 3

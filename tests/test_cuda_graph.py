"""dcpnas.cuda_graph: the captured training step does the eager step's arithmetic (GPU tests skip without CUDA)."""

import pytest
import torch

from dcpnas.cuda_graph import GraphedStep, eager_step, set_lr
from dcpnas.genotype import DDPNAS_MCN_2
from dcpnas.train import TrainConfig, augment_batch, default_eval_space, train, training_loss

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TINY = dict(cells=3, channels=4, train_subset=120, test_subset=60, batch_size=20, eval_batch_size=16)


def test_set_lr_fills_tensors_in_place_and_sets_floats():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1)
    set_lr(opt, 0.25)
    assert opt.param_groups[0]["lr"] == 0.25
    opt.param_groups[0]["lr"] = t = torch.tensor(0.1)
    set_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] is t and float(t) == 0.5


def test_graphed_step_refuses_cpu_tensors():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="CUDA"):
        GraphedStep(net, opt, lambda x, y: (net(x).sum(), net(x)), torch.zeros(4, 3), torch.zeros(4))


def test_augment_batch_draws_the_same_on_any_device():
    """The random draws come from the CPU generator: a GPU run sees the CPU run's data."""
    x = torch.randn(5, 1, 6, 6)
    fill = torch.tensor([-1.0])
    a = augment_batch(x, torch.Generator().manual_seed(3), fill)
    dev = "cuda" if torch.cuda.is_available() else "meta"
    if dev == "meta":
        pytest.skip("needs a CUDA device for the second device")
    b = augment_batch(x.to(dev), torch.Generator().manual_seed(3), fill)
    assert torch.equal(a, b.cpu())


def _net_and_batches(seed=0, n_batches=6):
    from dcpnas.model import Network

    torch.manual_seed(seed)
    space = default_eval_space(cells=3, channels=8, policy="authors", reductions=(0, 2))
    net = Network(DDPNAS_MCN_2, space, binary=True).cuda()
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, 1, 28, 28, generator=g).cuda(), torch.randint(0, 10, (16,), generator=g).cuda())
               for _ in range(n_batches)]
    return net, batches


@cuda
@pytest.mark.parametrize("distilled", [False, True])
def test_graphed_step_matches_eager_steps(distilled, monkeypatch):
    """Six AdamW steps with a changing lr, replayed from one graph, against six eager steps from the same
    start: losses and weights agree to float rounding, and the warm-up leaves no trace."""
    from dcpnas.cuda_graph import capturable_adamw

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).cuda() if distilled else None
    results = []
    for graphed in (False, True):
        net, batches = _net_and_batches()

        loss_fn = training_loss(net, teacher)
        opt = capturable_adamw(net.parameters(), 5e-3, 1e-4, "cuda")  # the same optimiser in both runs
        step = None
        losses = []
        for i, (x, y) in enumerate(batches):
            set_lr(opt, 5e-3 * (1 - i / 8))
            step = step or (GraphedStep(net, opt, loss_fn, x, y) if graphed else eager_step(opt, loss_fn))
            loss, _ = step(x, y)
            losses.append(float(loss.detach()))
        results.append((losses, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}))
    (l_eager, s_eager), (l_graph, s_graph) = results
    assert l_graph == pytest.approx(l_eager, rel=1e-4, abs=1e-5)
    assert l_graph[0] == pytest.approx(l_eager[0], rel=1e-6)  # the first step starts from the same weights
    for k in s_eager:
        assert torch.allclose(s_graph[k].float(), s_eager[k].float(), rtol=1e-3, atol=1e-4), k


@cuda
def test_train_on_cuda_graphed_matches_eager_and_resumes(tmp_path, monkeypatch):
    """dcpnas.train on CUDA with and without the graph: both stages, the same per-epoch accuracy (the
    arithmetic is the same; rounding may differ in the last bits), and a resumed graphed run finishes."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = TrainConfig(epochs=4, device="cuda", **TINY)
    eager = train(DDPNAS_MCN_2, cfg, tmp_path / "eager", cuda_graph=False)
    graphed = train(DDPNAS_MCN_2, cfg, tmp_path / "graphed")
    assert [h["stage"] for h in graphed.history] == ["stage1", "stage1", "stage2", "stage2"]
    for he, hg in zip(eager.history, graphed.history):
        assert (hg["train_loss"], hg["test_accuracy"]) == pytest.approx((he["train_loss"], he["test_accuracy"]),
                                                                       rel=1e-3, abs=1e-4), (eager.history, graphed.history)
    # interrupted in the middle of stage 2 (its optimiser state saved), then resumed with a new graph
    class Stop(Exception):
        pass

    ends = []

    def stop(phase, done, total, **m):
        if "test_acc" in m:
            ends.append(phase)
            if len(ends) == 3:
                raise Stop

    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        train(DDPNAS_MCN_2, cfg, out, progress=stop, resume=True)
    res = train(DDPNAS_MCN_2, cfg, out, resume=True)
    assert len(res.history) == 4
    assert res.history[-1]["train_loss"] == pytest.approx(graphed.history[-1]["train_loss"], rel=1e-3), \
        (res.history, graphed.history)
    # the resumed stage 2 continued its optimiser (not a fresh one, and no warm-up steps left in it)
    from dcpnas.checkpoint import load_torch

    steps = 2 * (TINY["train_subset"] // TINY["batch_size"])
    for run in (out, tmp_path / "graphed"):
        state = load_torch(run / "checkpoint.pt")["optimizer"]["state"]
        assert {float(s["step"]) for s in state.values()} == {steps}, run


@cuda
def test_stage2_average_beside_the_graph_is_the_eager_average(tmp_path, monkeypatch):
    """The weight average (stage2_ema) follows the parameters the graph updates in place, and its evaluation
    between epochs (parameters swapped in and out with copy_) disturbs neither the graph nor the training."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = TrainConfig(epochs=4, device="cuda", stage2_ema=0.5, **TINY)
    eager = train(DDPNAS_MCN_2, cfg, tmp_path / "eager", cuda_graph=False)
    graphed = train(DDPNAS_MCN_2, cfg, tmp_path / "graphed")
    plain = train(DDPNAS_MCN_2, TrainConfig(epochs=4, device="cuda", **TINY), tmp_path / "plain")
    assert graphed.history[-1]["train_loss"] == pytest.approx(plain.history[-1]["train_loss"], rel=1e-6)
    for he, hg in zip(eager.history[2:], graphed.history[2:]):
        assert (hg["train_loss"], hg["test_accuracy_ema"]) == pytest.approx(
            (he["train_loss"], he["test_accuracy_ema"]), rel=1e-3, abs=1e-4), (eager.history, graphed.history)
    assert graphed.test_accuracy == graphed.history[-1]["test_accuracy_ema"]

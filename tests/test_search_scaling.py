"""The search's distinctive terms have the effect METHOD.md "Scaling" asks for (issue 12): binary weight
signs flip at the default mu, the tangent term is the configured fraction of g_C, the Child's
architecture step is the gradient of KL + lambda ||g_C - g_P||^2, and a short search teaches the Child."""

import copy

import pytest
import torch
import torch.nn.functional as F

from dcpnas.config import SearchConfig
from dcpnas.curvature import kl_to_parent
from dcpnas.parent_child import ParentChild, alpha_entropy, binary_signs
from dcpnas.space import SearchSpace

TINY = SearchSpace(primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"),
                   steps=2, cells=3, channels=4, stem_multiplier=1, input_shape=(1, 8, 8), num_classes=3)


def _planted(n: int, seed: int):
    """3 classes: a bright 2x2 blob in the left, middle or right third of an 8x8 noise image."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 8, 8, generator=g)
    rows = torch.randint(0, 7, (n,), generator=g)
    for i in range(n):
        c = int(y[i]) * 3
        x[i, 0, rows[i]:rows[i] + 2, c:c + 2] += 2.0
    return x, y


def _pc(**changes) -> ParentChild:
    config = SearchConfig.load(overrides={"seed": 0, **changes})
    return ParentChild(TINY, config, total_steps=50)


def _captured_arch_grads(pc: ParentChild, x, y) -> list[torch.Tensor]:
    seen = {}
    real = pc._arch_update

    def capture(arch, loss_value, grads):
        seen["g"] = [g.clone() for g in grads]
        return real(arch, loss_value, grads)

    pc._arch_update = capture
    pc.child_arch_step(x, y)
    pc._arch_update = real
    return seen["g"]


def test_kl_to_parent_matches_torch_kl_div():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6, 5), -1)
    z = torch.randn(6, 5)
    ref = F.kl_div(torch.log_softmax(z, -1), p, reduction="batchmean")
    torch.testing.assert_close(kl_to_parent(p, z), ref)


def test_binary_weight_signs_flip_at_the_default_mu():
    x, y = _planted(64, 1)
    pc = _pc()
    assert pc.config.mu > 0  # the default keeps L_R on
    before = binary_signs(pc.child)
    for i in range(4):
        pc.child_weight_step(x[16 * i:16 * (i + 1)], y[16 * i:16 * (i + 1)])
    flipped = float((binary_signs(pc.child) != before).float().mean())
    assert flipped > 5e-4, flipped  # ~10 of 10,612 signs in 4 steps (0 with the summed L_R below)
    # the old summed L_R (mu * sum over weights, mu = 0.2) freezes them: a much larger pull per weight
    frozen = _pc(mu=0.2 * sum(int(s.numel()) for s in [before]))
    before = binary_signs(frozen.child)
    for i in range(4):
        frozen.child_weight_step(x[16 * i:16 * (i + 1)], y[16 * i:16 * (i + 1)])
    assert float((binary_signs(frozen.child) != before).float().mean()) < flipped / 5


def test_child_arch_gradient_is_the_autograd_gradient_of_kl_plus_lambda_d():
    """exact curvature, absolute lambda: grad == d/dalpha [KL + lambda ||dKL/dalpha - g_P||^2]."""
    torch.set_default_dtype(torch.float64)
    try:
        pc = _pc(curvature="exact", lam=0.3, lam_relative=False, decoupled=False)
    finally:
        torch.set_default_dtype(torch.float32)
    x, y = _planted(8, 2)
    x = x.double()
    g_p = [0.1 * torch.randn_like(a) for a in pc.child.arch_parameters()]
    pc.g_parent = g_p
    ref_child = copy.deepcopy(pc.child)
    got = _captured_arch_grads(pc, x, y)

    with torch.no_grad():
        ref_child.eval()  # the parent's probs are computed with frozen BN statistics; BN mode is train below
    p = pc._parent_probs(x)
    ref_child.train()
    leaves = [a.detach().clone().requires_grad_(True) for a in ref_child.arch_parameters()]
    kl = kl_to_parent(p, ref_child(x, alphas=tuple(leaves)))
    g_c = torch.autograd.grad(kl, leaves, create_graph=True)
    total = kl + 0.3 * sum(((g - gp) ** 2).sum() for g, gp in zip(g_c, g_p))
    ref = torch.autograd.grad(total, leaves)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("curvature", ["ggn", "exact", "fisher"])
def test_dcp_and_cp_gradients_differ_by_the_configured_ratio(curvature):
    x, y = _planted(16, 3)
    dcp = _pc(curvature=curvature, lam=0.4, decoupled=False)
    dcp.g_parent = [0.1 * torch.randn_like(a) for a in dcp.child.arch_parameters()]
    cp = copy.deepcopy(dcp)
    cp.config = cp.config.replace(mode="cp")
    g_dcp, g_cp = _captured_arch_grads(dcp, x, y), _captured_arch_grads(cp, x, y)
    diff = sum(float(((a - b) ** 2).sum()) for a, b in zip(g_dcp, g_cp)) ** 0.5
    base = sum(float((b ** 2).sum()) for b in g_cp) ** 0.5
    assert diff / base == pytest.approx(0.4, rel=1e-4)


def test_psi_moves_alpha_by_a_visible_fraction_of_the_optimizer_step():
    x, y = _planted(64, 4)
    pc = _pc(mode="cp")
    ratios = []
    for i in range(6):
        sl = slice(8 * i, 8 * (i + 1))
        pc.parent_weight_step(x[sl], y[sl])
        ratios.append(pc.parent_arch_step(x[sl], y[sl])["psi_step_ratio"])
    assert max(ratios) > 0.05, ratios  # was ~1e-6 with psi(0) = 0 and an unnormalised psi step


def test_alpha_entropy_is_a_fraction_of_uniform():
    assert alpha_entropy(torch.zeros(3, 8)) == pytest.approx(1.0)
    peaked = torch.tensor([[20.0, 0, 0, 0]])
    assert alpha_entropy(peaked) < 1e-6


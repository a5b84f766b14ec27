"""Architect: plain Adam updates, psi backtracking against the formulas of METHOD.md section 4, R(w)."""

import copy

import pytest
import torch

from dcpnas.architect import Architect, op_weight_norm, op_weight_norms, top_tau_mask
from dcpnas.binary import BinaryConv2d, sign
from dcpnas.model import Supernet
from dcpnas.operations import make_op
from dcpnas.space import SearchSpace, edge_index


def test_top_tau_mask_picks_largest_with_stable_ties():
    R = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, 4.0, 3.0, 2.0]])
    assert top_tau_mask(R, 0.5).tolist() == [[0, 1, 0, 1], [1, 1, 0, 0]]
    assert top_tau_mask(R, 0.25).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]  # tie: lower index first


def test_op_weight_norms_follow_the_method():
    C = 4
    assert op_weight_norm(make_op("none", C, 1, False), C) == 0.0
    assert op_weight_norm(make_op("skip_connect", C, 1, False), C) == C
    assert abs(op_weight_norm(make_op("max_pool_3x3", C, 1, False), C) - C / 9) < 1e-12
    real = make_op("sep_conv_3x3", C, 1, False)
    ref = sum(float(m.weight.detach().pow(2).sum()) for m in real.modules() if isinstance(m, torch.nn.Conv2d))
    assert abs(op_weight_norm(real, C) - ref) < 1e-4
    binary = make_op("dil_conv_3x3", C, 1, True)
    ref = sum(float((m.scale.view(-1, 1, 1, 1) * sign(m.weight)).pow(2).sum())
              for m in binary.modules() if isinstance(m, BinaryConv2d))
    assert abs(op_weight_norm(binary, C) - ref) < 1e-4


def test_op_weight_norms_of_a_supernet_sum_cells_of_each_type():
    space = SearchSpace(cells=3, channels=2, input_shape=(1, 8, 8))
    net = Supernet(space, binary=True)
    Rn, Rr = op_weight_norms(net)
    assert Rn.shape == (14, 8) and Rr.shape == (14, 8)
    assert (Rn[:, 0] == 0).all() and (Rn[:, 3] == 2).all()  # none, skip_connect (stride 1, C=2)
    unstrided = [e for e, (i, _) in enumerate(edge_index(space.steps)) if i >= 2]
    assert (Rr[unstrided, 3] == 4 + 8).all()  # identity in two reduce cells, C = 4 and 8
    assert (Rr[[0, 1], 3] > 0).all()  # strided skip_connect = FactorizedReduce: its conv weights


def test_plain_update_is_adam():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(3, 4))
    b = torch.nn.Parameter(a.detach().clone())
    arch = Architect([a], lr=0.01, weight_decay=1e-3, decoupled=False)
    ref = torch.optim.Adam([b], lr=0.01, betas=(0.5, 0.999), weight_decay=1e-3)
    for _ in range(3):
        g = torch.randn(3, 4)
        arch.step([g])
        b.grad = g.clone()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)


def test_decoupled_backtrack_and_psi_update_match_the_formulas():
    torch.manual_seed(1)
    E, P, eta, eta_psi, tau = 3, 4, 0.5, 0.2, 0.5
    R = torch.rand(E, P)
    a = torch.nn.Parameter(torch.randn(E, P))
    shadow = torch.nn.Parameter(a.detach().clone())  # the plain Adam trajectory, fed the same alpha
    arch = Architect([a], lr=0.05, weight_decay=0.0, decoupled=True, eta=eta, eta_psi=eta_psi, tau=tau,
                     psi_init=0.3, norms_fn=lambda: [R])
    adam = torch.optim.Adam([shadow], lr=0.05, betas=(0.5, 0.999))
    mask = top_tau_mask(R, tau)
    psi = torch.full((E,), 0.3)
    backtrack = None
    for step in range(3):
        g = torch.randn(E, P)
        if backtrack is not None:  # psi(t+1) = |psi(t) - eta_psi dL/dpsi(t) / rms|, dL/dpsi by the chain rule
            d = (g * backtrack).sum(1)
            psi = (psi - eta_psi * d / d.square().mean().sqrt()).abs()
        before = a.detach().clone()
        arch.step([g])
        with torch.no_grad():
            shadow.copy_(before)
        shadow.grad = g.clone()
        adam.step()
        backtrack = eta * before * mask
        expected = shadow.detach() + psi.view(-1, 1) * backtrack
        torch.testing.assert_close(a.detach(), expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(arch.psi[0], psi)
    assert (arch.psi[0] > 0).any()


def test_state_dict_round_trip():
    a = torch.nn.Parameter(torch.randn(2, 3))
    arch = Architect([a], decoupled=True, norms_fn=lambda: [torch.rand(2, 3)])
    arch.step([torch.randn(2, 3)])
    arch.step([torch.randn(2, 3)])
    b = torch.nn.Parameter(a.detach().clone())
    other = Architect([b], decoupled=True, norms_fn=arch.norms_fn)
    other.load_state_dict(copy.deepcopy(arch.state_dict()))  # as a checkpoint would: no shared tensors
    R = torch.rand(2, 3)
    arch.norms_fn = other.norms_fn = lambda: [R]
    g = torch.randn(2, 3)
    arch.step([g])
    other.step([g])
    torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)


def test_psi_max_ratio_caps_the_backtrack_at_a_multiple_of_the_optimizer_step():
    torch.manual_seed(2)
    ratios = {}
    for cap in (None, 1.0):
        a = torch.nn.Parameter(3 * torch.randn(4, 5))  # large alphas: psi * eta * alpha dwarfs the Adam step
        arch = Architect([a], lr=0.01, weight_decay=0.0, decoupled=True, eta=0.5, psi_init=2.0,
                         psi_max_ratio=cap, norms_fn=lambda: [torch.rand(4, 5)])
        ratios[cap] = [arch.step([torch.randn(4, 5)])["psi_step_ratio"] for _ in range(3)]
    assert min(ratios[None]) > 5  # uncapped it runs away
    assert max(ratios[1.0]) == pytest.approx(1.0)


def test_psi_cap_holds_per_alpha_tensor():
    """The backtrack of one cell type's alphas is capped by its own Adam step: large reduce alphas (capped)
    do not starve the normal alphas of their backtrack (a shared cap left the normal cell near uniform)."""
    torch.manual_seed(3)
    large, small = 3 * torch.randn(4, 5), 0.05 * torch.randn(4, 5)
    grads = [[torch.randn(4, 5), torch.randn(4, 5)] for _ in range(4)]
    R = [torch.rand(4, 5), torch.rand(4, 5)]
    kw = dict(lr=0.01, weight_decay=0.0, decoupled=True, eta=0.5, psi_init=2.0, psi_max_ratio=1.0)
    a, b = torch.nn.Parameter(large.clone()), torch.nn.Parameter(small.clone())
    both = Architect([a, b], norms_fn=lambda: R, **kw)
    alone_b = torch.nn.Parameter(small.clone())
    alone = Architect([alone_b], norms_fn=lambda: R[1:], **kw)
    for g in grads:
        before = b.detach().clone()
        both.step(g)
        alone.step(g[1:])
        assert float((b.detach() - before).norm()) > 0
    torch.testing.assert_close(b.detach(), alone_b.detach(), rtol=0, atol=0)

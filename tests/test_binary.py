"""1-bit ops: sign convention, STE and ApproxSign gradients, BinaryConv2d vs a plain reference conv."""

import pytest
import torch
import torch.nn.functional as F

from dcpnas.binary import (BinaryConv2d, approx_sign, reconstruction_loss, set_binary_weights, sign, ste_sign)


def test_sign_at_zero_is_plus_one():
    x = torch.tensor([-2.0, -1e-12, 0.0, -0.0, 1e-12, 3.0])
    assert sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    assert ste_sign(x).tolist() == approx_sign(x).tolist() == sign(x).tolist()
    assert sign(x.double()).dtype == torch.float64


def test_ste_gradient_formula():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    g = torch.arange(1.0, 8.0)
    (ste_sign(x) * g).sum().backward()
    expected = g * (x.detach().abs() <= 1).float()
    assert torch.equal(x.grad, expected)


def test_approx_sign_gradient_formula():
    x = torch.tensor([-1.5, -1.0, -0.75, -0.25, 0.0, 0.25, 0.75, 1.0, 2.0], requires_grad=True)
    approx_sign(x).sum().backward()
    xd = x.detach()
    expected = torch.where((xd >= -1) & (xd < 0), 2 + 2 * xd, torch.where((xd >= 0) & (xd < 1), 2 - 2 * xd,
                                                                          torch.zeros_like(xd)))
    torch.testing.assert_close(x.grad, expected)


def _approx_surrogate(x):
    """The smooth function whose derivative ApproxSign uses: -1 below -1, 2x + x^2 on [-1, 0),
    2x - x^2 on [0, 1), +1 from 1 on."""
    inner = torch.where(x < 0, 2 * x + x * x, 2 * x - x * x)
    return torch.where(x < -1, -torch.ones_like(x), torch.where(x >= 1, torch.ones_like(x), inner))


def test_approx_sign_gradient_matches_finite_differences_of_surrogate():
    """Away from the kinks (0, +-1) the backward of approx_sign is the derivative of its surrogate."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(64, generator=gen, dtype=torch.float64) * 2.8 - 1.4)
    x = x[((x.abs() - 1).abs() > 0.05) & (x.abs() > 0.05)].requires_grad_(True)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    (grad_sign,) = torch.autograd.grad((approx_sign(x) * g).sum(), x)
    assert torch.autograd.gradcheck(lambda t: _approx_surrogate(t) * g, (x,))
    (grad_surr,) = torch.autograd.grad((_approx_surrogate(x) * g).sum(), x)
    torch.testing.assert_close(grad_sign, grad_surr)
    eps = 1e-6
    fd = (_approx_surrogate(x.detach() + eps) - _approx_surrogate(x.detach() - eps)) / (2 * eps) * g
    torch.testing.assert_close(grad_sign, fd, rtol=1e-5, atol=1e-6)


def test_ste_gradient_matches_finite_differences_of_hardtanh():
    """STE is the derivative of hardtanh (clip to [-1, 1]) away from +-1."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(64, generator=gen, dtype=torch.float64) * 3 - 1.5
    x = x[(x.abs() - 1).abs() > 0.05].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: F.hardtanh(t), (x,))
    (g_ste,) = torch.autograd.grad(ste_sign(x).sum(), x)
    (g_ht,) = torch.autograd.grad(F.hardtanh(x).sum(), x)
    torch.testing.assert_close(g_ste, g_ht)


def _ref_sign(t):
    return torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))


@pytest.mark.parametrize("k, stride, pad, dil, groups", [(3, 1, 1, 1, 1), (3, 2, 1, 1, 4), (5, 1, 4, 2, 4),
                                                         (1, 2, 0, 1, 1), (3, 1, 2, 2, 2)])
def test_binary_conv_forward_matches_reference(k, stride, pad, dil, groups):
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 8, k, stride, pad, dil, groups)
    with torch.no_grad():
        conv.scale.uniform_(0.5, 2.0)
    x = torch.randn(2, 4, 9, 9)
    x[0, 0, 0, :3] = 0.0  # zeros must binarise to +1
    beta = conv.scale.detach().view(-1, 1, 1, 1)
    # reference: explicit zero padding of the binarised input, then an unpadded conv
    xb = F.pad(_ref_sign(x), (pad, pad, pad, pad), value=0.0)
    ref = F.conv2d(xb, beta * _ref_sign(conv.weight.detach()), None, stride, 0, dil, groups)
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)


def test_binary_conv_flags():
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 5, 3, padding=1, binary_act=False, binary_weight=False)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, None, 1, 1))
    conv.binary_act = True
    torch.testing.assert_close(conv(x), F.conv2d(_ref_sign(x), conv.weight, None, 1, 1))
    conv.binary_weight = True
    w = conv.scale.view(-1, 1, 1, 1) * _ref_sign(conv.weight)
    torch.testing.assert_close(conv.effective_weight(), w)


def test_binary_conv_backward_reaches_weights_and_scale():
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 4, 3, padding=1)
    x = (torch.rand(1, 4, 5, 5) - 0.5).requires_grad_(True)
    conv(x).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert conv.scale.grad is not None and conv.scale.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_reconstruction_loss_formula():
    torch.manual_seed(0)
    net = torch.nn.Sequential(BinaryConv2d(2, 3, 3), BinaryConv2d(3, 4, 1), BinaryConv2d(4, 4, 1, binary_weight=False))
    expected, count = 0.0, 0
    for m in list(net)[:2]:
        w, b = m.weight.detach(), m.scale.detach().view(-1, 1, 1, 1)
        expected += float(((w - b * _ref_sign(w)) ** 2).sum())
        count += w.numel()
    expected /= count  # per binary weight (the real-weight conv counts neither way)
    assert float(reconstruction_loss(net).detach()) == pytest.approx(expected, rel=1e-6)
    # at beta = mean|w| per channel with all |w| equal, L_R vanishes
    c = BinaryConv2d(1, 2, 1)
    with torch.no_grad():
        c.weight.copy_(torch.tensor([[[[0.5]]], [[[-0.25]]]]))
        c.reset_scale()
    assert float(reconstruction_loss(c).detach()) == 0.0
    assert float(reconstruction_loss(torch.nn.Linear(2, 2))) == 0.0


def test_set_binary_weights_reinitialises_beta():
    torch.manual_seed(0)
    net = torch.nn.Sequential(BinaryConv2d(2, 3, 3), torch.nn.ReLU(), BinaryConv2d(3, 2, 1))
    set_binary_weights(net, False)
    assert all(not m.binary_weight for m in net if isinstance(m, BinaryConv2d))
    with torch.no_grad():
        net[0].weight.mul_(3.0)
        net[0].scale.fill_(7.0)
    set_binary_weights(net, True)
    assert net[0].binary_weight and net[2].binary_weight
    torch.testing.assert_close(net[0].scale.detach(), net[0].weight.detach().abs().mean(dim=(1, 2, 3)))
    # enabling again (already binary) keeps the learned beta
    with torch.no_grad():
        net[0].scale.fill_(7.0)
    set_binary_weights(net, True)
    assert torch.all(net[0].scale == 7.0)


def test_sign_of_nan_and_memory_format():
    x = torch.tensor([float("nan"), -float("inf"), float("inf"), 1e-45, -1e-45])
    s = sign(x)
    assert s.tolist() == [1.0, -1.0, 1.0, 1.0, -1.0]  # torch.sign(nan) is 0: NaN gives +1 (inputs reject NaN)
    y = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    assert sign(y).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(sign(y), torch.where(y >= 0, 1.0, -1.0))


def _prelu_pair(fmt, kink=True):
    from dcpnas.operations import PReLU

    torch.manual_seed(0)
    ours, ref = PReLU(6), torch.nn.PReLU(6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(6))
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 6, 5, 4, dtype=torch.float64).contiguous(memory_format=fmt)
    if kink:  # both give the slope's side at 0 (torch's own double backward does not: measure zero)
        x[0, 0, 0, :2] = 0.0
    return ours.double(), ref.double(), x


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_prelu_matches_torch_forward_backward_and_double_backward(fmt):
    for kink in (True, False):
        ours, ref, x = _prelu_pair(fmt, kink)
        g = torch.randn(x.shape, dtype=torch.float64)
        outs = []
        for m in (ours, ref):
            xi = x.clone().requires_grad_()
            y = m(xi)
            gx, gw = torch.autograd.grad((y * g).sum(), [xi, m.weight], create_graph=True)
            out = [y.detach(), gx.detach(), gw.detach()]
            if not kink:  # a second-order term (what the exact curvature estimator differentiates)
                out += torch.autograd.grad((gx * g).sum() + gw.pow(2).sum(), [m.weight, xi])
            outs.append(out)
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b)
        assert outs[0][0].is_contiguous(memory_format=fmt)


def test_prelu_jvp_matches_torch():
    import torch.autograd.forward_ad as fwAD

    ours, ref, x = _prelu_pair(torch.contiguous_format, kink=False)
    tx = torch.randn(x.shape, dtype=torch.float64)
    outs = []
    for m in (ours, ref):
        with fwAD.dual_level():
            y = m(fwAD.make_dual(x, tx))
            outs.append(fwAD.unpack_dual(y).tangent)
    torch.testing.assert_close(outs[0], outs[1])

"""Curvature estimators against slow explicit references on a tiny supernet (float64)."""

import pytest
import torch

from dcpnas.curvature import kl_to_parent, make_estimator
from dcpnas.errors import ConfigError
from dcpnas.model import Supernet
from dcpnas.space import SearchSpace

# a small op set and 2 steps keep the explicit Jacobians cheap; 3 cells give both cell types
TINY = SearchSpace(primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"),
                   steps=2, cells=3, channels=2, stem_multiplier=1, input_shape=(1, 4, 4), num_classes=3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threading only adds overhead
    yield
    torch.set_num_threads(n)


def _setup(binary: bool, seed: int = 0):
    torch.manual_seed(seed)
    net = Supernet(TINY, binary).double()
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    p = torch.softmax(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    alphas = [torch.randn_like(a) * 0.5 for a in net.arch_parameters()]
    v = [torch.randn_like(a) for a in alphas]

    def logits_fn(a):
        return net(x, alphas=tuple(a))

    def loss_fn(z):
        return kl_to_parent(p, z)

    return net, logits_fn, loss_fn, alphas, v


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _unflat(vec, like):
    out, i = [], 0
    for t in like:
        out.append(vec[i:i + t.numel()].view_as(t))
        i += t.numel()
    return out


@pytest.mark.parametrize("binary", [False, True])
def test_exact_matches_autograd_functional_vhp(binary):
    """exact returns v^T H (the vjp of g_C, what dD/dalpha needs). For the real-valued parent H is
    symmetric so this is also H v; the child's straight-through gradients make H non-symmetric."""
    _, logits_fn, loss_fn, alphas, v = _setup(binary)
    got = make_estimator("exact").hvp(logits_fn, alphas, loss_fn, v)
    fn = torch.autograd.functional.vhp if binary else torch.autograd.functional.hvp
    _, ref = fn(lambda a, b: loss_fn(logits_fn((a, b))), tuple(alphas), tuple(v))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)
    assert _flat(got).abs().max() > 0


def test_exact_matches_finite_differences_of_gradient():
    _, logits_fn, loss_fn, alphas, v = _setup(False, seed=1)

    def grad_at(a):
        leaves = [t.detach().requires_grad_(True) for t in a]
        return _flat(torch.autograd.grad(loss_fn(logits_fn(leaves)), leaves))

    eps = 1e-5
    plus = grad_at([a + eps * t for a, t in zip(alphas, v)])
    minus = grad_at([a - eps * t for a, t in zip(alphas, v)])
    fd = (plus - minus) / (2 * eps)
    got = _flat(make_estimator("exact").hvp(logits_fn, alphas, loss_fn, v))
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-8)


def _forward_mode_jacobian(z_of, x):
    """J [M, P] column by column with forward-mode dual numbers (slow reference)."""
    import torch.autograd.forward_ad as fwAD

    cols = []
    for i in range(x.numel()):
        e = torch.zeros_like(x)
        e[i] = 1
        with torch.no_grad(), fwAD.dual_level():
            cols.append(fwAD.unpack_dual(z_of(fwAD.make_dual(x, e))).tangent)
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("binary", [False, True])
def test_ggn_matches_explicit_jacobian_product(binary):
    _, logits_fn, loss_fn, alphas, v = _setup(binary, seed=2)
    shapes = [a.shape for a in alphas]
    flat_alpha = _flat(alphas)

    def z_of(vec):
        return logits_fn(_unflat(vec, alphas)).reshape(-1)

    J = torch.autograd.functional.jacobian(z_of, flat_alpha)  # [N*K, P] by reverse mode
    # The child's 1-bit convs produce exact zeros before PReLU, where PyTorch's forward- and reverse-mode
    # AD take different one-sided slopes; so the right factor J v (a jvp in ggn) is built by forward mode.
    J_right = _forward_mode_jacobian(z_of, flat_alpha) if binary else J
    z = logits_fn(alphas).detach()
    H_out = torch.autograd.functional.hessian(lambda zz: loss_fn(zz.view_as(z)), z.reshape(-1))
    ref = J.T @ H_out @ J_right @ _flat(v)
    got = make_estimator("ggn").hvp(logits_fn, alphas, loss_fn, v)
    assert [g.shape for g in got] == shapes
    torch.testing.assert_close(_flat(got), ref, rtol=1e-7, atol=1e-10)
    assert ref.abs().max() > 0
    if not binary:  # GGN is symmetric positive semi-definite: v^T G v >= 0
        assert _flat(got) @ _flat(v) >= 0


def test_ggn_equals_hessian_when_the_model_is_linear_in_alpha():
    """For z linear in alpha the residual term of H vanishes, so GGN == exact H (a known identity)."""
    torch.manual_seed(3)
    A = torch.randn(5 * 3, 4, dtype=torch.float64)
    p = torch.softmax(torch.randn(5, 3, dtype=torch.float64), dim=-1)
    alphas, v = [torch.randn(4, dtype=torch.float64)], [torch.randn(4, dtype=torch.float64)]

    def logits_fn(a):
        return (A @ a[0]).view(5, 3)

    def loss_fn(z):
        return kl_to_parent(p, z)

    ggn = make_estimator("ggn").hvp(logits_fn, alphas, loss_fn, v)
    exact = make_estimator("exact").hvp(logits_fn, alphas, loss_fn, v)
    torch.testing.assert_close(ggn[0], exact[0], rtol=1e-10, atol=1e-12)


def test_fisher_is_the_empirical_fisher_of_per_sample_gradients():
    """(1/N) sum_i g_i g_i^T v with g_i = d l_i / dalpha taken one sample at a time (slow reference; the
    per-sample losses l_i come from one batch forward, as in the estimator). Real-valued supernet: the
    child's forward- and reverse-mode slopes differ at exact zeros (see the ggn test)."""
    net, logits_fn, _, alphas, v = _setup(False, seed=4)
    p = torch.softmax(torch.randn(4, 3, dtype=torch.float64), dim=-1)

    def per_sample(z):
        return (p * (torch.log(p) - torch.log_softmax(z, -1))).sum(-1)

    leaves = [a.detach().requires_grad_(True) for a in alphas]
    losses = per_sample(logits_fn(leaves))
    ref = torch.zeros(sum(a.numel() for a in alphas), dtype=torch.float64)
    for i in range(len(losses)):
        g_i = _flat(torch.autograd.grad(losses[i], leaves, retain_graph=True))
        ref += g_i * (g_i @ _flat(v)) / len(losses)
    got = _flat(make_estimator("fisher").hvp(logits_fn, alphas, lambda z: per_sample(z).mean(), v))
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-12)
    assert ref.abs().max() > 0 and got @ _flat(v) >= 0  # positive semi-definite


def test_gradient_and_vector_fn_receive_the_gradient():
    _, logits_fn, loss_fn, alphas, _ = _setup(False, seed=5)
    g_parent = [torch.randn_like(a) for a in alphas]
    results = {}
    for name in ("exact", "ggn", "fisher"):
        results[name] = make_estimator(name).gradient_and_hvp(
            logits_fn, alphas, loss_fn, lambda g: [gi - gp for gi, gp in zip(g, g_parent)])
    for name, r in results.items():
        torch.testing.assert_close(_flat(r.grad), _flat(results["exact"].grad))
        torch.testing.assert_close(_flat(r.vector), _flat(r.grad) - _flat(g_parent))
        assert r.loss.ndim == 0 and r.loss > 0


def test_unknown_estimator():
    with pytest.raises(ConfigError, match="exact, ggn, fisher"):
        make_estimator("kfac")

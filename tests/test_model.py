"""Supernet and Network: forward/backward with every op, both policies, 1-bit and real-valued."""

import pytest
import torch

from dcpnas.binary import BinaryConv2d
from dcpnas.errors import ConfigError, GenotypeError
from dcpnas.genotype import DDPNAS_MCN_2, Genotype
from dcpnas.model import Network, Supernet, cell_plan
from dcpnas.operations import make_op
from dcpnas.space import PRIMITIVES, SearchSpace

OPS = [p for p in PRIMITIVES if p != "none"]
# every op at stride 1 in the normal cell; the reduce cell of the first genotype takes every op strided
# (all its edges read the cell inputs 0/1), the second one mixes strided and stride-1 edges
G_STRIDED = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 1), ("avg_pool_3x3", 3), ("skip_connect", 0), ("skip_connect", 4)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_3x3", 0), ("dil_conv_5x5", 1),
            ("max_pool_3x3", 0), ("avg_pool_3x3", 1), ("skip_connect", 0), ("skip_connect", 1)),
    reduce_concat=(2, 3, 4, 5),
)
G_MIXED = Genotype(
    normal=(("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("skip_connect", 2),
                                          ("sep_conv_5x5", 1), ("dil_conv_5x5", 3), ("sep_conv_3x3", 2),
                                          ("dil_conv_3x3", 4), ("skip_connect", 1)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("skip_connect", 1), ("avg_pool_3x3", 0), ("sep_conv_3x3", 2), ("max_pool_3x3", 1),
            ("dil_conv_5x5", 3), ("sep_conv_5x5", 2), ("dil_conv_3x3", 4), ("skip_connect", 3)),
    reduce_concat=(2, 3, 4, 5),
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_space(policy="book", cells=3, channels=4, hw=8, c_img=1):
    return SearchSpace(cells=cells, channels=channels, input_shape=(c_img, hw, hw), num_classes=5, policy=policy)


def test_genotypes_cover_every_op():
    for g in (G_STRIDED, G_MIXED):
        assert {op for op, _ in g.normal} == set(OPS) and {op for op, _ in g.reduce} == set(OPS)
    assert all(i < 2 for _, i in G_STRIDED.reduce)


def test_cell_plan_channels_and_sizes():
    plans = cell_plan(SearchSpace(cells=6, channels=8))
    assert [p.reduction for p in plans] == [False, False, True, False, True, False]
    assert [p.C for p in plans] == [8, 8, 16, 16, 32, 32]
    assert [(p.H, p.W) for p in plans] == [(28, 28)] * 3 + [(14, 14)] * 2 + [(7, 7)]
    assert [p.reduction_prev for p in plans] == [False, False, False, True, False, True]
    assert plans[0].C_pp == plans[0].C_p == 24 and plans[1].C_p == 32
    with pytest.raises(ConfigError, match="even sizes"):
        cell_plan(SearchSpace(cells=3, channels=4, input_shape=(1, 7, 7)))


def test_imagenet_stem_plan_and_network():
    """DARTS' ImageNet network: the stem divides the input by 8 (s0 at 1/4, s1 at 1/8), the first cell
    preprocesses s0 with a FactorizedReduce, and every node starts at C channels."""
    space = SearchSpace(cells=5, channels=16, input_shape=(3, 64, 64), stem="imagenet")
    plans = cell_plan(space)
    assert plans[0].reduction_prev and plans[0].C_pp == plans[0].C_p == 16 and (plans[0].H, plans[0].W) == (8, 8)
    assert [p.reduction for p in plans] == [False, True, False, True, False]
    net = Network(DDPNAS_MCN_2, space, binary=True)
    s0, s1 = net.stem.states(torch.randn(2, 3, 64, 64))
    assert s0.shape == (2, 16, 16, 16) and s1.shape == (2, 16, 8, 8)
    _check_backward(net, torch.randn(2, 3, 64, 64), expect_scale_grad=True)
    assert SearchSpace.from_dict(space.to_dict()) == space
    assert "stem" not in SearchSpace().to_dict()  # records of the cifar stem are unchanged
    with pytest.raises(ConfigError, match="multiples of 8"):
        SearchSpace(input_shape=(3, 36, 36), stem="imagenet")
    with pytest.raises(ConfigError, match="unknown stem"):
        SearchSpace(stem="mobile")


def _check_backward(net, x, expect_scale_grad: bool):
    net.train()
    out = net(x)
    out.logsumexp(1).sum().backward()
    for name, p in net.named_parameters():
        if name.endswith("conv.scale") and not expect_scale_grad:
            continue
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), name
    return out


@pytest.mark.parametrize("genotype", [G_STRIDED, G_MIXED, DDPNAS_MCN_2], ids=["strided", "mixed", "ddpnas"])
@pytest.mark.parametrize("policy", ["book", "authors"])
@pytest.mark.parametrize("binary", [True, False], ids=["1bit", "float"])
def test_network_forward_backward(genotype, policy, binary):
    torch.manual_seed(0)
    space = tiny_space(policy)
    net = Network(genotype, space, binary=binary)
    x = torch.randn(3, 1, 8, 8)
    out = _check_backward(net, x, expect_scale_grad=True)
    assert out.shape == (3, 5)
    convs = [m for m in net.modules() if isinstance(m, BinaryConv2d)]
    assert bool(convs) == binary
    if binary:
        real_act = [m for m in convs if not m.binary_act]
        if policy == "book":
            assert not real_act
        else:  # authors: depthwise and 1x1 preprocessing convs keep real activations
            assert real_act and all(m.groups == m.in_channels or m.kernel_size == 1 for m in real_act)
        # stem and classifier stay real-valued
        assert isinstance(net.stem.conv, torch.nn.Conv2d) and not isinstance(net.stem.conv, BinaryConv2d)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x))


def test_network_stage1_real_weights():
    from dcpnas.binary import set_binary_weights

    torch.manual_seed(0)
    net = Network(G_STRIDED, tiny_space(), binary=True)
    set_binary_weights(net, False)
    out = _check_backward(net, torch.randn(2, 1, 8, 8), expect_scale_grad=False)
    assert out.shape == (2, 5)
    assert all(m.scale.grad is None for m in net.modules() if isinstance(m, BinaryConv2d))


def test_network_rgb_and_bad_concat():
    torch.manual_seed(0)
    net = Network(DDPNAS_MCN_2, tiny_space(c_img=3, cells=4, channels=2), binary=True)
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    short = Genotype(DDPNAS_MCN_2.normal, (2, 3, 4), DDPNAS_MCN_2.reduce, (2, 3, 4, 5))
    with pytest.raises(GenotypeError, match="concat"):
        Network(short, tiny_space(), binary=True)


@pytest.mark.parametrize("policy", ["book", "authors"])
@pytest.mark.parametrize("binary", [True, False], ids=["child", "parent"])
def test_supernet_forward_backward(policy, binary):
    torch.manual_seed(0)
    space = tiny_space(policy, cells=3, channels=2)
    net = Supernet(space, binary=binary)
    assert net.alpha_normal.shape == (14, 8) and net.alpha_reduce.shape == (14, 8)
    assert len(net.cells[0].edges[0].ops) == len(PRIMITIVES)
    x = torch.randn(2, 1, 8, 8)
    out = _check_backward(net, x, expect_scale_grad=True)
    assert out.shape == (2, 5)
    assert net.alpha_normal.grad.abs().sum() > 0 and net.alpha_reduce.grad.abs().sum() > 0
    arch = {id(p) for p in net.arch_parameters()}
    assert not arch & {id(p) for p in net.weight_parameters()}
    assert len(net.weight_parameters()) + 2 == len(list(net.parameters()))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x, alphas=(net.alpha_normal, net.alpha_reduce)))
        other = net(x, alphas=(torch.zeros(14, 8), torch.randn(14, 8)))
        assert not torch.allclose(other, net(x))
    g = net.genotype().validate()
    assert len(g.normal) == 8


def test_supernet_functional_alphas_are_differentiable():
    torch.manual_seed(0)
    net = Supernet(tiny_space(cells=3, channels=2), binary=True)
    a_n = torch.zeros(14, 8, requires_grad=True)
    a_r = torch.zeros(14, 8, requires_grad=True)
    (g_n, g_r) = torch.autograd.grad(net(torch.randn(2, 1, 8, 8), alphas=(a_n, a_r)).sum(), (a_n, a_r))
    assert g_n.abs().sum() > 0 and g_r.abs().sum() > 0


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_shape(name, stride):
    torch.manual_seed(0)
    for binary in (True, False):
        op = make_op(name, 4, stride, binary, "book")
        x = torch.randn(2, 4, 6, 6, requires_grad=True)
        y = op(x)
        assert y.shape == (2, 4, 6 // stride, 6 // stride)
        y.sum().backward()
        if name != "none":
            assert x.grad is not None


def test_op_errors():
    with pytest.raises(ConfigError, match="unknown op"):
        make_op("conv_7x7", 4, 1, True)
    with pytest.raises(ConfigError, match="even channel count"):
        make_op("skip_connect", 3, 2, True)

"""The fp32 depthwise conv over a flat padded plane (compiler/conv_flat.py, taken by float_schedule.conv2d_nchw
for depthwise convs on AVX-512) against torch, with every epilogue part, and the rule that picks it; the dense
strided conv over phase planes (float_schedule.conv2d_nchw) likewise."""

import numpy as np
import pytest

from dcpnas.compiler import float_schedule as fs
from dcpnas.targets import get_target

X86 = get_target("x86-avx512").tvm
X86_AVX2 = get_target("x86-avx2").tvm

pytestmark = pytest.mark.tvm

# (channels, H, W, kernel, stride, dilation, pads): DARTS sep/dil convs at 28/14/7, stride 2, a non-square plane
# with asymmetric padding, a 7x7 kernel, no padding
CASES = [(8, 28, 28, 5, 1, 1, (2, 2, 2, 2)), (16, 14, 14, 3, 1, 2, (2, 2, 2, 2)), (12, 7, 7, 3, 1, 1, (1, 1, 1, 1)),
         (8, 28, 28, 3, 2, 1, (1, 1, 1, 1)), (6, 13, 21, 3, 1, 1, (1, 0, 2, 1)), (4, 9, 11, 7, 1, 1, (3, 3, 3, 3)),
         (5, 10, 10, 3, 2, 2, (0, 0, 0, 0))]


def _ids(c):
    return "c{}h{}w{}k{}s{}d{}p{}".format(*c[:6], "".join(map(str, c[6])))


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("parts", ["plain", "all"])
def test_flat_depthwise_matches_torch(case, parts):
    import torch
    import tvm

    from dcpnas.compiler.conv_flat import use_flat_depthwise
    from dcpnas.compiler.lowering import cpu_sched

    c, h, w, k, s, d, pads = case
    full = parts == "all"
    rng = np.random.default_rng(c * h + k)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    ins, ish = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    sc, bi = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    sl = rng.uniform(-0.3, 0.3, c).astype(np.float32)
    xt = torch.from_numpy(x * ins.reshape(1, -1, 1, 1) + ish.reshape(1, -1, 1, 1) if full else x)
    xt = torch.nn.functional.pad(xt, (pads[1], pads[3], pads[0], pads[2]))
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(wt), stride=s, dilation=d, groups=c).numpy()
    res = rng.standard_normal(ref.shape).astype(np.float32)
    if full:
        ref = ref * sc.reshape(1, -1, 1, 1) + bi.reshape(1, -1, 1, 1)
        ref = np.where(ref >= 0, ref, ref * sl.reshape(1, -1, 1, 1)) + res
    assert use_flat_depthwise(x.shape, wt.shape, c, cpu_sched(X86))
    f = fs.conv2d_nchw(x.shape, wt.shape, strides=(s, s), pads=pads, dilations=(d, d), group=c, name="dw",
                       cpu=cpu_sched(X86), in_affine=full, bias=full, prelu=full, residual=full)
    args = [x, wt] + ([ins, ish, sc, bi, sl, res] if full else []) + [np.zeros(ref.shape, np.float32)]
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
    tvm.compile(tvm.IRModule({"dw": f}), target=tvm.target.Target(X86)).jit()["dw"](*args)
    np.testing.assert_allclose(args[-1].numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_flat_depthwise_rule():
    from dcpnas.compiler.conv_flat import use_flat_depthwise
    from dcpnas.compiler.lowering import cpu_sched

    assert use_flat_depthwise((1, 32, 28, 28), (32, 1, 5, 5), 32, cpu_sched(X86))
    assert not use_flat_depthwise((1, 32, 28, 28), (32, 1, 5, 5), 32, cpu_sched(X86_AVX2))  # 8 lanes
    assert not use_flat_depthwise((1, 32, 28, 28), (32, 1, 5, 5), 32, None)  # unscheduled (GPU) form
    assert not use_flat_depthwise((1, 32, 28, 28), (32, 32, 1, 1), 1, cpu_sched(X86))  # dense
    assert not use_flat_depthwise((1, 32, 28, 28), (64, 1, 3, 3), 32, cpu_sched(X86))  # channel multiplier 2
    assert not use_flat_depthwise((1, 32, 3, 3), (32, 1, 3, 3), 32, cpu_sched(X86))  # 9 pixels: less than a vector


# (C_in, C_out, H, W, tile): the preprocessing 1x1 convs of DDPNAS_MCN_2 8x32 at 28/14/7, an odd plane with a
# shifted-back last vector, C_out with a smaller tile, two explicit tiles
POINTWISE = [(128, 32, 28, 28, None), (256, 64, 14, 14, None), (40, 12, 7, 7, None), (9, 6, 5, 13, None),
             (16, 8, 4, 4, (4, 4)), (24, 6, 9, 9, (6, 4))]


@pytest.mark.parametrize("case", POINTWISE, ids=lambda c: "ci{}co{}h{}w{}t{}".format(*c))
@pytest.mark.parametrize("parts", ["plain", "all"])
def test_flat_pointwise_matches_torch(case, parts):
    import torch
    import tvm

    from dcpnas.compiler.conv_flat import make_flat_pointwise, use_flat_pointwise
    from dcpnas.compiler.lowering import cpu_sched

    c, co, h, w, tile = case
    full = parts == "all"
    rng = np.random.default_rng(c + co)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((co, c, 1, 1)).astype(np.float32)
    ins, ish = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    sc, bi = rng.uniform(0.5, 2, co).astype(np.float32), rng.standard_normal(co).astype(np.float32)
    sl = rng.uniform(-0.3, 0.3, co).astype(np.float32)
    xt = torch.from_numpy(x * ins.reshape(1, -1, 1, 1) + ish.reshape(1, -1, 1, 1) if full else x)
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(wt)).numpy()
    res = rng.standard_normal(ref.shape).astype(np.float32)
    if full:
        ref = ref * sc.reshape(1, -1, 1, 1) + bi.reshape(1, -1, 1, 1)
        ref = np.where(ref >= 0, ref, ref * sl.reshape(1, -1, 1, 1)) + res
    assert use_flat_pointwise(x.shape, wt.shape, strides=(1, 1), pads=(0,) * 4, group=1, cpu=cpu_sched(X86))
    kw = dict(in_affine=full, bias=full, prelu=full, residual=full)
    f = (make_flat_pointwise(x.shape, wt.shape, tile=tile, **kw).with_attr("global_symbol", "pw") if tile else
         fs.conv2d_nchw(x.shape, wt.shape, strides=(1, 1), pads=(0,) * 4, dilations=(1, 1), group=1, name="pw",
                        cpu=cpu_sched(X86), **kw))
    args = [x, wt] + ([ins, ish, sc, bi, sl, res] if full else []) + [np.zeros(ref.shape, np.float32)]
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
    tvm.compile(tvm.IRModule({"pw": f}), target=tvm.target.Target(X86)).jit()["pw"](*args)
    np.testing.assert_allclose(args[-1].numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_flat_pointwise_rule():
    from dcpnas.compiler.conv_flat import use_flat_pointwise
    from dcpnas.compiler.lowering import cpu_sched

    cpu = cpu_sched(X86)
    kw = dict(strides=(1, 1), pads=(0,) * 4, group=1)
    assert use_flat_pointwise((1, 128, 28, 28), (32, 128, 1, 1), cpu=cpu, **kw)
    assert not use_flat_pointwise((1, 128, 28, 28), (32, 128, 1, 1), cpu=cpu_sched(X86_AVX2), **kw)
    assert not use_flat_pointwise((1, 128, 28, 28), (32, 128, 3, 3), cpu=cpu, **kw)  # 3x3
    assert not use_flat_pointwise((1, 128, 28, 28), (32, 128, 1, 1), cpu=cpu, strides=(2, 2), pads=(0,) * 4,
                                  group=1)  # strided: pixels not contiguous
    assert not use_flat_pointwise((1, 128, 28, 28), (32, 64, 1, 1), cpu=cpu, strides=(1, 1), pads=(0,) * 4,
                                  group=2)  # grouped
    assert not use_flat_pointwise((1, 128, 3, 3), (32, 128, 1, 1), cpu=cpu, **kw)  # 9 pixels


# (C_in, C_out, H, W, kernel, stride (h, w), pads, group): the imagenet stem's convs, odd planes, a 5x5 at stride 3,
# unequal strides, an unpadded 1x1 at stride 2 and a grouped conv
STRIDED = [(3, 24, 32, 32, 3, (2, 2), (1, 1, 1, 1), 1), (24, 16, 15, 17, 3, (2, 2), (1, 1, 1, 1), 1),
           (4, 6, 13, 11, 5, (3, 3), (2, 1, 2, 0), 1), (8, 8, 12, 10, 3, (2, 1), (1, 1, 1, 1), 1),
           (16, 8, 14, 14, 1, (2, 2), (0, 0, 0, 0), 1), (8, 8, 10, 10, 3, (2, 2), (1, 1, 1, 1), 2)]


@pytest.mark.parametrize("case", STRIDED, ids=lambda c: "ci{}co{}h{}w{}k{}s{}{}p{}g{}".format(
    *c[:5], *c[5], "".join(map(str, c[6])), c[7]))
@pytest.mark.parametrize("parts", ["plain", "all"])
def test_strided_conv_over_phase_planes_matches_torch(case, parts):
    import torch
    import tvm

    from dcpnas.compiler.lowering import cpu_sched

    ci, co, h, w, k, s, pads, g = case
    full = parts == "all"
    rng = np.random.default_rng(ci * h + k)
    x = rng.standard_normal((1, ci, h, w)).astype(np.float32)
    wt = rng.standard_normal((co, ci // g, k, k)).astype(np.float32)
    ins, ish = rng.uniform(0.5, 2, ci).astype(np.float32), rng.standard_normal(ci).astype(np.float32)
    sc, bi = rng.uniform(0.5, 2, co).astype(np.float32), rng.standard_normal(co).astype(np.float32)
    sl = rng.uniform(-0.3, 0.3, co).astype(np.float32)
    xt = torch.from_numpy(x * ins.reshape(1, -1, 1, 1) + ish.reshape(1, -1, 1, 1) if full else x)
    xt = torch.nn.functional.pad(xt, (pads[1], pads[3], pads[0], pads[2]))
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(wt), stride=s, groups=g).numpy()
    res = rng.standard_normal(ref.shape).astype(np.float32)
    if full:
        ref = ref * sc.reshape(1, -1, 1, 1) + bi.reshape(1, -1, 1, 1)
        ref = np.where(ref >= 0, ref, ref * sl.reshape(1, -1, 1, 1)) + res
    f = fs.conv2d_nchw(x.shape, wt.shape, strides=s, pads=pads, dilations=(1, 1), group=g, name="sconv",
                       cpu=cpu_sched(X86), in_affine=full, bias=full, prelu=full, residual=full)
    if k > 1:  # the phase planes (a strided 1x1 conv reads its input in place)
        assert f"pad = T.sblock_alloc_buffer((1, {ci}, {min(s[0], k)}, {min(s[1], k)}," in str(f)
    args = [x, wt] + ([ins, ish, sc, bi, sl, res] if full else []) + [np.zeros(ref.shape, np.float32)]
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
    tvm.compile(tvm.IRModule({"sconv": f}), target=tvm.target.Target(X86)).jit()["sconv"](*args)
    np.testing.assert_allclose(args[-1].numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())

"""Binary conv kernels (x86 build, run here) against the numpy reference and PyTorch's BinaryConv2d."""

import numpy as np
import pytest

from dcpnas.compiler.kernels import (BinaryConvAttrs, BinaryConvModule, binary_conv2d_reference,
                                     emit_binary_conv2d, pack_weights, unpack_weights)
from dcpnas.compiler.kernels.pack import border_correction, pack_activations_reference, weights_to_words
from dcpnas.errors import CompileError
from dcpnas.targets import get_target

X86 = get_target("x86-avx512").tvm
X86_AVX2 = get_target("x86-avx2").tvm


def _attrs(c, k, s=1, p=None, d=1, g=1):
    p = (d * (k - 1)) // 2 if p is None else p
    pads = p if isinstance(p, tuple) else (p, p, p, p)
    return BinaryConvAttrs((k, k), (s, s), pads, (d, d), g, c)


def _case(rng, n, c, h, w, co, attrs):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wf = rng.standard_normal((co, c // attrs.group) + attrs.kernel_shape).astype(np.float32)
    return x, pack_weights(wf)


def test_pack_weights_schema_and_roundtrip():
    w = np.array([[[[0.0]], [[-1.0]], [[2.0]], [[-0.5]], [[1]], [[1]], [[1]], [[1]], [[-3.0]]]], np.float32)
    b = pack_weights(w)  # [1, 2, 1, 1]: bit j of byte 0 = channel j, LSB first, 1 = negative
    assert b.dtype == np.uint8 and b.shape == (1, 2, 1, 1)
    assert b[0, :, 0, 0].tolist() == [0b00001010, 0b00000001]
    assert unpack_weights(b, 9)[0, :, 0, 0].tolist() == [1, -1, 1, -1, 1, 1, 1, 1, -1]


def test_reference_matches_direct_sum():
    rng = np.random.default_rng(1)
    attrs = _attrs(3, 3, s=2, p=(1, 0, 2, 1))
    x, wb = _case(rng, 1, 3, 5, 6, 2, attrs)
    a, wpm = np.where(x >= 0, 1, -1), unpack_weights(wb, 3)
    y = binary_conv2d_reference(x, wb, np.ones(2), None, attrs)
    oh, ow = attrs.out_hw(5, 6)
    for co in range(2):
        for oy in range(oh):
            for ox in range(ow):
                s = 0
                for i in range(3):
                    for j in range(3):
                        yy, xx = oy * 2 + i - 1, ox * 2 + j - 0
                        if 0 <= yy < 5 and 0 <= xx < 6:
                            s += int((a[0, :, yy, xx] * wpm[co, :, i, j]).sum())
                assert y[0, co, oy, ox] == s


def test_weights_to_words_masks_tail_bits():
    attrs = _attrs(3, 1)
    wb = np.full((4, 1, 1, 1), 0xFF, np.uint8)  # schema bits past C_in are set: must be ignored
    assert (weights_to_words(wb, attrs) == 0b111).all()
    ref = binary_conv2d_reference(np.ones((1, 3, 2, 2), np.float32), wb, np.ones(4), None, attrs)
    assert (ref == -3).all()


# awkward shapes from the issue: channels 3, 24, 40, 72, 130; spatial 1, 7, 15; stride 2 with dilation 2;
# 5x5; depthwise; groups; asymmetric pads
CASES = [
    # n, c, h, w, co, k, s, p, d, g
    (1, 3, 15, 15, 24, 3, 1, 1, 1, 1),
    (1, 24, 7, 7, 40, 3, 2, 1, 1, 1),
    (1, 40, 15, 15, 72, 3, 2, 2, 2, 1),
    (2, 72, 7, 7, 72, 5, 1, 2, 1, 1),
    (1, 130, 7, 7, 130, 3, 1, 1, 1, 1),
    (1, 130, 1, 1, 64, 3, 1, 1, 1, 1),
    (1, 64, 1, 1, 32, 1, 1, 0, 1, 1),
    (1, 72, 15, 15, 72, 3, 1, 1, 1, 72),
    (1, 40, 7, 7, 40, 5, 2, 2, 1, 40),
    (1, 24, 15, 15, 24, 3, 1, 2, 2, 24),
    (1, 48, 7, 7, 96, 3, 1, 1, 1, 2),
    (1, 130, 15, 15, 130, 1, 2, 0, 1, 1),
    (1, 64, 14, 14, 64, 3, 1, (0, 1, 2, 0), 1, 1),
    (1, 256, 7, 7, 512, 3, 1, 1, 1, 1),
    (1, 24, 9, 13, 32, 3, 2, 1, 1, 1),
    (1, 32, 5, 5, 16, 1, 1, 1, 1, 1),
    # unpadded: the pack's tasks are chunks of whole rows of the contiguous plane (2 images, 9x13, 40 channels)
    (2, 40, 9, 13, 32, 1, 1, 0, 1, 1),
    (1, 64, 28, 28, 64, 1, 1, 0, 1, 1),
    # the pointwise kernel (pixels in the lanes): 49 pixels (a shifted last block), exactly one vector, 3 images
    (1, 96, 7, 7, 36, 1, 1, 0, 1, 1),
    (3, 32, 4, 4, 8, 1, 1, 0, 1, 1),
    # the pixel-rows kernel (stride 1, rows of >= 16 outputs): a shifted last block (20 = 16 + 4), two images,
    # dilation 2, 5x5, asymmetric pads (4 column classes), a padded 1x1, 130 input channels (5 words, tail bits)
    (2, 40, 20, 20, 36, 3, 1, 1, 1, 1),
    (1, 24, 18, 33, 16, 3, 1, 2, 2, 1),
    (1, 64, 16, 16, 32, 5, 1, 2, 1, 1),
    (1, 32, 9, 17, 8, 3, 1, (0, 2, 1, 0), 1, 1),
    (1, 16, 6, 30, 10, 1, 1, 1, 1, 1),
    (1, 130, 16, 16, 64, 3, 1, 1, 1, 1),
]


# AVX2 (no VPOPCNTDQ): byte words with uint8 popcount sums where C_out per group is a multiple of 16
CASES_AVX2 = [(1, 40, 15, 15, 32, 3, 2, 2, 2, 1), (1, 130, 7, 7, 64, 3, 1, 1, 1, 1), (1, 48, 7, 7, 96, 3, 1, 1, 1, 3),
              (1, 24, 7, 7, 24, 3, 1, 1, 1, 24)]


@pytest.mark.tvm
@pytest.mark.parametrize("case,target", [(c, X86) for c in CASES] + [(c, X86_AVX2) for c in CASES_AVX2],
                         ids=lambda c: "n{}c{}h{}w{}co{}k{}s{}p{}d{}g{}".format(*c) if isinstance(c, tuple) else c["mcpu"])
def test_binary_conv_exact_vs_reference(case, target):
    n, c, h, w, co, k, s, p, d, g = case
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    attrs = _attrs(c, k, s, p, d, g)
    x, wb = _case(rng, n, c, h, w, co, attrs)
    ones, zeros = np.ones(co, np.float32), np.zeros(co, np.float32)
    m = BinaryConvModule(x.shape, wb, ones, zeros, attrs, target)
    assert m.geo.word_bits == (8 if target is X86_AVX2 and (co // g) % 16 == 0 else 32)
    # the pack kernel alone, bit-exact
    rt = m.runtime()
    import tvm

    xt = tvm.runtime.tensor(x, tvm.cpu())
    pt = tvm.runtime.tensor(np.zeros(m.geo.packed_shape, m.geo.word_dtype), tvm.cpu())
    rt["binpack"](xt, pt)
    np.testing.assert_array_equal(pt.numpy(), pack_activations_reference(x, attrs, word_bits=m.geo.word_bits))
    # pack + conv, integers (scale 1, bias 0), bit-exact
    y = m.run(x)
    ref = binary_conv2d_reference(x, wb, ones, zeros, attrs)
    assert y.shape == ref.shape
    np.testing.assert_array_equal(y, ref)


@pytest.mark.tvm
@pytest.mark.parametrize("target", [X86, X86_AVX2], ids=["avx512", "avx2"])
def test_fused_epilogue_affine_prelu(target):
    rng = np.random.default_rng(7)
    attrs = _attrs(40, 3, 1, 1, 1, 1)
    x, wb = _case(rng, 1, 40, 9, 9, 32, attrs)
    scale = rng.uniform(0.1, 2, 32).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    slope = rng.uniform(-0.5, 0.5, 32).astype(np.float32)
    s_in = rng.uniform(0.5, 2, 40).astype(np.float32) * rng.choice([-1, 1], 40).astype(np.float32)
    t_in = rng.standard_normal(40).astype(np.float32)
    m = BinaryConvModule(x.shape, wb, scale, bias, attrs, target, prelu=slope, in_affine=True)
    y = m.run(x, s_in, t_in)
    ref = binary_conv2d_reference(x, wb, scale, bias, attrs, in_scale=s_in, in_shift=t_in, prelu=slope)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.tvm
def test_matches_torch_binary_conv2d():
    """dcpnas.binary.BinaryConv2d (sign of input and weights, zero padding, beta) == kernel via emit (Relax)."""
    torch = pytest.importorskip("torch")
    import tvm
    from tvm import relax

    from dcpnas.binary import BinaryConv2d

    torch.manual_seed(0)
    cases = [(24, 40, 3, 2, 1, 1), (72, 72, 3, 1, 2, 72)]  # c_in, c_out, k, stride, dilation, groups
    for cin, cout, k, s, d, g in cases:
        mod = BinaryConv2d(cin, cout, k, stride=s, padding=d * (k // 2), dilation=d, groups=g).eval()
        x = torch.randn(1, cin, 11, 11)
        with torch.no_grad():
            want = mod(x).numpy()
        attrs = BinaryConvAttrs((k, k), (s, s), (d * (k // 2),) * 4, (d, d), g, cin)
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType((1, cin, 11, 11), "float32"))
        with bb.function("main", [xv]):
            with bb.dataflow():
                y = emit_binary_conv2d(bb, xv, pack_weights(mod.weight.detach().numpy()),
                                       mod.scale.detach().numpy(), None, attrs, X86)
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        ex = tvm.compile(bb.get(), target=tvm.target.Target(X86))
        vm = relax.VirtualMachine(ex, tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(x.numpy(), tvm.cpu())).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_border_correction_zero_without_padding():
    attrs = _attrs(16, 3, 1, 0)
    corr, ycls, xcls = border_correction(pack_weights(np.ones((8, 16, 3, 3), np.float32)), attrs, 5, 5)
    assert corr.shape == (1, 1, 1, 8) and (corr == 0).all() and (ycls == 0).all() and (xcls == 0).all()


def test_bad_shapes_raise_compile_error():
    with pytest.raises(CompileError):
        BinaryConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 3, 64)
    with pytest.raises(CompileError):
        unpack_weights(np.zeros((4, 3, 3, 3), np.uint8), 64)
    attrs = _attrs(8, 3, 1, 0)
    with pytest.raises(CompileError):
        binary_conv2d_reference(np.zeros((1, 8, 2, 2), np.float32), np.zeros((4, 1, 3, 3), np.uint8),
                                np.ones(4), None, attrs)


@pytest.mark.tvm
@pytest.mark.parametrize("case", [(3, 15, 24, 3, 1, 1, 1, 1), (40, 9, 72, 3, 2, 2, 2, 1), (72, 7, 72, 3, 1, 1, 1, 72),
                                  (64, 7, 32, 1, 1, 0, 1, 1)], ids=lambda c: "c{}h{}co{}k{}s{}p{}d{}g{}".format(*c))
def test_float_conv_matches_torch(case):
    """compiler/conv_module.py: one fp32 conv as the float twin compiles it (what benchmarks/kernels.py times)."""
    torch = pytest.importorskip("torch")
    from dcpnas.compiler.conv_module import FloatConvModule

    c, h, co, k, s, p, d, g = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, c, h, h)).astype(np.float32)
    w = rng.standard_normal((co, c // g, k, k)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    m = FloatConvModule(x.shape, w, b, X86, strides=(s, s), pads=(p,) * 4, dilations=(d, d), group=g)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), s, p, d, g).numpy()
    np.testing.assert_allclose(m.run(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.tvm
def test_tuning_records_roundtrip_and_tile_used(tmp_path):
    from dcpnas.compiler.kernels.binary_conv import ConvGeometry
    from dcpnas.compiler.kernels.tuning import candidate_tiles, load_records, lookup_tile, save_records, workload_key
    from dcpnas.errors import ArtifactError

    attrs = _attrs(64, 3)
    geo = ConvGeometry(1, 64, 7, 7, 64, attrs)
    tiles = candidate_tiles(geo, X86)
    assert ("channel", 16, 2, 7) in tiles and all(t[2] * t[3] <= 28 for t in tiles)
    save_records(X86, {workload_key(geo): {"tile": ["channel", 8, 4, 7], "ms": 1.0, "default_ms": 1.0}}, tmp_path)
    recs = load_records(X86, tmp_path)
    assert lookup_tile(recs, geo) == ("channel", 8, 4, 7)
    rng = np.random.default_rng(5)
    x, wb = _case(rng, 1, 64, 7, 7, 64, attrs)
    ones, zeros = np.ones(64, np.float32), np.zeros(64, np.float32)
    m = BinaryConvModule(x.shape, wb, ones, zeros, attrs, X86, records=recs)
    assert "T.vectorized(8)" in m.ir_module["binconv"].script()  # the recorded tile (fv=8) was applied, not fv=16
    np.testing.assert_array_equal(m.run(x), binary_conv2d_reference(x, wb, ones, zeros, attrs))
    (tmp_path / "x86-znver4.json").write_text('{"schema": "dcpnas.kernel_records/1", "entries": {"k": {"tile": [1]}}}')
    with pytest.raises(ArtifactError):
        load_records(X86, tmp_path)


@pytest.mark.tvm
def test_emit_two_chained_convs_with_affine():
    """Two different binary convs in one Relax function (PrimFunc names must not clash), the second with the
    BatchNorm affine before its sign; compared with the references applied in sequence."""
    import tvm
    from tvm import relax

    rng = np.random.default_rng(11)
    a1, a2 = _attrs(24, 3, 1, 1), _attrs(32, 1, 2, 0)
    x = rng.standard_normal((1, 24, 9, 9)).astype(np.float32)
    w1 = pack_weights(rng.standard_normal((32, 24, 3, 3)))
    w2 = pack_weights(rng.standard_normal((16, 32, 1, 1)))
    s_in = rng.uniform(0.5, 2, 32).astype(np.float32)
    t_in = np.round(rng.standard_normal(32)).astype(np.float32) + 0.25  # x' never exactly 0
    ones32, half32 = np.ones(32, np.float32), np.full(32, 0.5, np.float32)
    scale2 = rng.uniform(0.5, 2, 16).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y1 = emit_binary_conv2d(bb, xv, w1, ones32, half32, a1, X86)
            y2 = emit_binary_conv2d(bb, y1, w2, scale2, None, a2, X86, in_scale=s_in, in_shift=t_in)
            out = bb.emit_output(y2)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target(X86)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
    r1 = binary_conv2d_reference(x, w1, ones32, half32, a1)
    want = binary_conv2d_reference(r1, w2, scale2, None, a2, in_scale=s_in, in_shift=t_in)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.tvm
def test_rectangular_kernel_and_strides():
    rng = np.random.default_rng(13)
    attrs = BinaryConvAttrs((1, 3), (1, 2), (0, 1, 0, 1), (1, 2), 1, 20)
    x, wb = _case(rng, 1, 20, 6, 11, 16, attrs)
    ones, zeros = np.ones(16, np.float32), np.zeros(16, np.float32)
    m = BinaryConvModule(x.shape, wb, ones, zeros, attrs, X86)
    np.testing.assert_array_equal(m.run(x), binary_conv2d_reference(x, wb, ones, zeros, attrs))


@pytest.mark.tvm
def test_build_binary_conv_random_weights_runs_and_times():
    from dcpnas.compiler.kernels import build_binary_conv

    attrs = _attrs(32, 3)
    m = build_binary_conv((1, 32, 8, 8), 32, attrs, X86, prelu=True, in_affine=True)
    x = np.random.default_rng(0).standard_normal((1, 32, 8, 8)).astype(np.float32)
    s, t = np.ones(32, np.float32), np.zeros(32, np.float32)
    assert m.run(x, s, t).shape == (1, 32, 8, 8)
    ms = m.time_ms(x, number=2, repeat=2, in_scale=s, in_shift=t)
    assert set(ms) == {"binpack", "binconv"} and all(v > 0 for v in ms.values())


@pytest.mark.tvm
def test_pointwise_kernel_is_chosen_where_it_applies():
    """Dense unpadded stride-1 1x1 convs with >= 16 pixels and C_out % 4 == 0 take the pixels-in-lanes kernel
    (compiler/kernels/pointwise.py) on AVX-512; everything else keeps the channel-vector XNOR kernel."""
    from dcpnas.compiler.kernels.pointwise import use_pointwise_kernel
    from dcpnas.compiler.kernels.shapes import geometry

    def chosen(n, c, h, w, co, k, s, p, d, g, target=X86):
        attrs = _attrs(c, k, s, p, d, g)
        geo = geometry((n, c, h, w), np.zeros((co, -(-(c // g) // 8), k, k), np.uint8), attrs, target)
        return use_pointwise_kernel(geo, target)

    assert chosen(1, 64, 14, 14, 64, 1, 1, 0, 1, 1) and chosen(3, 32, 4, 4, 8, 1, 1, 0, 1, 1)
    assert not chosen(1, 64, 3, 5, 64, 1, 1, 0, 1, 1)  # 15 pixels: less than a vector
    assert not chosen(1, 64, 14, 14, 66, 1, 1, 0, 1, 1)  # C_out not a multiple of 4
    assert not chosen(1, 64, 14, 14, 64, 1, 2, 0, 1, 1) and not chosen(1, 64, 14, 14, 64, 1, 1, 1, 1, 1)
    assert not chosen(1, 64, 14, 14, 64, 3, 1, 1, 1, 1) and not chosen(1, 64, 14, 14, 64, 1, 1, 0, 1, 2)
    assert not chosen(1, 64, 14, 14, 64, 1, 1, 0, 1, 1, target=X86_AVX2)
    rng = np.random.default_rng(3)
    attrs = _attrs(64, 1, 1, 0, 1, 1)
    x, wb = _case(rng, 1, 64, 14, 14, 64, attrs)
    m = BinaryConvModule(x.shape, wb, np.ones(64, np.float32), np.zeros(64, np.float32), attrs, X86)
    assert 'sblock("popc' not in m.ir_module["binconv"].script()  # hand-written TIR, no TE blocks
    # `dcpnas tune` has no register tile to choose for it, and says so
    from dcpnas.compiler.kernels.binary_conv import ConvGeometry
    from dcpnas.compiler.kernels.tuning import tunable, tune_conv
    from dcpnas.errors import CompileError

    assert not tunable(m.geo, X86) and tunable(ConvGeometry(1, 64, 7, 7, 64, _attrs(64, 3)), X86)
    assert tunable(m.geo, X86_AVX2)
    with pytest.raises(CompileError, match="pointwise kernel"):
        tune_conv(m.geo, X86)


@pytest.mark.tvm
@pytest.mark.parametrize("k,h", [(3, 20), (1, 8)], ids=["pixel-rows", "pointwise"])
def test_unscheduled_module_of_a_pixels_in_lanes_conv(k, h):
    """BinaryConvModule(schedule=False) runs the TE functions ([N, G, Cog, OH, OW] output) also for the convs
    whose scheduled kernel writes NCHW."""
    rng = np.random.default_rng(5)
    attrs = _attrs(16, k)
    x, wb = _case(rng, 1, 16, h, h, 16, attrs)
    ones, zeros = np.ones(16, np.float32), np.zeros(16, np.float32)
    m = BinaryConvModule(x.shape, wb, ones, zeros, attrs, X86, schedule=False)
    np.testing.assert_array_equal(m.run(x), binary_conv2d_reference(x, wb, ones, zeros, attrs))


@pytest.mark.tvm
def test_pixel_rows_kernel_is_chosen_where_it_applies():
    """Ungrouped stride-1 convs with a kernel > 1x1 (or padding) and >= 16 output columns take the pixel-rows
    kernel (compiler/kernels/pixel_rows.py) on AVX-512; narrower rows, strides, groups and AVX2 do not."""
    from dcpnas.compiler.kernels.emit import conv_output_shape
    from dcpnas.compiler.kernels.pixel_rows import use_pixel_rows_kernel
    from dcpnas.compiler.kernels.shapes import geometry
    from dcpnas.compiler.kernels.tuning import tunable

    def geo(n, c, h, w, co, k, s, p, d, g, target=X86):
        return geometry((n, c, h, w), np.zeros((co, -(-(c // g) // 8), k, k), np.uint8), _attrs(c, k, s, p, d, g), target)

    assert use_pixel_rows_kernel(geo(1, 64, 56, 56, 64, 3, 1, 1, 1, 1), X86)
    assert use_pixel_rows_kernel(geo(1, 64, 16, 16, 64, 1, 1, 1, 1, 1), X86)  # a padded 1x1
    assert not use_pixel_rows_kernel(geo(1, 64, 14, 14, 64, 3, 1, 1, 1, 1), X86)  # 14 columns: channel form
    assert not use_pixel_rows_kernel(geo(1, 64, 56, 56, 64, 3, 2, 1, 1, 1), X86)  # stride 2
    assert not use_pixel_rows_kernel(geo(1, 64, 56, 56, 64, 3, 1, 1, 1, 2), X86)  # groups
    assert not use_pixel_rows_kernel(geo(1, 64, 56, 56, 64, 1, 1, 0, 1, 1), X86)  # the pointwise kernel's
    g = geo(1, 64, 28, 28, 64, 3, 1, 1, 1, 1, X86_AVX2)
    assert not use_pixel_rows_kernel(g, X86_AVX2) and tunable(g, X86_AVX2)
    g = geo(1, 64, 28, 28, 64, 3, 1, 1, 1, 1)
    assert conv_output_shape(g, X86) == g.out_shape and not tunable(g, X86)  # NCHW out, no register tile


@pytest.mark.tvm
@pytest.mark.parametrize("n,c,h,w,g,affine", [(1, 32, 28, 28, 1, True), (2, 40, 13, 11, 1, True), (1, 96, 14, 14, 1, False),
                                              (2, 16, 16, 9, 2, True), (1, 72, 4, 4, 1, True)])
def test_flat_pack_bit_exact(n, c, h, w, g, affine):
    """pack_flat.py (unpadded planes, AVX-512): bit for bit the TE pack, and the reference away from the
    threshold; whole and partial words, groups, planes of one vector, a tail shifted back, two images, with
    and without the affine before the sign."""
    import tvm

    from dcpnas.compiler.kernels.binary_conv import make_pack_func
    from dcpnas.compiler.kernels.emit import geometry
    from dcpnas.compiler.kernels.pack_flat import make_pack_flat, use_pack_flat
    from dcpnas.compiler.kernels.schedule_cpu import schedule_pack_cpu
    from dcpnas.compiler.kernels.targets import cpu_params

    attrs = _attrs(c, 1, 1, 0, 1, g)
    rng = np.random.default_rng(c + h)
    x, wb = _case(rng, n, c, h, w, 32 * g, attrs)
    geo = geometry(x.shape, wb, attrs, X86)
    assert use_pack_flat(geo, X86) and not use_pack_flat(geometry(x.shape, wb, attrs, X86_AVX2), X86_AVX2)
    s, t = rng.uniform(-2, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    x[0, :, 0, 0] = -t / s  # x*s + t about 0: LLVM fuses the multiply-add (one rounding; numpy rounds twice)

    def run(f):
        ex = tvm.compile(tvm.IRModule({"k": f.with_attr("global_symbol", "k")}), target=tvm.target.Target(X86))
        args = [x] + ([s, t] if affine else []) + [np.zeros(geo.packed_shape, np.uint32)]
        args = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
        ex.jit()["k"](*args)
        return args[-1].numpy()

    got = run(make_pack_flat(geo, affine))
    np.testing.assert_array_equal(got, run(schedule_pack_cpu(make_pack_func(geo, affine), geo, cpu_params(X86))))
    want = pack_activations_reference(x, attrs, s if affine else None, t if affine else None)
    np.testing.assert_array_equal(got[:, :, 1:], want[:, :, 1:])
    np.testing.assert_array_equal(got[1:], want[1:])


def test_flat_pack_rule():
    from dcpnas.compiler.kernels.emit import geometry
    from dcpnas.compiler.kernels.pack_flat import use_pack_flat

    def geo(h, p=0):
        attrs = _attrs(64, 3 if p else 1, 1, p, 1, 1)
        return geometry((1, 64, h, h), np.zeros((32, 8) + attrs.kernel_shape, np.uint8), attrs, X86)

    assert use_pack_flat(geo(28), X86) and use_pack_flat(geo(14), X86) and use_pack_flat(geo(4), X86)
    assert not use_pack_flat(geo(7), X86)  # 49 pixels in 4 vectors: the TE pack measured faster
    assert not use_pack_flat(geo(28, p=1), X86)  # padded planes: the TE pack with border words


@pytest.mark.tvm
def test_flat_pack_reads_the_parts_of_a_concat():
    """pack_flat with parts (a Concat's inputs, never concatenated): the words of the concatenation, bit for
    bit; parts that split a word, and an emitted conv on a list of parts equal to the conv on the Concat."""
    import tvm
    from tvm import relax

    from dcpnas.compiler.kernels.emit import geometry, packs_from_parts
    from dcpnas.compiler.kernels.pack_flat import make_pack_flat

    rng = np.random.default_rng(11)
    sizes = (20, 32, 12, 40)
    xs = [rng.standard_normal((2, c, 14, 14)).astype(np.float32) for c in sizes]
    x = np.concatenate(xs, axis=1)
    c = x.shape[1]
    attrs = _attrs(c, 1, 1, 0, 1, 1)
    wb = pack_weights(rng.standard_normal((64, c, 1, 1)))
    geo = geometry(x.shape, wb, attrs, X86)
    assert packs_from_parts(geo, X86)
    s, t = rng.uniform(-2, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)

    def run(f, inputs):
        ex = tvm.compile(tvm.IRModule({"k": f.with_attr("global_symbol", "k")}), target=tvm.target.Target(X86))
        args = [tvm.runtime.tensor(a, tvm.cpu()) for a in inputs + [s, t, np.zeros(geo.packed_shape, np.uint32)]]
        ex.jit()["k"](*args)
        return args[-1].numpy()

    np.testing.assert_array_equal(run(make_pack_flat(geo, True, parts=sizes), xs), run(make_pack_flat(geo, True), [x]))

    def emitted(split):
        bb = relax.BlockBuilder()
        vs = [relax.Var(f"x{k}", relax.TensorType(v.shape, "float32")) for k, v in enumerate(xs)]
        with bb.function("main", vs):
            with bb.dataflow():
                inp = vs if split else bb.emit(relax.op.concat(vs, axis=1))
                y = emit_binary_conv2d(bb, inp, wb, np.ones(64, np.float32), None, attrs, X86, in_scale=s, in_shift=t)
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target(X86)), tvm.cpu())
        return vm["main"](*[tvm.runtime.tensor(v, tvm.cpu()) for v in xs]).numpy()

    np.testing.assert_array_equal(emitted(True), emitted(False))


@pytest.mark.tvm
@pytest.mark.parametrize("n,c,h,w,s,offset,split", [(1, 64, 28, 28, 2, (1, 1), False), (2, 40, 13, 11, 2, (0, 0), True),
                                                    (1, 96, 14, 14, 2, (1, 0), True), (1, 64, 16, 16, 3, (0, 2), False)])
def test_strided_1x1_conv_gathers_its_pixels(n, c, h, w, s, offset, split):
    """A strided 1x1 binary conv (DARTS' FactorizedReduce) on x[:, :, r0:, c0:]: its pack gathers the pixels
    it reads from the unsliced x (or from a Concat's parts), and the conv runs at stride 1 over them; equal
    to the reference conv on the slice. An offset for a conv that cannot gather is refused."""
    import tvm
    from tvm import relax

    from dcpnas.compiler.kernels.emit import subsampled_geometry

    rng = np.random.default_rng(c + h + s)
    attrs = _attrs(c, 1, s, 0)
    x, wb = _case(rng, n, c, h, w, 64, attrs)
    geo = subsampled_geometry(x.shape, wb, attrs, X86, offset)
    assert geo is not None and geo.attrs.strides == (1, 1) and geo.out_shape == (n, 64) + attrs.out_hw(h - offset[0], w - offset[1])
    assert subsampled_geometry(x.shape, wb, attrs, X86_AVX2, offset) is None
    scale, bias = rng.uniform(0.5, 2, 64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    s_in = rng.uniform(0.5, 2, c).astype(np.float32)
    t_in = np.round(rng.standard_normal(c)).astype(np.float32) + 0.25
    xs = np.split(x, [c // 4, c // 2], axis=1) if split else [x]
    bb = relax.BlockBuilder()
    vs = [relax.Var(f"x{k}", relax.TensorType(v.shape, "float32")) for k, v in enumerate(xs)]
    with bb.function("main", vs):
        with bb.dataflow():
            y = emit_binary_conv2d(bb, vs if split else vs[0], wb, scale, bias, attrs, X86, in_scale=s_in,
                                   in_shift=t_in, offset=offset)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target(X86)), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(v, tvm.cpu()) for v in xs]).numpy()
    want = binary_conv2d_reference(np.ascontiguousarray(x[:, :, offset[0]:, offset[1]:]), wb, scale, bias, attrs,
                                   in_scale=s_in, in_shift=t_in)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    with pytest.raises(CompileError, match="cannot gather"):
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
        with bb.function("main", [xv]):
            emit_binary_conv2d(bb, xv, wb, scale, bias, _attrs(c, 3, s, 1), X86, offset=(1, 1))

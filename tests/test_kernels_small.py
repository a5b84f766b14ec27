"""The ±1 arithmetic kernel for binary convs with few channels per group (compiler/kernels/depthwise.py):
exact against binary_conv2d_reference and bit-identical to the XNOR-popcount kernel; x86 run here,
aarch64 under qemu, CUDA source generation (and a run where a GPU exists)."""

import shutil

import numpy as np
import pytest

from dcpnas.compiler.kernels import BinaryConvAttrs, BinaryConvModule, binary_conv2d_reference, pack_weights
from dcpnas.compiler.kernels.depthwise import Pm1ConvModule, use_pm1_kernel
from dcpnas.compiler.kernels.emit import geometry
from dcpnas.targets import get_target

X86 = get_target("x86-avx512").tvm
X86_AVX2 = get_target("x86-avx2").tvm
A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4}
SM80 = {"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
        "thread_warp_size": 32}

pytestmark = pytest.mark.tvm

# (channels, spatial, kernel, stride, dilation, C_out per group, C_in per group): every channel count
# (8, 16, 24, 130), spatial size (1, 7, 15, 28), kernel, stride and dilation appears; last two: 1x1 Cg > 1
CASES = [(8, 28, 3, 1, 1, 1, 1), (16, 15, 3, 2, 1, 1, 1), (24, 7, 5, 1, 2, 1, 1), (130, 7, 3, 1, 1, 1, 1),
         (8, 1, 3, 1, 1, 1, 1), (16, 28, 5, 2, 2, 1, 1), (24, 15, 3, 1, 2, 2, 1), (130, 1, 5, 2, 1, 1, 1),
         (8, 28, 1, 1, 1, 8, 8), (16, 15, 1, 2, 1, 4, 8),
         # DDPNAS_MCN_2 8x32 shapes: parallel chunks of several channels, each with one sign buffer (stride 2 too)
         (64, 14, 5, 1, 2, 1, 1), (64, 28, 3, 2, 1, 1, 1)]


def _problem(case, seed):
    c, h, k, s, d, cog, cg = case
    g = c // cg
    attrs = BinaryConvAttrs((k, k), (s, s), (d * (k // 2),) * 4, (d, d), g, c)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, c, h, h)).astype(np.float32)
    x[0, :, 0, 0] = 0.0  # sign(0) = +1
    wb = pack_weights(rng.standard_normal((g * cog, cg, k, k)))
    co = g * cog
    ep = dict(scale=rng.uniform(0.5, 2, co).astype(np.float32), bias=rng.standard_normal(co).astype(np.float32),
              prelu=rng.uniform(-0.3, 0.3, co).astype(np.float32))
    aff = dict(in_scale=rng.uniform(-2, 2, c).astype(np.float32), in_shift=rng.standard_normal(c).astype(np.float32))
    return attrs, x, wb, ep, aff


def _ids(c):
    return "c{}h{}k{}s{}d{}cog{}cg{}".format(*c)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_x86_integer_exact_and_epilogue(case):
    attrs, x, wb, ep, aff = _problem(case, 0)
    co = wb.shape[0]
    ones, zeros = np.ones(co, np.float32), np.zeros(co, np.float32)
    m = Pm1ConvModule(x.shape, wb, ones, zeros, attrs, X86, in_affine=True)
    got = m.run(x, **aff)
    want = binary_conv2d_reference(x, wb, ones, zeros, attrs, **aff)
    np.testing.assert_array_equal(got, want)
    assert np.abs(want).max() > 0
    m = Pm1ConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, X86, prelu=ep["prelu"], in_affine=True)
    got = m.run(x, **aff)
    want = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs, prelu=ep["prelu"], **aff)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("case", [CASES[0], CASES[5]], ids=_ids)
def test_bit_identical_to_xnor_kernel(case):
    """Same epilogue expression on the same exact integer: the two lowerings agree bit for bit."""
    attrs, x, wb, ep, aff = _problem(case, 1)
    for tgt in (X86, X86_AVX2):
        a = Pm1ConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, tgt, prelu=ep["prelu"], in_affine=True)
        b = BinaryConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, tgt, prelu=ep["prelu"], in_affine=True)
        np.testing.assert_array_equal(a.run(x, **aff), b.run(x, **aff))


def test_without_affine_and_prelu():
    attrs, x, wb, ep, _ = _problem(CASES[1], 2)
    m = Pm1ConvModule(x.shape, wb, ep["scale"], None, attrs, X86)
    want = binary_conv2d_reference(x, wb, ep["scale"], None, attrs)
    np.testing.assert_allclose(m.run(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_routing_rule():
    def geo(c, k, g, co):
        attrs = BinaryConvAttrs((k, k), (1, 1), (k // 2,) * 4, (1, 1), g, c)
        return geometry((1, c, 8, 8), np.zeros((co, -(-(c // g) // 8), k, k), np.uint8), attrs)

    assert use_pm1_kernel(geo(8, 3, 8, 8)) and use_pm1_kernel(geo(130, 5, 130, 130))  # depthwise
    assert use_pm1_kernel(geo(8, 1, 1, 8))  # small pointwise
    assert not use_pm1_kernel(geo(32, 1, 1, 32)) and not use_pm1_kernel(geo(4, 3, 1, 8))
    assert not use_pm1_kernel(geo(64, 3, 1, 64))


def test_flat_kernel_routing_rule():
    """Depthwise planes of >= MIN_OUTPUTS outputs on AVX-512 take the int8 flat kernel (depthwise_flat.py)."""
    from dcpnas.compiler.kernels.depthwise_flat import use_flat_kernel

    def geo(c, h, k, s, cg=1, cog=1, target=X86):
        attrs = BinaryConvAttrs((k, k), (s, s), (k // 2,) * 4, (1, 1), c // cg, c)
        return geometry((1, c, h, h), np.zeros((c // cg * cog, -(-cg // 8), k, k), np.uint8), attrs, target)

    assert use_flat_kernel(geo(32, 28, 5, 1), X86) and use_flat_kernel(geo(64, 28, 3, 2), X86)  # 14x14 out
    assert use_flat_kernel(geo(128, 8, 3, 1), X86) and use_flat_kernel(geo(128, 14, 5, 2), X86)  # 7x7 out
    assert not use_flat_kernel(geo(128, 7, 3, 1), X86)  # 7x7 3x3: depthwise.py measured faster
    assert not use_flat_kernel(geo(32, 28, 3, 1, target=X86_AVX2), X86_AVX2)  # needs AVX-512 byte lanes
    assert not use_flat_kernel(geo(32, 28, 3, 1, target=A72), A72)
    assert not use_flat_kernel(geo(32, 28, 1, 1, cg=8), X86) and not use_flat_kernel(geo(16, 28, 3, 1, cog=2), X86)
    assert not use_flat_kernel(geo(8, 28, 13, 1), X86)  # 169 taps: byte sums could overflow


@pytest.mark.parametrize("pads,stride,dil,k", [((1, 0, 2, 1), 1, 1, 3), ((2, 2, 2, 2), 2, 2, 3), ((3, 3, 3, 3), 1, 1, 7),
                                               ((0, 0, 0, 0), 2, 1, 5)])
def test_flat_kernel_exact_and_bit_identical_to_float_form(pads, stride, dil, k):
    """Two images, a non-square plane, asymmetric padding, two fused residuals: the flat kernel equals the
    reference, and bit for bit the float-lane schedule of depthwise.py on the same conv."""
    from dcpnas.compiler.kernels.depthwise import float_lanes_func
    from dcpnas.compiler.kernels.depthwise_flat import make_flat_func, use_flat_kernel

    c, rng = 12, np.random.default_rng(7)
    attrs = BinaryConvAttrs((k, k), (stride, stride), pads, (dil, dil), c, c)
    x = rng.standard_normal((2, c, 23, 30)).astype(np.float32)
    x[:, :, 3, 4] = 0.0  # sign(0) = +1
    wb = pack_weights(rng.standard_normal((c, 1, k, k)))
    geo = geometry(x.shape, wb, attrs, X86)
    assert use_flat_kernel(geo, X86)
    aff = dict(in_scale=rng.uniform(-2, 2, c).astype(np.float32), in_shift=rng.standard_normal(c).astype(np.float32))
    ep = dict(scale=rng.uniform(0.5, 2, c).astype(np.float32), bias=rng.standard_normal(c).astype(np.float32),
              prelu=rng.uniform(-0.3, 0.3, c).astype(np.float32))
    res = [rng.standard_normal(geo.out_shape).astype(np.float32) for _ in range(2)]
    m = Pm1ConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, X86, prelu=ep["prelu"], in_affine=True)
    args = m.arrays(x, **aff)
    args = args[:-1] + res + args[-1:]

    def run(f):
        import tvm

        ex = tvm.compile(tvm.IRModule({"k": f.with_attr("global_symbol", "k")}), target=tvm.target.Target(X86))
        t = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
        ex.jit()["k"](*t)
        return t[-1].numpy()

    flat = run(make_flat_func(geo, True, True, residual=2))
    lanes = run(float_lanes_func(geo, X86, affine=True, prelu=True, residual=2))
    np.testing.assert_array_equal(flat, lanes)
    want = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs, prelu=ep["prelu"], **aff) + res[0] + res[1]
    np.testing.assert_allclose(flat, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_emit_uses_one_kernel_for_depthwise_and_runs_exact():
    import tvm
    from tvm import relax

    from dcpnas.compiler.kernels import emit_binary_conv2d

    attrs, x, wb, ep, aff = _problem(CASES[2], 3)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            y = emit_binary_conv2d(bb, xv, wb, ep["scale"], ep["bias"], attrs, X86, prelu=ep["prelu"], **aff)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    names = [gv.name_hint for gv in mod.functions if gv.name_hint != "main"]
    assert names == ["dcpnas_binary_pm1conv"], names
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(X86)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
    want = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs, prelu=ep["prelu"], **aff)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.arm
@pytest.mark.parametrize("case", [CASES[6], CASES[8]], ids=_ids)
def test_a72_under_qemu_exact(case, tmp_path):
    from dcpnas.compiler.kernels import arm_emu

    why = arm_emu.missing()
    if why:
        pytest.skip(why)
    attrs, x, wb, ep, aff = _problem(case, 4)
    m = Pm1ConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, A72, prelu=ep["prelu"], in_affine=True)
    lib = m.export(tmp_path / "pm1.so", arm_emu.CROSS_CC)
    arrays = m.arrays(x, **aff)
    out, _ = arm_emu.run_library(lib, arrays, [("pm1conv", list(range(len(arrays))))], len(arrays) - 1)
    want = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs, prelu=ep["prelu"], **aff)
    np.testing.assert_allclose(out.reshape(want.shape), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.cuda
def test_cuda_codegen_and_gpu_run():
    import tvm

    attrs, x, wb, ep, aff = _problem(CASES[3], 5)
    m = Pm1ConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, SM80, prelu=ep["prelu"], in_affine=True)
    src = m.executable.mod.imports[0].inspect_source("cuda")
    assert "blockIdx.x" in src and "threadIdx.x" in src
    if shutil.which("nvcc") is not None:
        from tvm.support import nvcc

        with m.target:
            ptx = nvcc.compile_cuda(src, target_format="ptx", arch="sm_80", compiler="nvcc")
        ptx = bytes(ptx).decode() if not isinstance(ptx, str) else ptx
        assert ".entry" in ptx
    if not tvm.cuda(0).exist:
        pytest.skip("no CUDA GPU on this machine (source and PTX checked)")
    want = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs, prelu=ep["prelu"], **aff)
    np.testing.assert_allclose(m.run(x, **aff), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("n,c,h,k,s,d,prelu,pack_affine", [(1, 32, 28, 3, 1, 1, True, True), (1, 64, 14, 5, 1, 2, True, True),
                                                           (1, 128, 7, 3, 1, 1, True, True),
                                                           (2, 40, 16, 3, 2, 1, False, True), (1, 36, 12, 5, 1, 1, True, False)])
def test_packed_epilogue_bit_identical_to_flat_then_pack(n, c, h, k, s, d, prelu, pack_affine):
    """depthwise_flat's packed epilogue (the words of the next 1x1 binary conv's input, decided on the integer
    tap sums by sign_table's intervals) equals, bit for bit, the flat kernel's float output packed by the
    pack kernel that conv would run (away from ties at the threshold); whole and partial words,
    half-word tasks (one image, one or two words), two images, stride 2, with and without PReLU and the
    next conv's threshold."""
    import tvm

    from dcpnas.compiler.kernels.depthwise import pm1_weights
    from dcpnas.compiler.kernels.depthwise_flat import make_flat_func, make_packed_func, packed_shape, sign_table
    from dcpnas.compiler.kernels.emit import cpu_pack_func, packed_epilogue_geometry
    from dcpnas.compiler.kernels.pack import pack_activations_reference

    rng = np.random.default_rng(c + h)
    attrs = BinaryConvAttrs((k, k), (s, s), (d * (k // 2),) * 4, (d, d), c, c)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    wb = pack_weights(rng.standard_normal((c, 1, k, k)))
    geo = geometry(x.shape, wb, attrs, X86)
    nxt_attrs = BinaryConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, c)
    nxt = packed_epilogue_geometry(geo, pack_weights(rng.standard_normal((16, c, 1, 1))), nxt_attrs, X86)
    assert nxt is not None and nxt.packed_shape == packed_shape(geo)
    vec = lambda lo, hi: rng.uniform(lo, hi, c).astype(np.float32)  # noqa: E731
    head = [x, vec(-2, 2), vec(-1, 1), pm1_weights(wb, geo), vec(0.5, 2), vec(-1, 1)] + ([vec(-0.3, 0.3)] if prelu else [])
    pack_aff = [vec(-2, 2), vec(-1, 1)] if pack_affine else []

    def run(f, args):
        ex = tvm.compile(tvm.IRModule({"k": f.with_attr("global_symbol", "k")}), target=tvm.target.Target(X86))
        t = [tvm.runtime.tensor(a, tvm.cpu()) for a in args]
        ex.jit()["k"](*t)
        return t[-1].numpy()

    y = run(make_flat_func(geo, True, prelu), head + [np.zeros(geo.out_shape, np.float32)])
    want = run(cpu_pack_func(nxt, X86, pack_affine), [y] + pack_aff + [np.zeros(nxt.packed_shape, np.uint32)])
    table = sign_table(*head[4:6], head[6] if prelu else None, *(pack_aff or [None, None]), k * k)
    got = run(make_packed_func(geo, True), head[:4] + list(table) + [np.zeros(nxt.packed_shape, np.uint32)])
    np.testing.assert_array_equal(got, want)
    ref = pack_activations_reference(y, nxt_attrs, *(pack_aff or [None, None]))
    assert (got != ref).mean() < 1e-3  # the reference rounds the multiply-add twice (LLVM fuses it)


def test_packed_epilogue_rule():
    """The packed epilogue needs AVX-512, planes of >= PACKED_MIN_WORK taps x pixels and an unpadded
    ungrouped XNOR conv after it (not a small 1x1 on the ±1 kernel)."""
    from dcpnas.compiler.kernels.emit import packed_epilogue_geometry

    def case(c, h, k=3, s=1, nxt=None, target=X86, co=32):
        attrs = BinaryConvAttrs((k, k), (s, s), (k // 2,) * 4, (1, 1), c, c)
        geo = geometry((1, c, h, h), np.zeros((c, 1, k, k), np.uint8), attrs, target)
        nxt = nxt or BinaryConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, c)
        w = np.zeros((co, -(-nxt.channels_per_group // 8)) + nxt.kernel_shape, np.uint8)
        return packed_epilogue_geometry(geo, w, nxt, target) is not None

    assert case(32, 28) and case(64, 14, 5) and case(64, 28, 3, 2) and case(128, 7, 5) and case(128, 7, 3)
    assert not case(256, 4, 3)  # 4x4 3x3: depthwise.py + the pack measured faster
    assert not case(32, 28, target=X86_AVX2)  # no flat kernel
    assert not case(32, 28, nxt=BinaryConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 32))  # padded next conv
    assert not case(32, 28, nxt=BinaryConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 4, 32))  # grouped
    assert not case(8, 28, co=8)  # the next 1x1 runs on the ±1 kernel: it reads floats


def test_emitted_chain_with_packed_epilogue_equals_unfused():
    """emit_pm1_packed + emit_binary_conv2d(Packed) in a Relax module: the same outputs as the unfused
    depthwise -> pack -> XNOR chain, with one kernel fewer."""
    import tvm
    from tvm import relax

    from dcpnas.compiler.kernels import emit_binary_conv2d
    from dcpnas.compiler.kernels.emit import emit_pm1_packed

    rng = np.random.default_rng(5)
    c = 32
    dw = BinaryConvAttrs((5, 5), (1, 1), (2, 2, 2, 2), (1, 1), c, c)
    pw = BinaryConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, c)
    x = rng.standard_normal((1, c, 28, 28)).astype(np.float32)
    w1, w2 = pack_weights(rng.standard_normal((c, 1, 5, 5))), pack_weights(rng.standard_normal((48, c, 1, 1)))
    one, t1, t2 = np.ones(c, np.float32), 0.1 * rng.standard_normal(c).astype(np.float32), 0.1 * rng.standard_normal(c).astype(np.float32)
    s1, b1, sl = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32), rng.uniform(-0.3, 0.3, c).astype(np.float32)
    s2, b2 = rng.uniform(0.5, 2, 48).astype(np.float32), rng.standard_normal(48).astype(np.float32)

    def run(fused):
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
        with bb.function("main", [xv]):
            with bb.dataflow():
                if fused:
                    p = emit_pm1_packed(bb, xv, w1, s1, b1, dw, X86, in_scale=one, in_shift=-t1, prelu=sl,
                                        pack_scale=one, pack_shift=-t2)
                    y = emit_binary_conv2d(bb, p, w2, s2, b2, pw, X86)
                else:
                    y1 = emit_binary_conv2d(bb, xv, w1, s1, b1, dw, X86, in_scale=one, in_shift=-t1, prelu=sl)
                    y = emit_binary_conv2d(bb, y1, w2, s2, b2, pw, X86, in_scale=one, in_shift=-t2)
                out = bb.emit_output(y)
            bb.emit_func_output(out)
        mod = bb.get()
        vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(X86)), tvm.cpu())
        return len(mod.functions), vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()

    (n_fused, got), (n_plain, want) = run(True), run(False)
    assert n_fused == n_plain - 1
    np.testing.assert_array_equal(got, want)


def test_sign_table_intervals():
    """sign_table: the tap sums whose epilogue value is negative, as one interval or (a negative PReLU slope
    and a negative scale after it) an interval's complement; checked against the float32 epilogue itself."""
    from dcpnas.compiler.kernels.depthwise_flat import sign_table

    rng = np.random.default_rng(3)
    c, taps = 64, 25
    args = [rng.uniform(-2, 2, c), rng.uniform(-3, 3, c), rng.uniform(-1, 1, c), rng.uniform(-2, 2, c), rng.uniform(-2, 2, c)]
    args = [a.astype(np.float32) for a in args]
    lo, hi, flip = sign_table(*args, taps)
    assert flip.any() and not flip.all()
    a = np.arange(-taps, taps + 1, dtype=np.float32)[None, :]
    o = args[0][:, None] * a + args[1][:, None]
    o = np.where(o >= 0, o, o * args[2][:, None]) * args[3][:, None] + args[4][:, None]
    got = ((a >= lo[:, None]) & (a <= hi[:, None])) != flip[:, None].astype(bool)
    np.testing.assert_array_equal(got, o < 0)
    lo, hi, flip = sign_table(np.ones(2, np.float32), np.array([100, -100], np.float32), None, None, None, 9)
    assert (lo[0], hi[0], flip[0]) == (127, -128, 0) and (lo[1], hi[1], flip[1]) == (-9, 9, 0)  # never, always

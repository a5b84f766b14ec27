"""The pools of the float ops (compiler/float_schedule.pool2d_nchw: window reduced at stride 1 along W, every
sw-th column kept; row tiles) against their numpy reference, scheduled for x86 and unscheduled (the GPU form)."""

import numpy as np
import pytest

from dcpnas.compiler import float_schedule as fs
from dcpnas.targets import get_target

X86 = get_target("x86-avx512").tvm
X86_AVX2 = get_target("x86-avx2").tvm

pytestmark = pytest.mark.tvm

# (kind, C, H, W, kernel, stride, pads, count_include_pad): the DARTS pools at 28/14/7 (stride 1 and 2), odd
# sizes, rectangular windows, asymmetric pads, no padding, and a window as large as the image
CASES = [("max", 32, 28, 28, 3, 1, (1, 1, 1, 1), False), ("avg", 32, 28, 28, 3, 1, (1, 1, 1, 1), False),
         ("max", 64, 28, 28, 3, 2, (1, 1, 1, 1), False), ("avg", 16, 14, 14, 3, 2, (1, 1, 1, 1), True),
         ("avg", 8, 15, 13, 3, 2, (1, 1, 1, 1), False), ("max", 128, 7, 7, 3, 1, (1, 1, 1, 1), False),
         ("avg", 4, 9, 11, (2, 3), (2, 3), (0, 1, 1, 0), False), ("max", 3, 6, 6, 2, 2, (0, 0, 0, 0), False),
         ("avg", 5, 5, 5, 5, 1, (0, 0, 0, 0), True), ("max", 2, 1, 1, 3, 2, (1, 1, 1, 1), False)]


def _ids(c):
    k = c[4] if isinstance(c[4], tuple) else (c[4], c[4])
    s = c[5] if isinstance(c[5], tuple) else (c[5], c[5])
    return f"{c[0]}-c{c[1]}h{c[2]}w{c[3]}k{k[0]}x{k[1]}s{s[0]}x{s[1]}p{''.join(map(str, c[6]))}{'-cip' if c[7] else ''}"


def _run(case, target, residual, schedule=True):
    import tvm

    from dcpnas.compiler.lowering import cpu_sched

    kind, c, h, w, k, s, pads, cip = case
    k = k if isinstance(k, tuple) else (k, k)
    s = s if isinstance(s, tuple) else (s, s)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    oh, ow = (h + pads[0] + pads[2] - k[0]) // s[0] + 1, (w + pads[1] + pads[3] - k[1]) // s[1] + 1
    res = rng.standard_normal((1, c, oh, ow)).astype(np.float32) if residual else None
    f = fs.pool2d_nchw(x.shape, kind=kind, kernel=k, strides=s, pads=pads, count_include_pad=cip, name="pool",
                       cpu=cpu_sched(target) if schedule else None, residual=residual)
    tgt = tvm.target.Target(target)
    with tgt:
        if not schedule:  # the GPU form, scheduled nowhere: the default CPU lowering runs it as it is
            f = f.with_attr("tir.is_scheduled", True)
        rt = tvm.compile(tvm.IRModule({"pool": f}), target=tgt).jit()
    arrays = [x] + ([res] if residual else []) + [np.zeros((1, c, oh, ow), np.float32)]
    args = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    rt["pool"](*args)
    want = fs.pool2d_reference(x, kind=kind, kernel=k, strides=s, pads=pads, count_include_pad=cip, res=res)
    return args[-1].numpy(), want


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_pool_matches_reference(case):
    got, want = _run(case, X86, residual=False)
    if case[0] == "max":
        np.testing.assert_array_equal(got, want)  # a max is exact
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# stride-1 pools over planes >= 14x14 on AVX-512 take compiler/pool_flat.py (separable, flat padded plane)
FLAT_CASES = [("avg", 8, 15, 21, (3, 5), 1, (1, 2, 2, 0), False), ("avg", 4, 14, 14, 3, 1, (1, 1, 1, 1), True),
              ("max", 6, 16, 20, (2, 3), 1, (0, 1, 1, 0), False), ("max", 3, 28, 28, 3, 1, (1, 1, 1, 1), False)]


@pytest.mark.parametrize("case", FLAT_CASES, ids=_ids)
@pytest.mark.parametrize("residual", [False, True])
def test_flat_pool_matches_reference(case, residual):
    from dcpnas.compiler.lowering import cpu_sched
    from dcpnas.compiler.pool_flat import use_flat_pool

    kind, c, h, w, k, s = case[:6]
    k = k if isinstance(k, tuple) else (k, k)
    assert use_flat_pool((1, c, h, w), k, (s, s), cpu_sched(X86))
    assert not use_flat_pool((1, c, h, w), k, (s, s), cpu_sched(X86_AVX2))
    got, want = _run(case, X86, residual=residual)
    if kind == "max" and not residual:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_flat_pool_rule():
    from dcpnas.compiler.lowering import cpu_sched
    from dcpnas.compiler.pool_flat import use_flat_pool

    cpu = cpu_sched(X86)
    assert use_flat_pool((1, 32, 28, 28), (3, 3), (1, 1), cpu)
    assert not use_flat_pool((1, 32, 28, 28), (3, 3), (2, 2), cpu)  # strided: pool2d_nchw
    assert not use_flat_pool((1, 128, 7, 7), (3, 3), (1, 1), cpu)  # 7x7: pool2d_nchw measured faster
    assert not use_flat_pool((1, 32, 28, 28), (3, 3), (1, 1), None)  # unscheduled (GPU) form


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[4]], ids=_ids)
def test_pool_with_residual_and_avx2(case):
    got, want = _run(case, X86_AVX2, residual=True)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=_ids)
def test_unscheduled_form_matches_reference(case):
    got, want = _run(case, X86, residual=True, schedule=False)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_reference_matches_a_direct_loop():
    """The reference against a direct per-element loop (padding as -inf / excluded taps)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    got = fs.pool2d_reference(x, kind="max", kernel=(3, 3), strides=(2, 1), pads=(1, 1, 1, 1))
    assert got.shape == (1, 2, 3, 4)
    for c in range(2):
        for i in range(3):
            for j in range(4):
                taps = [x[0, c, y, xx] for y in range(2 * i - 1, 2 * i + 2) for xx in range(j - 1, j + 2)
                        if 0 <= y < 5 and 0 <= xx < 4]
                assert got[0, c, i, j] == max(taps)
    avg = fs.pool2d_reference(x, kind="avg", kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), count_include_pad=True)
    assert np.isclose(avg[0, 0, 0, 0], x[0, 0, :2, :2].sum() / 9)


def test_chunking_when_one_task_buffer_exceeds_the_cap():
    """A 224x224-input network's pools have task buffers above CHUNK_BUFFER_BYTES: one task per chunk, not an
    error (benchmarks/deploy.py's 14x48 row failed here)."""
    from dcpnas.compiler.kernels.schedule_cpu import CHUNK_BUFFER_BYTES, tasks_per_chunk

    assert tasks_per_chunk(96, task_bytes=2 * CHUNK_BUFFER_BYTES) == 1
    assert tasks_per_chunk(96, task_bytes=0) == 12 and tasks_per_chunk(7) == 1
    assert tasks_per_chunk(96, task_bytes=CHUNK_BUFFER_BYTES // 4) == 4
    got, want = _run(("max", 2, 112, 112, 3, 2, (1, 1, 1, 1), False), X86, residual=False)
    np.testing.assert_array_equal(got, want)

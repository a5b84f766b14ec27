"""aarch64 (Cortex-A72) binary conv: NEON `cnt` in the assembly; exact results under qemu-user."""

import numpy as np
import pytest

from dcpnas.compiler.kernels import BinaryConvAttrs, BinaryConvModule, binary_conv2d_reference, pack_weights
from dcpnas.compiler.kernels import arm_emu

A72 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 4}

pytestmark = [pytest.mark.arm, pytest.mark.tvm]


def _module(rng, n, c, h, co, k, s, p, d, g, prelu=False):
    attrs = BinaryConvAttrs((k, k), (s, s), (p,) * 4, (d, d), g, c)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    wb = pack_weights(rng.standard_normal((co, c // g, k, k)))
    scale = rng.uniform(0.5, 2, co).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    slope = rng.uniform(-0.3, 0.3, co).astype(np.float32) if prelu else None
    m = BinaryConvModule(x.shape, wb, scale, bias, attrs, A72, prelu=slope)
    ref = binary_conv2d_reference(x, wb, scale, bias, attrs, prelu=slope)
    return m, x, ref


def test_a72_assembly_uses_neon_cnt():
    m, _, _ = _module(np.random.default_rng(0), 1, 64, 7, 64, 3, 1, 1, 1, 1)
    asm = m.executable.mod.inspect_source("asm")
    lines = [ln.strip() for ln in asm.splitlines()]
    assert any(ln.startswith("cnt\tv") for ln in lines), "no NEON cnt in the aarch64 assembly"
    assert any(ln.startswith(("uaddlp", "uadalp")) for ln in lines)


CASES = [(1, 64, 7, 64, 3, 1, 1, 1, 1, False), (1, 40, 9, 24, 3, 2, 2, 2, 1, True),
         (1, 72, 7, 72, 3, 1, 1, 1, 72, False), (1, 130, 5, 130, 1, 1, 0, 1, 1, True)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "c{1}h{2}co{3}k{4}s{5}d{7}g{8}".format(*c))
def test_a72_library_under_qemu_exact(case, tmp_path):
    why = arm_emu.missing()
    if why:
        pytest.skip(why)
    m, x, ref = _module(np.random.default_rng(1), *case)
    y, _ = arm_emu.run_binary_conv(m, x, tmp_path)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_a72_integer_exact_under_qemu(tmp_path):
    why = arm_emu.missing()
    if why:
        pytest.skip(why)
    rng = np.random.default_rng(2)
    attrs = BinaryConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 256)
    x = rng.standard_normal((1, 256, 7, 7)).astype(np.float32)
    wb = pack_weights(rng.standard_normal((256, 256, 3, 3)))
    ones, zeros = np.ones(256, np.float32), np.zeros(256, np.float32)
    m = BinaryConvModule(x.shape, wb, ones, zeros, attrs, A72)
    y, _ = arm_emu.run_binary_conv(m, x, tmp_path)
    np.testing.assert_array_equal(y, binary_conv2d_reference(x, wb, ones, zeros, attrs))

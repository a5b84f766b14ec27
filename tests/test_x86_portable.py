"""The built-in x86 targets build code that runs on every CPU of their class, AMD or Intel.

LLVM emits AMD-only SSE4A (`insertq`/`extrq`) for mcpu znver*: such a library dies with SIGILL on an Intel
CPU that has the same AVX-512 features. The targets keep the Zen scheduling model and turn SSE4A off."""

import shutil
import subprocess

import numpy as np
import pytest

from dcpnas.compiler.kernels import BinaryConvAttrs, BinaryConvModule, pack_weights
from dcpnas.targets import get_target

AMD_ONLY = ("insertq", "extrq", "clzero", "mwaitx", "monitorx", "rdpru")


def _amd_only_instructions(path) -> list[str]:
    asm = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return [ln.strip() for ln in asm.splitlines() if any(f"\t{m} " in ln or ln.rstrip().endswith(f"\t{m}")
                                                         for m in AMD_ONLY)]


@pytest.mark.tvm
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
@pytest.mark.parametrize("name", ["x86-avx512", "x86-avx2"])
def test_builtin_x86_targets_emit_no_amd_only_instructions(name, tmp_path):
    # the shape whose pack kernel LLVM filled with `insertq` for mcpu znver3 (SIGILL on Intel Xeon)
    attrs = BinaryConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 130)
    rng = np.random.default_rng(0)
    w = pack_weights(rng.standard_normal((64, 130, 3, 3)).astype(np.float32))
    m = BinaryConvModule((1, 130, 7, 7), w, np.ones(64, np.float32), np.zeros(64, np.float32), attrs,
                         get_target(name).tvm)
    lib = tmp_path / "conv.so"
    m.export(str(lib))
    assert _amd_only_instructions(lib) == []


@pytest.mark.tvm
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_amd_only_check_can_fail(tmp_path):
    """Without the target's `-sse4a`, Zen code generation does emit SSE4A for this shape."""
    attrs = BinaryConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 130)
    rng = np.random.default_rng(0)
    w = pack_weights(rng.standard_normal((64, 130, 3, 3)).astype(np.float32))
    zen3 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver3", "num-cores": 2}
    m = BinaryConvModule((1, 130, 7, 7), w, np.ones(64, np.float32), np.zeros(64, np.float32), attrs, zen3)
    lib = tmp_path / "conv.so"
    m.export(str(lib))
    assert any("insertq" in ln or "extrq" in ln for ln in _amd_only_instructions(lib))

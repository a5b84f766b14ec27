"""Which schedule family a TVM target dict asks for (x86 AVX-512 / AVX2, aarch64 NEON, CUDA)."""

from __future__ import annotations

from typing import Any

import tvm

from dcpnas.errors import TargetError

from .schedule_cpu import CpuParams

# CPUs whose LLVM model has AVX-512 VPOPCNTDQ (per-lane 32/64-bit popcount)
_AVX512_POPCNT = {"znver4", "znver5", "icelake-server", "icelake-client", "tigerlake", "sapphirerapids",
                  "emeraldrapids", "graniterapids", "graniterapids-d", "alderlake-avx512", "cooperlake",
                  "rocketlake", "diamondrapids"}


def as_target(target: Any) -> tvm.target.Target:
    """dict (JSON target) or tvm Target -> tvm Target. Strings are refused (DESIGN: targets are dicts)."""
    if isinstance(target, tvm.target.Target):
        return target
    if not isinstance(target, dict):
        raise TargetError(f"expected a TVM target dict like {{'kind': 'llvm', 'mtriple': ..., 'mcpu': ...}}, got {target!r}")
    try:
        if target.get("kind") == "cuda" and "host" not in target:
            return tvm.target.Target(target, host={"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
        return tvm.target.Target(target)
    except Exception as e:  # TVM raises its own error types for bad dicts
        raise TargetError(f"invalid TVM target {target}: {str(e).splitlines()[-1]}") from None


def family(target: Any) -> str:
    """'x86' | 'arm' | 'cuda' for a target dict or Target."""
    t = as_target(target)
    kind = t.kind.name
    if kind == "cuda":
        return "cuda"
    if kind != "llvm":
        raise TargetError(f"binary kernels support llvm (x86_64, aarch64) and cuda targets, not {kind!r}")
    triple = str(t.attrs.get("mtriple", ""))
    if triple.startswith("aarch64") or triple.startswith("arm64"):
        return "arm"
    return "x86"


def has_avx512_popcount(target: Any) -> bool:
    t = as_target(target)
    mcpu = str(t.attrs.get("mcpu", ""))
    mattr = [str(a) for a in t.attrs.get("mattr", [])]
    return mcpu in _AVX512_POPCNT or "+avx512vpopcntdq" in mattr


def cpu_params(target: Any) -> CpuParams:
    """Vector width (uint32 lanes) and accumulator register budget of a CPU target."""
    fam = family(target)
    if fam == "arm":
        return CpuParams(lanes=4, regs=28, max_xt=7, bytes_xt=2)
    if has_avx512_popcount(target):
        return CpuParams(lanes=16, regs=28, max_xt=14)
    return CpuParams(lanes=8, regs=12, max_xt=7)


def word_bits(target: Any, c_out_per_group: int) -> int:
    """Packed word size: 8 (byte lanes, popcount summed in uint8 before widening) on x86 without AVX-512
    VPOPCNTDQ (the vector popcount is vpshufb on bytes) when C_out per group is a multiple of 16; else 32.
    aarch64 stays on 32-bit words: the byte kernel there spilled NEON registers (LLVM unrolls the byte
    chunk), and qemu cannot time the difference; a board can (see the report)."""
    if c_out_per_group % 16 == 0 and family(target) == "x86" and not has_avx512_popcount(target):
        return 8
    return 32


def export_library(executable, path, cross_compiler: str | None = None, what: str = "library") -> str:
    """Write a compiled TVM module (Executable) as a shared library at `path`, atomically (a temporary
    file swapped in); cross_compiler: e.g. "aarch64-linux-gnu-gcc" for an aarch64 target (must be
    installed). CompileError in one line on failure. Returns the path."""
    import shutil
    from pathlib import Path

    from dcpnas.errors import CompileError

    kw = {}
    if cross_compiler:
        if shutil.which(cross_compiler) is None:
            raise CompileError(f"cross compiler {cross_compiler!r} for {what} is not installed "
                               f"(scripts/install_system_deps.sh installs it)")
        kw["fcompile"] = tvm.support.cc.cross_compiler(cross_compiler)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.so")
    try:
        executable.export_library(str(tmp), **kw)
        tmp.replace(path)
    except Exception as e:
        raise CompileError(f"export_library for {what} failed: {str(e).strip().splitlines()[-1][:300]}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return str(path)

"""Run a whole cross-compiled aarch64 build (the Relax VM library) under qemu-user, for parity.

dcpnas.targets.arm/vm_harness.cc links the aarch64 TVM runtime of the PyPI wheels, loads model.so, creates
the Relax VM (vm_load_executable + vm_initialization, pooled CPU allocator) and runs `main` on each input
image; dcpnas.compiler.kernels.arm_emu builds and runs it. qemu timings mean nothing for a real board;
this only checks numbers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from dcpnas.compiler.kernels.arm_emu import run_program
from dcpnas.errors import DeviceError


def run_under_qemu(lib_path: Path, x: np.ndarray, n_out: int, timeout_s: float = 600) -> np.ndarray:
    """Logits [n, n_out] of the aarch64 library for x [n, C, H, W] float32, run under qemu-aarch64-static."""
    x = np.ascontiguousarray(x, np.float32)
    with tempfile.TemporaryDirectory(prefix="dcpnas-armvm-") as tmp:
        fin, fout = Path(tmp) / "in.f32", Path(tmp) / "out.f32"
        x.tofile(fin)
        run_program("vm_harness", lib_path, fin, *x.shape, fout, timeout_s=timeout_s)
        y = np.fromfile(fout, dtype=np.float32)
    n_out = y.size // max(len(x), 1) if n_out < 0 else n_out
    if y.size != len(x) * n_out:
        raise DeviceError(f"aarch64 VM harness wrote {y.size} values, expected {len(x) * n_out}")
    return y.reshape(len(x), n_out)

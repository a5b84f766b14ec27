"""Run a cross-compiled aarch64 kernel library under qemu-user (or tell why it cannot run here).

Needs: qemu-aarch64-static, the aarch64 sysroot /usr/aarch64-linux-gnu (Debian's cross toolchain) and
the harness + aarch64 TVM runtime built by scripts/setup_arm_runtime.sh into $DCPNAS_ARM_RT
(default ~/.cache/dcpnas/arm). Timings under qemu say nothing about a real Cortex-A72.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from dcpnas.errors import DeviceError

SYSROOT = Path("/usr/aarch64-linux-gnu")
CROSS_CC = "aarch64-linux-gnu-gcc"
_CODES = {"i": 0, "u": 1, "f": 2}


def runtime_dir() -> Path:
    return Path(os.environ.get("DCPNAS_ARM_RT", Path.home() / ".cache" / "dcpnas" / "arm"))


def missing() -> str | None:
    """None when aarch64 libraries can be built and run here, else the reason (for pytest.skip)."""
    if shutil.which(CROSS_CC) is None:
        return f"{CROSS_CC} not found (scripts/install_system_deps.sh installs it)"
    if shutil.which("qemu-aarch64-static") is None:
        return "qemu-aarch64-static not found (apt-get install qemu-user-static)"
    if not SYSROOT.is_dir():
        return f"aarch64 sysroot {SYSROOT} not found"
    if not (runtime_dir() / "arm_harness").exists():
        return f"aarch64 TVM runtime not set up in {runtime_dir()}: run scripts/setup_arm_runtime.sh"
    return None


def write_tensors(path: Path, arrays: list[np.ndarray]) -> None:
    """The harness's tensor file: b'DCPT', count, then (code, bits, ndim, shape, data) per tensor."""
    with open(path, "wb") as f:
        f.write(b"DCPT" + struct.pack("<I", len(arrays)))
        for a in arrays:
            a = np.ascontiguousarray(a)
            f.write(struct.pack("<BBH", _CODES[a.dtype.kind], a.dtype.itemsize * 8, a.ndim))
            f.write(struct.pack(f"<{a.ndim}q", *a.shape))
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


def run_library(lib: Path, arrays: list[np.ndarray], calls: list[tuple[str, list[int]]], out_index: int,
                iters: int = 0, timeout_s: float = 300) -> tuple[np.ndarray, float | None]:
    """Call `calls` (function name, tensor indices) in order on `arrays` inside qemu; return tensor
    `out_index` after the calls, and the mean ms per round of calls over `iters` rounds (qemu time)."""
    why = missing()
    if why:
        raise DeviceError(why)
    rt = runtime_dir()
    with tempfile.TemporaryDirectory(prefix="dcpnas-arm-") as tmp:
        tin, tout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        write_tensors(tin, arrays)
        spec = ";".join(f"{name}:{','.join(str(i) for i in idx)}" for name, idx in calls)
        cmd = ["qemu-aarch64-static", "-L", str(SYSROOT), str(rt / "arm_harness"), str(lib), str(tin), spec,
               str(out_index), str(tout)] + ([str(iters)] if iters else [])
        env = dict(os.environ, LD_LIBRARY_PATH=f"{rt / 'rt/tvm/lib'}:{rt / 'rt/tvm_ffi/lib'}")
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        if r.returncode != 0:
            raise DeviceError(f"aarch64 harness failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
        ref = arrays[out_index]
        out = np.fromfile(tout, dtype=ref.dtype).reshape(ref.shape)
    ms = float(r.stdout.split()[0]) if iters else None
    return out, ms


def run_binary_conv(module, x: np.ndarray, lib_dir: Path, in_scale=None, in_shift=None, iters: int = 0):
    """Export a BinaryConvModule built for an aarch64 target, run pack + conv under qemu.
    -> (float32 [N, C_out, OH, OW], qemu ms per pack+conv or None)."""
    lib = Path(module.export(Path(lib_dir) / "binconv_aarch64.so", CROSS_CC))
    arrs = module.arrays(x, in_scale, in_shift)
    pack, conv = arrs["binpack"], arrs["binconv"]
    arrays = pack + conv[1:]
    p_idx = len(pack) - 1
    calls = [("binpack", list(range(len(pack)))), ("binconv", [p_idx] + list(range(len(pack), len(arrays))))]
    out, ms = run_library(lib, arrays, calls, len(arrays) - 1, iters)
    return out.reshape(module.geo.out_shape), ms

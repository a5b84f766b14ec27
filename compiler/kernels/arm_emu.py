"""The one home of aarch64 emulation: build aarch64 programs against the aarch64 TVM runtime and run them
under qemu-user (or tell why that cannot happen here). Used by the kernel tests (run_library,
run_binary_conv), by whole-build parity (compiler/arm_parity.py) and by the emulated RPC server
(targets/armrpc.py).

Needs: aarch64-linux-gnu-g++, qemu-aarch64-static, the aarch64 sysroot /usr/aarch64-linux-gnu (Debian's
cross toolchain; scripts/install_system_deps.sh) and the aarch64 TVM runtime that
scripts/setup_arm_runtime.sh unpacks into $DCPNAS_ARM_RT (default ~/.cache/dcpnas/arm). The programs'
sources ship in dcpnas.targets.arm (kernel_harness.cc, vm_harness.cc, rpc_server.cc); each is built on
first use, and again when its source is newer. Timings under qemu say nothing about a real Cortex-A72.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from dcpnas.errors import DeviceError

SYSROOT = Path("/usr/aarch64-linux-gnu")
CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64-static"
_CODES = {"i": 0, "u": 1, "f": 2}


def runtime_dir() -> Path:
    return Path(os.environ.get("DCPNAS_ARM_RT", Path.home() / ".cache" / "dcpnas" / "arm"))


def missing() -> str | None:
    """None when aarch64 programs can be built and run here, else the reason (for pytest.skip)."""
    for tool in (CROSS_CC, CROSS_CXX, QEMU):
        if shutil.which(tool) is None:
            return f"{tool} not found (scripts/install_system_deps.sh installs it)"
    if not SYSROOT.is_dir():
        return f"aarch64 sysroot {SYSROOT} not found"
    rt = runtime_dir() / "rt"
    if not ((rt / "tvm/lib/libtvm_runtime.so").is_file() and (rt / "tvm_ffi/lib/libtvm_ffi.so").is_file()):
        return f"aarch64 TVM runtime not set up in {runtime_dir()}: run scripts/setup_arm_runtime.sh"
    return None


def build_program(name: str) -> Path:
    """The aarch64 binary of dcpnas.targets.arm/<name>.cc, linked against the aarch64 TVM runtime; built
    into runtime_dir() once (again when the source is newer), atomically."""
    why = missing()
    if why:
        raise DeviceError(why)
    rt = runtime_dir() / "rt"
    out = runtime_dir() / name
    with resources.as_file(resources.files("dcpnas.targets.arm").joinpath(f"{name}.cc")) as src:
        if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
            return out
        tmp = out.with_name(f".{name}.{os.getpid()}.tmp")
        cmd = [CROSS_CXX, "-O2", "-std=c++17", str(src), f"-I{rt}/tvm_ffi/include", f"-L{rt}/tvm_ffi/lib",
               f"-L{rt}/tvm/lib", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
               f"-Wl,-rpath,{rt}/tvm/lib:{rt}/tvm_ffi/lib", "-o", str(tmp)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise DeviceError(f"cannot build the aarch64 {name}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    tmp.replace(out)
    return out


def qemu_argv(binary: Path, *args) -> list[str]:
    """The command line that runs an aarch64 binary under qemu-user with the cross sysroot."""
    return [QEMU, "-L", str(SYSROOT), str(binary), *(str(a) for a in args)]


def qemu_env() -> dict:
    rt = runtime_dir() / "rt"
    return dict(os.environ, LD_LIBRARY_PATH=f"{rt / 'tvm/lib'}:{rt / 'tvm_ffi/lib'}")


def run_program(name: str, *args, timeout_s: float = 300) -> str:
    """Build (if needed) and run program `name` under qemu with `args`; its stdout. DeviceError on a
    failure or past timeout_s."""
    binary = build_program(name)
    try:
        r = subprocess.run(qemu_argv(binary, *args), capture_output=True, text=True, timeout=timeout_s,
                           env=qemu_env())
    except subprocess.TimeoutExpired:
        raise DeviceError(f"the aarch64 {name} ran over {timeout_s:.0f} s under qemu") from None
    if r.returncode != 0:
        raise DeviceError(f"the aarch64 {name} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout


def write_tensors(path: Path, arrays: list[np.ndarray]) -> None:
    """kernel_harness's tensor file: b'DCPT', count, then (code, bits, ndim, shape, data) per tensor."""
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
    with tempfile.TemporaryDirectory(prefix="dcpnas-arm-") as tmp:
        tin, tout = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        write_tensors(tin, arrays)
        spec = ";".join(f"{name}:{','.join(str(i) for i in idx)}" for name, idx in calls)
        stdout = run_program("kernel_harness", lib, tin, spec, out_index, tout, *([iters] if iters else []),
                             timeout_s=timeout_s)
        ref = arrays[out_index]
        out = np.fromfile(tout, dtype=ref.dtype).reshape(ref.shape)
    ms = float(stdout.split()[0]) if iters else None
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

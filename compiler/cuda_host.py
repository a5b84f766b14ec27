"""Building CUDA libraries on a host without a GPU: nvcc embeds a fatbin for the target's arch.

TVM 0.27 embeds compiled CUDA code in a library only when its CUDA runtime library
(libtvm_runtime_cuda.so) is loaded, and that library needs the driver's libcuda.so.1. Without it
the exported library carries CUDA source, which no GPU runtime loads. `cuda_build()` makes the build
host able to produce the real thing: where there is no driver it loads a stub libcuda.so.1 (every entry
returns CUDA_ERROR_NO_DEVICE; nothing runs on this host), loads TVM's CUDA runtime library, and has
TVM compile with nvcc (TVM_CUDA_COMPILE_MODE=nvcc) for as long as the context lasts.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dcpnas.errors import CompileError

STUB_SYMBOLS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString", "cuLaunchKernelEx",
                "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeTiled")


def stub_libcuda(directory: Path | None = None) -> Path:
    """Compile (once) the stub libcuda.so.1 into `directory` (default: a per-user temp folder)."""
    directory = Path(directory or Path(tempfile.gettempdir()) / f"dcpnas-cudastub-{os.getuid()}")
    lib = directory / "libcuda.so.1"
    if lib.is_file():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise CompileError("building for CUDA without a GPU driver needs a C compiler (cc) for the libcuda stub")
    directory.mkdir(parents=True, exist_ok=True)
    src = directory / "stub.c"
    src.write_text("".join(f"int {s}(void) {{ return 100; }}\n" for s in STUB_SYMBOLS))
    tmp = directory / f".libcuda.so.1.{os.getpid()}"
    r = subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)],
                       capture_output=True, text=True)
    if r.returncode:
        raise CompileError(f"could not build the libcuda stub: {r.stderr.strip()[:300]}")
    tmp.replace(lib)
    return lib


def load_cuda_runtime() -> str:
    """Load TVM's CUDA runtime library into this process (with the real driver, else the stub).
    Returns "driver" or "stub"."""
    from tvm.base import _LOADED_LIBS

    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        driver = "driver"
    except OSError:
        ctypes.CDLL(str(stub_libcuda()), mode=ctypes.RTLD_GLOBAL)
        driver = "stub"
    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        lib_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(str(lib_dir / "libtvm_runtime_cuda.so"),
                                                           mode=ctypes.RTLD_LOCAL)
        except OSError as e:
            raise CompileError(f"TVM's CUDA runtime library does not load ({e}); it needs libcudart.so.13 "
                               "(the CUDA 13 toolkit) on the library path") from None
    return driver


@contextmanager
def cuda_build():
    """Within this context tvm.compile embeds nvcc-compiled fatbins for CUDA targets."""
    if shutil.which("nvcc") is None:
        raise CompileError("compiling for a CUDA target needs nvcc (the CUDA 13 toolkit) on PATH: "
                           "without it the library would carry CUDA source that no GPU runtime loads")
    load_cuda_runtime()
    import tvm.support.nvcc  # noqa: F401  registers tvm_callback_cuda_compile

    old = os.environ.get("TVM_CUDA_COMPILE_MODE")
    os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TVM_CUDA_COMPILE_MODE", None)
        else:
            os.environ["TVM_CUDA_COMPILE_MODE"] = old


__all__ = ["cuda_build", "load_cuda_runtime", "stub_libcuda", "STUB_SYMBOLS"]

"""Building CUDA libraries on a host without a GPU: nvcc embeds a fatbin for the target's arch.

TVM 0.27 embeds compiled CUDA code in a library only when its CUDA runtime library
(libtvm_runtime_cuda.so) is loaded, and that library needs the driver's libcuda.so.1. Without it
the exported library carries CUDA source, which no GPU runtime loads. `enable_cuda_fatbins()` makes
the build host produce the real thing: where there is no driver it loads a stub libcuda.so.1 (every
entry fails with CUDA_ERROR_NO_DEVICE; nothing runs on this host), loads TVM's CUDA runtime library,
and selects nvcc (TVM_CUDA_COMPILE_MODE=nvcc, unless the user chose a mode). Both last for the rest
of the process, and must: once TVM's CUDA runtime is loaded, every CUDA tvm.compile in the process
goes through its compile callback, whose default (nvrtc) needs packages this project does not install.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from dcpnas.errors import CompileError

STUB_SYMBOLS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString", "cuLaunchKernelEx",
                "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload", "cuTensorMapEncodeTiled")


def _stub_source() -> str:
    lines = ["static const char *msg = \"CUDA_ERROR_NO_DEVICE (dcpnas build-host stub: no GPU driver)\";"]
    for name in STUB_SYMBOLS:
        if name in ("cuGetErrorName", "cuGetErrorString"):  # TVM prints these: give it a string
            lines.append(f"int {name}(int e, const char **s) {{ if (s) *s = msg; return 0; }}")
        else:
            lines.append(f"int {name}(void) {{ return 100; }}")
    return "\n".join(lines) + "\n"


def stub_libcuda(directory: Path | None = None) -> Path:
    """Compile (once per stub version) the stub libcuda.so.1 into a private folder of this user's cache
    (XDG_CACHE_HOME or ~/.cache)/dcpnas/cudastub-<hash>/, mode 0700, and return its path."""
    import hashlib

    src_text = _stub_source()
    if directory is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        directory = cache / "dcpnas" / f"cudastub-{hashlib.sha256(src_text.encode()).hexdigest()[:12]}"
    directory = Path(directory)
    lib = directory / "libcuda.so.1"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = directory.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise CompileError(f"{directory} is not a private folder of this user: refusing to load a library from it")
    if lib.is_file():
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise CompileError("building for CUDA without a GPU driver needs a C compiler (cc) for the libcuda stub")
    src = directory / f"stub.{os.getpid()}.c"
    tmp = directory / f".libcuda.so.1.{os.getpid()}"
    src.write_text(src_text)
    r = subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(src)],
                       capture_output=True, text=True)
    src.unlink(missing_ok=True)
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


def enable_cuda_fatbins() -> None:
    """Make every later CUDA tvm.compile in this process embed an nvcc fatbin (see the module doc)."""
    if shutil.which("nvcc") is None:
        raise CompileError("compiling for a CUDA target needs nvcc (the CUDA 13 toolkit) on PATH: "
                           "without it the library would carry CUDA source that no GPU runtime loads")
    load_cuda_runtime()
    import tvm.support.nvcc  # noqa: F401  registers tvm_callback_cuda_compile

    os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")


def cuda_tool(name: str) -> Path | None:
    """A CUDA binary tool (nvcc, nvdisasm): on PATH, else from NVIDIA's wheels in this Python
    (site-packages/nvidia/*/bin: `pip install nvidia-cuda-nvdisasm`, a dev dependency); None if absent."""
    found = shutil.which(name)
    if found:
        return Path(found)
    try:
        import nvidia
    except ImportError:
        return None
    for root in getattr(nvidia, "__path__", []):
        for cand in sorted(Path(root).glob(f"*/bin/{name}")):
            if os.access(cand, os.X_OK):
                return cand
    return None


def compile_cuda(cuda_source: str, arch: str, out: Path, fmt: str = "cubin") -> Path:
    """nvcc -<fmt> -arch=<arch> (fmt "cubin" or "ptx") of a TVM-generated CUDA source (e.g.
    Executable.mod.imports[0].inspect_source("cuda")); returns `out`."""
    nvcc = cuda_tool("nvcc")
    if nvcc is None:
        raise CompileError("nvcc not found (the CUDA 13 toolkit on PATH)")
    out = Path(out)
    src = out.with_suffix(".cu")
    src.write_text(cuda_source)
    if fmt not in ("cubin", "ptx"):
        raise CompileError(f"nvcc output format must be cubin or ptx, got {fmt!r}")
    r = subprocess.run([str(nvcc), f"-{fmt}", f"-arch={arch}", "-o", str(out), str(src)], capture_output=True, text=True)
    if r.returncode:
        raise CompileError(f"nvcc -{fmt} -arch={arch} failed: {r.stderr.strip()[-400:]}")
    return out


def sass(cubin: Path) -> str:
    """The SASS of a cubin (nvdisasm; cuobjdump -sass needs it too)."""
    tool = cuda_tool("nvdisasm")
    if tool is None:
        raise CompileError("nvdisasm not found: pip install nvidia-cuda-nvdisasm (in the dev extra)")
    r = subprocess.run([str(tool), str(cubin)], capture_output=True, text=True)
    if r.returncode:
        raise CompileError(f"nvdisasm {cubin} failed: {r.stderr.strip()[-300:]}")
    return r.stdout


__all__ = ["compile_cuda", "cuda_tool", "enable_cuda_fatbins", "load_cuda_runtime", "sass", "stub_libcuda",
           "STUB_SYMBOLS"]

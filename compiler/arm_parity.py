"""Run a whole cross-compiled aarch64 build (the Relax VM library) under qemu-user, for parity.

A small C++ harness (source below) links the aarch64 TVM runtime of the PyPI wheels (set up by
scripts/setup_arm_runtime.sh, see dcpnas.compiler.kernels.arm_emu), loads model.so, creates the Relax VM
(vm_load_executable + vm_initialization, pooled CPU allocator) and runs `main` on each input image.
qemu timings mean nothing for a real board; this only checks numbers.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from dcpnas.errors import DeviceError

HARNESS_CC = r"""
// usage: arm_vm_harness LIB.so IN.f32 N C H W OUT.f32  (runs main on each of N images [1,C,H,W])
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/container/tensor.h>
#include <dlpack/dlpack.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>
namespace ffi = tvm::ffi;
struct CPUAlloc {
  void AllocData(DLTensor* t) { size_t n = 4; for (int i = 0; i < t->ndim; ++i) n *= t->shape[i]; t->data = std::aligned_alloc(64, (n + 63) / 64 * 64); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};
int main(int argc, char** argv) {
  if (argc != 8) { fprintf(stderr, "usage: %s LIB IN N C H W OUT\n", argv[0]); return 2; }
  int64_t n = atoll(argv[3]), c = atoll(argv[4]), h = atoll(argv[5]), w = atoll(argv[6]);
  std::vector<float> in(n * c * h * w);
  std::ifstream fi(argv[2], std::ios::binary);
  fi.read((char*)in.data(), in.size() * 4);
  if (!fi) { fprintf(stderr, "short input file\n"); return 2; }
  ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()((int)kDLCPU, 0, 2);
  ffi::Function main_fn = vm->GetFunction("main").value();
  std::ofstream fo(argv[7], std::ios::binary);
  int64_t shape[4] = {1, c, h, w};
  for (int64_t i = 0; i < n; ++i) {
    ffi::Tensor x = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape, 4), DLDataType{kDLFloat, 32, 1},
                                             DLDevice{kDLCPU, 0});
    std::memcpy(x.data_ptr(), in.data() + i * c * h * w, c * h * w * 4);
    ffi::Tensor y = main_fn(x).cast<ffi::Tensor>();
    fo.write((const char*)y.data_ptr(), y.numel() * 4);
  }
  return 0;
}
"""


def _harness() -> Path:
    """Build (once) the aarch64 VM harness next to the runtime of scripts/setup_arm_runtime.sh."""
    from dcpnas.compiler.kernels.arm_emu import missing, runtime_dir

    why = missing()
    if why:
        raise DeviceError(why)
    rt = runtime_dir()
    exe = rt / "arm_vm_harness"
    src = rt / "arm_vm_harness.cc"
    if not exe.exists() or not src.is_file() or src.read_text() != HARNESS_CC:
        src.write_text(HARNESS_CC)
        cmd = ["aarch64-linux-gnu-g++", "-O2", "-std=c++17", str(src), f"-I{rt / 'rt/tvm_ffi/include'}",
               f"-L{rt / 'rt/tvm_ffi/lib'}", f"-L{rt / 'rt/tvm/lib'}", "-Wl,--no-as-needed", "-ltvm_runtime",
               "-ltvm_ffi", f"-Wl,-rpath,{rt / 'rt/tvm/lib'}:{rt / 'rt/tvm_ffi/lib'}", "-o", str(exe)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise DeviceError(f"cannot build the aarch64 VM harness: {r.stderr.strip()[-300:]}")
    return exe


def run_under_qemu(lib_path: Path, x: np.ndarray, n_out: int, timeout_s: float = 600) -> np.ndarray:
    """Logits [n, n_out] of the aarch64 library for x [n, C, H, W] float32, run under qemu-aarch64-static."""
    from dcpnas.compiler.kernels.arm_emu import SYSROOT, runtime_dir

    exe = _harness()
    rt = runtime_dir()
    x = np.ascontiguousarray(x, np.float32)
    with tempfile.TemporaryDirectory(prefix="dcpnas-armvm-") as tmp:
        fin, fout = Path(tmp) / "in.f32", Path(tmp) / "out.f32"
        x.tofile(fin)
        cmd = ["qemu-aarch64-static", "-L", str(SYSROOT), str(exe), str(lib_path), str(fin),
               *(str(v) for v in x.shape), str(fout)]
        env = dict(os.environ, LD_LIBRARY_PATH=f"{rt / 'rt/tvm/lib'}:{rt / 'rt/tvm_ffi/lib'}")
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"qemu run of {lib_path.name} took over {timeout_s:.0f} s") from None
        if r.returncode != 0:
            raise DeviceError(f"aarch64 VM harness failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
        y = np.fromfile(fout, dtype=np.float32)
    n_out = y.size // max(len(x), 1) if n_out < 0 else n_out
    if y.size != len(x) * n_out:
        raise DeviceError(f"aarch64 VM harness wrote {y.size} values, expected {len(x) * n_out}")
    return y.reshape(len(x), n_out)

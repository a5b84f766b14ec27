"""In-run timing of every call a Relax VM makes (its kernels and its builtins), inside the network's own run.

TVM 0.27's Relax VM has no profiler (`VirtualMachine(..., profile=True)` and `vm.profile` are gone from
0.27); it keeps `VirtualMachine.set_instrument(f)`, which calls `f(func, symbol, before, ret, *args)`
before and after every call instruction. A Python `f` costs microseconds per call (a 6x8 network: 2.8 ms
run 8.8 ms instrumented), more than many of the kernels it would time. The instrument here is C: a
function of tvm-ffi's stable C ABI that takes a CLOCK_MONOTONIC timestamp as it returns from the
`before` call and as it enters the `after` call, and adds the difference to the call's slot in a buffer
(slot = call index modulo the calls per run). It is compiled once per process with the host's C
compiler and registered as the global function `dcpnas.vmtimer`.

    timer = call_timer()                  # DeviceError without a C compiler
    vm.set_instrument(timer.function)
    buf = timer.start(ncalls, skip=ncalls)  # int64 ns per call slot; the first `skip` calls not added
    ... run ...
    timer.count()                         # calls seen since start

What a slot holds: the kernel (or builtin) itself, its packed-call entry and exit, and two clock reads
(tens of ns). What it leaves out: the VM's own work between calls (reading registers, the next
instruction) and the instrument's cost of building its arguments (the callee's name), which lands
between calls too: an instrumented run is slower than a plain one by that, not its kernels.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from dcpnas.errors import DeviceError

GLOBAL_NAME = "dcpnas.vmtimer"

C_SOURCE = r"""
#include <stdint.h>
#include <time.h>
#include <tvm/ffi/c_api.h>

_Static_assert(sizeof(TVMFFIAny) == 16, "tvm-ffi's TVMFFIAny changed");

static int64_t *g_sums = 0, g_ncalls = 0, g_skip = 0, g_counter = 0, g_start = 0;

static inline int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* (func, symbol, before_run, ret, *args) -> 0 (VMInstrumentReturnKind::kNoOp) */
static int instrument(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  int64_t t = now_ns();
  result->type_index = kTVMFFIInt;
  result->zero_padding = 0;
  result->v_int64 = 0;
  if (num_args < 3) return 0;
  if (args[2].v_int64) {
    g_start = now_ns();  /* as late as possible before the call */
  } else {
    if (g_sums && g_ncalls > 0 && g_counter >= g_skip) g_sums[g_counter % g_ncalls] += t - g_start;
    g_counter++;
  }
  return 0;
}

int dcpnas_vmtimer_register(const char* name, size_t len) {
  TVMFFIObjectHandle f = 0;
  TVMFFIByteArray nm = {name, len};
  int rc = TVMFFIFunctionCreate(0, instrument, 0, &f);
  if (rc) return rc;
  rc = TVMFFIFunctionSetGlobal(&nm, f, 1);
  TVMFFIObjectDecRef(f);
  return rc;
}

void dcpnas_vmtimer_start(int64_t* sums, int64_t ncalls, int64_t skip) {
  g_sums = sums; g_ncalls = ncalls; g_skip = skip; g_counter = 0;
}

int64_t dcpnas_vmtimer_count(void) { return g_counter; }
"""


class CallTimer:
    """The process's C instrument (see the module docstring). One buffer at a time: runs that use the
    instrument must not overlap (the VM calls it from the thread that runs the VM)."""

    def __init__(self, lib: ctypes.CDLL, function):
        self._lib, self.function = lib, function
        self._buf = np.zeros(1, np.int64)
        lib.dcpnas_vmtimer_start.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        lib.dcpnas_vmtimer_start.restype = None
        lib.dcpnas_vmtimer_count.argtypes = []
        lib.dcpnas_vmtimer_count.restype = ctypes.c_int64

    def start(self, ncalls: int, skip: int = 0) -> np.ndarray:
        """A fresh buffer of `ncalls` int64 slots (ns), filled from here on; the first `skip` calls are not added."""
        if ncalls < 1:
            raise DeviceError("the VM function makes no calls: nothing to time in-run")
        buf = np.zeros(ncalls, np.int64)
        self._buf = buf  # kept alive here: the C side writes into it until the next start
        self._lib.dcpnas_vmtimer_start(buf.ctypes.data, ncalls, skip)
        return buf

    def count(self) -> int:
        """Calls completed since the last start."""
        return int(self._lib.dcpnas_vmtimer_count())


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


@functools.lru_cache(maxsize=1)
def call_timer() -> CallTimer:
    """The instrument, compiled and registered on first use (DeviceError when that is impossible:
    no C compiler, or tvm-ffi's headers or library not found)."""
    import tvm_ffi
    from tvm_ffi import libinfo

    cc = _compiler()
    if cc is None:
        raise DeviceError("in-run timing needs a C compiler (cc, gcc or clang; or $CC) to build its VM instrument")
    try:
        lib_path = Path(libinfo.find_libtvm_ffi())
        includes = {libinfo.find_include_path(), libinfo.find_dlpack_include_path()}
    except Exception as e:  # tvm-ffi raises its own error types
        raise DeviceError(f"in-run timing: tvm-ffi's headers or library not found ({e})") from None
    with tempfile.TemporaryDirectory(prefix="dcpnas-vmtimer-") as tmp:
        src, so = Path(tmp) / "vmtimer.c", Path(tmp) / "vmtimer.so"
        src.write_text(C_SOURCE)
        cmd = [cc, "-O2", "-shared", "-fPIC", *(f"-I{i}" for i in sorted(includes)), str(src), "-o", str(so),
               f"-L{lib_path.parent}", "-ltvm_ffi", f"-Wl,-rpath,{lib_path.parent}"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DeviceError(f"in-run timing: cannot run the C compiler {cc}: {e}") from None
        if done.returncode != 0:
            msg = (done.stderr or done.stdout).strip().splitlines()
            raise DeviceError(f"in-run timing: compiling the VM instrument failed: {msg[0] if msg else done.returncode}")
        lib = ctypes.CDLL(str(so))  # mapped: the file may go with the folder
    name = GLOBAL_NAME.encode()
    lib.dcpnas_vmtimer_register.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    if lib.dcpnas_vmtimer_register(name, len(name)) != 0:
        raise DeviceError("in-run timing: registering the VM instrument with tvm-ffi failed")
    return CallTimer(lib, tvm_ffi.get_global_func(GLOBAL_NAME))

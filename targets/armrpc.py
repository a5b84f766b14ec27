"""An aarch64 TVM RPC server under qemu-user, to prove the board path (cross-compile, upload, run,
time) without a board. Timings under qemu are EMULATED: label them so, never ship them.

The server is targets/arm/rpc_server.cc (the plain TVM runtime's rpc.ServerLoop behind the RPC
handshake; direct connection, no tracker), built with aarch64-linux-gnu-g++ against the aarch64 TVM
runtime that scripts/setup_arm_runtime.sh unpacks, and run with qemu-aarch64-static.

    with qemu_rpc_server() as addr:           # "127.0.0.1:PORT"
        Profiler(get_target("arm-a72"), rpc=addr, direct=True)...
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from dcpnas.errors import DeviceError

SOURCE = Path(__file__).resolve().parent / "arm" / "rpc_server.cc"
SYSROOT = Path("/usr/aarch64-linux-gnu")


def runtime_dir() -> Path:
    from dcpnas.compiler.kernels.arm_emu import runtime_dir as rt

    return rt()


def missing() -> str | None:
    """None when the emulated server can be built and run here, else why not (for pytest.skip)."""
    for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64-static"):
        if shutil.which(tool) is None:
            return f"{tool} not found (scripts/install_system_deps.sh installs it)"
    if not SYSROOT.is_dir():
        return f"aarch64 sysroot {SYSROOT} not found"
    rt = runtime_dir() / "rt"
    if not (rt / "tvm" / "lib" / "libtvm_runtime.so").is_file():
        return f"aarch64 TVM runtime not set up in {runtime_dir()}: run scripts/setup_arm_runtime.sh"
    return None


def build_server() -> Path:
    """Build (once; again when the source is newer) the aarch64 server binary; returns its path."""
    why = missing()
    if why:
        raise DeviceError(f"cannot build the emulated aarch64 RPC server: {why}")
    rt = runtime_dir() / "rt"
    out = runtime_dir() / "dcpnas_rpc_server"
    if out.is_file() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    tmp = out.with_name(out.name + ".tmp")
    cmd = ["aarch64-linux-gnu-g++", "-O2", "-std=c++17", str(SOURCE), f"-I{rt}/tvm_ffi/include",
           f"-L{rt}/tvm_ffi/lib", f"-L{rt}/tvm/lib", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
           f"-Wl,-rpath,{rt}/tvm/lib:{rt}/tvm_ffi/lib", "-o", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise DeviceError(f"building the aarch64 RPC server failed: {r.stderr.strip().splitlines()[-1:]}")
    tmp.replace(out)
    return out


@contextlib.contextmanager
def qemu_rpc_server(key: str = "arm-emulated", timeout_s: float = 60.0) -> Iterator[str]:
    """Run the server under qemu-user on a free loopback port; yields 'HOST:PORT' (direct connection)."""
    from dcpnas.targets.rpclocal import free_port, kill_group

    binary = build_server()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dcpnas-armrpc-") as work:
        p = subprocess.Popen(["qemu-aarch64-static", "-L", str(SYSROOT), str(binary), str(port), work, key],
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if p.poll() is not None:
                    err = p.stderr.read().decode(errors="replace").strip().splitlines()[-1:] if p.stderr else []
                    raise DeviceError(f"the emulated aarch64 RPC server exited with code {p.returncode}: {err}")
                with contextlib.suppress(OSError):
                    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                        break
                if time.monotonic() > deadline:
                    raise DeviceError(f"the emulated aarch64 RPC server did not listen within {timeout_s:.0f} s")
                time.sleep(0.3)
            yield f"127.0.0.1:{port}"
        finally:
            kill_group(p)

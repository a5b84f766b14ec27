"""An aarch64 TVM RPC server under qemu-user, to prove the board path (cross-compile, upload, run,
time) without a board. Timings under qemu are EMULATED: label them so, never ship them.

The server is targets/arm/rpc_server.cc (the plain TVM runtime's rpc.ServerLoop behind the RPC
handshake; direct connection, no tracker), built and run under qemu-user by
dcpnas.compiler.kernels.arm_emu (the aarch64 TVM runtime comes from scripts/setup_arm_runtime.sh).

    with qemu_rpc_server() as addr:           # "127.0.0.1:PORT"
        Profiler(get_target("arm-a72"), rpc=addr, direct=True)...
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from typing import Iterator

from dcpnas.compiler.kernels.arm_emu import build_program, missing, qemu_argv, qemu_env
from dcpnas.errors import DeviceError

__all__ = ["qemu_rpc_server", "missing"]


@contextlib.contextmanager
def qemu_rpc_server(key: str = "arm-emulated", timeout_s: float = 60.0) -> Iterator[str]:
    """Run the server under qemu-user on a free loopback port; yields 'HOST:PORT' (direct connection)."""
    from dcpnas.targets.rpclocal import free_port, kill_group

    binary = build_program("rpc_server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dcpnas-armrpc-") as work:
        p = subprocess.Popen(qemu_argv(binary, port, work, key), env=qemu_env(),
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

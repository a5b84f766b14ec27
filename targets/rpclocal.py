"""A TVM RPC tracker and server on loopback, for tests and for trying the `--rpc` path without a board.

    with local_rpc(key="x86-avx512", threads=2) as tracker:   # tracker == "127.0.0.1:PORT"
        Profiler(target, rpc=tracker, key="x86-avx512")...

Both run as `python -m tvm.exec.rpc_tracker` / `rpc_server` in a new process session on free ports;
on exit the whole process group is killed (the server forks popen_worker children). The tracker
needs the `tornado` package.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator, Sequence

from dcpnas.errors import DeviceError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracker_keys(host: str, port: int, timeout_s: float = 5.0) -> list[str]:
    """Keys of the servers registered with a tracker (raises OSError/RuntimeError when unreachable)."""
    from tvm import rpc

    with socket.create_connection((host, port), timeout=timeout_s):
        pass
    tracker = rpc.connect_tracker(host, port)
    try:
        tracker._sock.settimeout(timeout_s)
        return [s["key"].split(":", 1)[-1] for s in tracker.summary().get("server_info", [])]
    finally:
        tracker.close()


def wait_for_key(host: str, port: int, key: str, timeout_s: float, procs: Sequence[subprocess.Popen] = ()) -> None:
    """Poll the tracker until a server with `key` is registered; DeviceError after `timeout_s`."""
    deadline, last = time.monotonic() + timeout_s, "not polled"
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise DeviceError(f"RPC process {' '.join(map(str, p.args[:4]))} exited with code {p.returncode}")
        try:
            if key in tracker_keys(host, port):
                return
            last = "key not registered yet"
        except (OSError, RuntimeError) as e:
            last = str(e)
        time.sleep(0.5)
    raise DeviceError(f"RPC server with key {key!r} did not register with the tracker at {host}:{port} "
                      f"within {timeout_s:.0f} s ({last})")


def _spawn(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_group(p: subprocess.Popen, timeout_s: float = 5.0) -> None:
    """SIGTERM the process group of `p` (its own session), SIGKILL when it lingers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)  # children left in the group after the leader exited
    if p.stderr:
        p.stderr.close()


@contextlib.contextmanager
def local_tracker(python: str = sys.executable, timeout_s: float = 30.0) -> Iterator[tuple[str, int, subprocess.Popen]]:
    """A tracker on 127.0.0.1:<free port>; yields (host, port, process)."""
    port = free_port()
    p = _spawn([python, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                "--port-end", str(port + 1)], dict(os.environ))
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if p.poll() is not None:
                err = p.stderr.read().decode(errors="replace").strip().splitlines()[-1:] if p.stderr else []
                raise DeviceError(f"rpc_tracker exited with code {p.returncode}: {' '.join(err)}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    break
            if time.monotonic() > deadline:
                raise DeviceError(f"rpc_tracker did not listen on port {port} within {timeout_s:.0f} s")
            time.sleep(0.2)
        yield "127.0.0.1", port, p
    finally:
        kill_group(p)


@contextlib.contextmanager
def local_server(tracker_host: str, tracker_port: int, key: str, threads: int = 2, python: str = sys.executable,
                 timeout_s: float = 30.0) -> Iterator[subprocess.Popen]:
    """An rpc_server registered with the tracker under `key`, with TVM_NUM_THREADS=threads."""
    port = free_port()
    env = dict(os.environ, TVM_NUM_THREADS=str(threads))
    p = _spawn([python, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                "--port-end", str(port + 1), "--tracker", f"{tracker_host}:{tracker_port}", "--key", key], env)
    try:
        wait_for_key(tracker_host, tracker_port, key, timeout_s, [p])
        yield p
    finally:
        kill_group(p)


@contextlib.contextmanager
def local_rpc(key: str, threads: int = 2, timeout_s: float = 30.0) -> Iterator[str]:
    """Tracker + one server on loopback; yields the tracker address 'HOST:PORT'."""
    with local_tracker(timeout_s=timeout_s) as (host, port, _):
        with local_server(host, port, key, threads, timeout_s=timeout_s):
            yield f"{host}:{port}"

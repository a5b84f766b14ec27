"""Time compiled TVM functions, locally or on a device through a TVM RPC tracker.

    prof = Profiler(target)                                        # local (x86 host targets)
    prof = Profiler(target, rpc="127.0.0.1:9190", key="rpi4")      # a board behind a tracker
    with prof.session() as s:
        mod = s.load("build/net/deploy.so")                        # uploads it when remote
        r = s.time_vm(mod, [x])                                     # Relax VM "main": Timing
        r = s.time_func(mod, "fused_conv", [a, w, out])            # one PrimFunc by name
        f = s.inrun_sampler(mod, [x])                               # local: every VM call timed in-run

Every timing runs the function `warmup` times, then TVM's time_evaluator (`repeat` samples of
`number` runs, at least `min_repeat_ms` per sample) with a fixed thread count, and reports the median
and the spread (std, interquartile range) in ms. Unreachable trackers and devices raise DeviceError
after a bounded number of tries; nothing here writes files.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from dcpnas.errors import DeviceError, TargetError
from dcpnas.targets.registry import Target


STATISTICS = ("median", "min")


@dataclass(frozen=True)
class Timing:
    """Summary of the per-run latencies (ms) of `count` samples."""

    median_ms: float
    mean_ms: float
    std_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    count: int
    number: int

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @classmethod
    def from_samples(cls, samples_s: Sequence[float], number: int) -> "Timing":
        ms = np.asarray(samples_s, dtype=float) * 1e3
        q1, med, q3 = np.percentile(ms, [25, 50, 75])
        return cls(float(med), float(ms.mean()), float(ms.std()), float(q1), float(q3), float(ms.min()), len(ms), number)

    def to_dict(self) -> dict:
        return {**asdict(self), "iqr_ms": self.iqr_ms}

    def value(self, statistic: str = "median") -> float:
        """The figure to use, in ms: `median` (default) or `min` (robust on a shared, loaded CPU:
        contention only ever adds time)."""
        if statistic not in STATISTICS:
            raise DeviceError(f"unknown statistic {statistic!r}; choose {' or '.join(STATISTICS)}")
        return self.median_ms if statistic == "median" else self.min_ms


def parse_hostport(spec: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port); DeviceError for anything else."""
    host, sep, port = spec.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeviceError(f"--rpc must be HOST:PORT (e.g. 192.168.1.10:9190), got {spec!r}")
    return host, int(port)


class Profiler:
    """Local or RPC timing of compiled modules for `target`.

    rpc: 'HOST:PORT' of a TVM tracker (None: local); key: the device key its servers registered
    (default target.rpc_key). threads: fixed thread count (default target.threads).
    retries / retry_delay_s / timeout_s bound every wait for the tracker and the device.
    statistic: the figure LUT builds and checks use (`median`, or `min` on a loaded host).
    direct: `rpc` is an RPC server itself (no tracker), e.g. the emulated aarch64 server (armrpc.py).
    """

    def __init__(self, target: Target, rpc: str | None = None, key: str | None = None, threads: int | None = None,
                 warmup: int = 3, number: int = 0, repeat: int = 15, min_repeat_ms: float = 20.0,
                 retries: int = 3, retry_delay_s: float = 1.0, timeout_s: float = 30.0, statistic: str = "median",
                 direct: bool = False):
        if rpc is None and not target.is_local:
            raise TargetError(f"target {target.name} ({target.arch}) cannot run on this machine; "
                              f"give --rpc HOST:PORT --key KEY of a tracker that serves it")
        from dcpnas.config import MAX_THREADS

        for name, v, lo in (("threads", threads, 1), ("repeat", repeat, 1), ("warmup", warmup, 0), ("number", number, 0)):
            if v is not None and not (lo <= v <= (MAX_THREADS if name == "threads" else 10**6)):
                raise DeviceError(f"--{name} must be in {lo}..{MAX_THREADS if name == 'threads' else 10**6}, got {v}")
        if not 0 < min_repeat_ms < 1e6 or not 0 < timeout_s < 1e6:
            raise DeviceError(f"--min-repeat-ms and the RPC timeout must be finite and > 0, got {min_repeat_ms}, {timeout_s}")
        self.target, self.rpc, self.key = target, rpc, key or target.rpc_key
        self.threads = threads or target.threads
        self.warmup, self.number, self.repeat, self.min_repeat_ms = warmup, number, repeat, min_repeat_ms
        self.retries, self.retry_delay_s, self.timeout_s = retries, retry_delay_s, timeout_s
        self.hostport = parse_hostport(rpc) if rpc else None
        if statistic not in STATISTICS:
            raise DeviceError(f"unknown statistic {statistic!r}; choose {' or '.join(STATISTICS)}")
        self.statistic = statistic
        self.direct = direct

    @property
    def device_name(self) -> str:
        if self.rpc:
            return f"rpc {'server' if self.direct else self.key}@{self.rpc}"
        return local_device_name()

    @contextlib.contextmanager
    def session(self) -> Iterator["Session"]:
        """A connected session (local, or an RPC session from the tracker), thread pool configured."""
        remote = self._connect() if self.hostport else None
        sess = Session(self, remote)
        try:
            sess.configure_threads(self.threads)
            yield sess
        finally:
            sess.close()

    # ---- RPC connection with bounded retries ----------------------------------------------------
    def _answered(self, connect, host: str, port: int):
        """connect() (TVM's RPC handshake, which blocks forever on a peer that accepts and never answers),
        given timeout_s; past it, DeviceError (the blocked handshake is left to a daemon thread)."""
        import threading

        box: dict = {}

        def run():
            try:
                box["value"] = connect()
            except BaseException as e:  # handed to the caller's thread
                box["error"] = e

        t = threading.Thread(target=run, daemon=True, name="rpc-handshake")
        t.start()
        t.join(self.timeout_s)
        if t.is_alive():
            raise DeviceError(f"{host}:{port} accepted the connection but did not answer the TVM RPC handshake "
                              f"within {self.timeout_s:g} s; is it a TVM RPC {'server' if self.direct else 'tracker'}?")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _connect(self):
        from tvm import rpc

        host, port = self.hostport
        last = None
        for attempt in range(self.retries):
            try:
                with socket.create_connection((host, port), timeout=self.timeout_s):
                    pass  # reachable: TVM's own connect would spin on refusals for 60 s
                if self.direct:
                    return self._answered(lambda: rpc.connect(host, port, session_timeout=0), host, port)
                tracker = self._answered(lambda: rpc.connect_tracker(host, port), host, port)
                tracker._sock.settimeout(self.timeout_s)  # the request blocks forever without a free server
                keys = {k for k, q in tracker.summary().get("queue_info", {}).items()}
                servers = [s["key"].split(":", 1)[-1] for s in tracker.summary().get("server_info", [])]
                if self.key not in keys and self.key not in servers:
                    last = f"no RPC server registered with key {self.key!r} (tracker knows: {', '.join(sorted(set(servers))) or 'none'})"
                    tracker.close()
                else:
                    remote = tracker.request(self.key, priority=1, session_timeout=0, max_retry=1)
                    tracker.close()
                    return remote
            except (OSError, RuntimeError, socket.timeout) as e:
                last = f"{type(e).__name__}: {e}".strip()
            if attempt + 1 < self.retries:
                time.sleep(self.retry_delay_s)
        if self.direct:
            raise DeviceError(f"cannot reach the RPC server at {host}:{port} after {self.retries} tries ({last})")
        raise DeviceError(f"cannot reach device {self.key!r} through the RPC tracker at {host}:{port} after "
                          f"{self.retries} tries ({last}); start `python -m tvm.exec.rpc_tracker` and "
                          f"`python -m tvm.exec.rpc_server --tracker {host}:{port} --key {self.key}` (docs/rpc.md)")


class Session:
    """One open local or remote session: load modules, make tensors, time functions."""

    def __init__(self, profiler: Profiler, remote=None):
        import tvm

        self.profiler, self.remote = profiler, remote
        gpu = profiler.target.arch == "cuda"
        if remote is not None:
            self.dev = remote.cuda(0) if gpu else remote.cpu(0)
        else:
            self.dev = tvm.cuda(0) if gpu else tvm.cpu(0)
            if gpu and not self.dev.exist:
                raise DeviceError("no CUDA GPU on this machine; bench a cuda target on a GPU host or through --rpc")
        self._uploaded: dict[str, str] = {}

    def configure_threads(self, threads: int) -> None:
        """Fix the size of TVM's CPU thread pool (local or on the remote); `self.threads` is the count
        the runtime reports afterwards. TVM's default is half the logical CPUs on x86 (it assumes SMT)
        and its pool caps a reconfiguration at TVM_NUM_THREADS, hence the environment variable."""
        self.threads = 1
        if self.profiler.target.arch == "cuda":
            return
        try:
            if self.remote is not None:
                get = self.remote.get_function
            else:
                import os

                import tvm

                os.environ["TVM_NUM_THREADS"] = str(threads)  # read by the runtime when it (re)sizes the pool
                get = tvm.get_global_func
            # -3: every worker may run on every core (the OS balances them; pinning one worker per core
            # stalls each parallel region whenever another process holds that core); 1: big cores
            for mode in (-3, 1):
                get("runtime.config_threadpool")(mode, threads)
                self.threads = int(get("runtime.NumThreads")())
                if self.threads == threads:
                    break
        except Exception as e:  # RPC and FFI errors come in several types
            raise DeviceError(f"cannot set {threads} threads on {self.profiler.device_name}: {e}") from None

    def close(self) -> None:
        self.remote = None  # the RPC session closes when its last reference goes

    def load(self, path: str | Path):
        """Load an exported library (uploading it first when remote)."""
        import tvm

        path = Path(path)
        if not path.is_file():
            raise DeviceError(f"{path}: compiled library not found")
        if self.remote is None:
            return tvm.runtime.load_module(str(path))
        # a unique remote name: re-uploading over a library the server has loaded (two builds both
        # called model.so) would truncate a mapped file and crash the server
        name = self._uploaded.setdefault(str(path.resolve()), f"{len(self._uploaded)}_{path.name}")
        try:
            self.remote.upload(str(path), target=name)
            return self.remote.load_module(name)
        except Exception as e:
            raise DeviceError(f"cannot upload or load {path.name} on {self.profiler.device_name}: {e}") from None

    def tensor(self, array: np.ndarray):
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(array), self.dev)

    def vm(self, mod):
        """A Relax VirtualMachine over a loaded executable module."""
        from tvm import relax

        return relax.VirtualMachine(mod, self.dev)

    def time_vm(self, mod, inputs: Sequence[np.ndarray], func: str = "main") -> Timing:
        """Time the Relax VM function `func` (end to end) on numpy `inputs`."""
        vm = self.vm(mod)
        args = [self.tensor(a) for a in inputs]
        return self._time(vm, func, args)

    def vm_sampler(self, mod, inputs: Sequence[np.ndarray], func: str = "main") -> "Sampler":
        """A Sampler of the Relax VM function `func` (for `interleaved`): TVM's time_evaluator, one
        sample of `number` runs per call, in C++ (no Python call overhead in the figure)."""
        vm = self.vm(mod)
        args = [self.tensor(a) for a in inputs]
        evs: dict[int, object] = {}

        def sample(number: int) -> float:
            if number not in evs:
                evs[number] = vm.time_evaluator(func, self.dev, number=number, repeat=1, min_repeat_ms=0)
            try:
                return float(evs[number](*args).results[0])
            except Exception as e:
                raise DeviceError(f"timing {func!r} failed on {self.profiler.device_name}: {e}") from None
        return sample

    def vm_calls(self, mod, inputs: Sequence[np.ndarray], func: str = "main") -> list[str]:
        """The calls one run of the Relax VM function `func` makes, in order: the symbol of each (a
        PrimFunc's name, or a builtin's such as 'vm.builtin.alloc_tensor'). Local sessions only."""
        if self.remote is not None:
            raise DeviceError("the calls of a VM run are recorded on this host only, not over RPC")
        vm = self.vm(mod)
        seen: list[str] = []

        def record(_func, symbol, before, _ret, *_args):
            if before:
                seen.append(str(symbol))
            return 0  # VMInstrumentReturnKind.NO_OP

        vm.set_instrument(record)
        try:
            vm[func](*[self.tensor(a) for a in inputs])
        except Exception as e:
            raise DeviceError(f"running {func!r} failed on {self.profiler.device_name}: {e}") from None
        return seen

    def inrun_sampler(self, mod, inputs: Sequence[np.ndarray], func: str = "main") -> "InRunSampler":
        """A Sampler of `func` run with the C call timer (targets/vmtimer.py) set as the VM's instrument:
        each sample also records every call's time inside the run. Local CPU sessions only
        (DeviceError otherwise, or when the timer cannot be built)."""
        from dcpnas.targets.vmtimer import call_timer

        if self.remote is not None or self.profiler.target.arch == "cuda":
            raise DeviceError("in-run timing of a VM's calls runs on a local CPU only")
        calls = self.vm_calls(mod, inputs, func)
        timer = call_timer()
        vm = self.vm(mod)
        vm.set_instrument(timer.function)
        return InRunSampler(vm, self.dev, [self.tensor(a) for a in inputs], func, timer, calls,
                            self.profiler.device_name)

    def time_func(self, mod, name: str, args: Sequence) -> Timing:
        """Time one packed function of a loaded module (a PrimFunc by name); `args` numpy or tensors."""
        args = [self.tensor(a) if isinstance(a, np.ndarray) else a for a in args]
        return self._time(find_function_owner(mod, name), name, args)

    def _time(self, owner, name: str, args) -> Timing:
        p = self.profiler
        try:
            f = owner[name]
            for _ in range(p.warmup):
                f(*args)
            self.dev.sync()
            number = p.number or self._calibrate_number(owner, name, args)
            ev = owner.time_evaluator(name, self.dev, number=number, repeat=p.repeat, min_repeat_ms=0)
            res = ev(*args)
        except Exception as e:
            raise DeviceError(f"timing {name!r} failed on {p.device_name}: {e}") from None
        return Timing.from_samples(res.results, number)

    def _calibrate_number(self, owner, name, args) -> int:
        """Runs per sample so that one sample lasts about min_repeat_ms (at least 1)."""
        ev = owner.time_evaluator(name, self.dev, number=1, repeat=3)
        t = max(float(np.median(ev(*args).results)) * 1e3, 1e-4)
        return int(max(1, min(10000, round(self.profiler.min_repeat_ms / t))))


# sample(number) -> seconds per run, averaged over `number` back-to-back runs
Sampler = Callable[[int], float]


class InRunSampler:
    """A Sampler (sample(number) -> seconds per run, TVM's time_evaluator) of a VM whose instrument is the
    C call timer. Each sample also appends to `per_call_ms` the mean time of every call of the run
    (ms, in the order of `calls`) over the sample's `number` timed runs: time_evaluator's untimed first
    run is skipped, so a sample's calls all lie inside its timed window and sum to at most its time."""

    def __init__(self, vm, dev, args, func: str, timer, calls: list[str], device_name: str):
        self.vm, self.dev, self.args, self.func, self.timer = vm, dev, args, func, timer
        self.calls = list(calls)
        self.device_name = device_name
        self.per_call_ms: list[np.ndarray] = []
        self.samples_s: list[float] = []
        self._evs: dict[int, object] = {}

    def __call__(self, number: int) -> float:
        n = len(self.calls)
        if number not in self._evs:
            self._evs[number] = self.vm.time_evaluator(self.func, self.dev, number=number, repeat=1, min_repeat_ms=0)
        buf = self.timer.start(n, skip=n)  # time_evaluator's first run is untimed: skip its calls
        try:
            t = float(self._evs[number](*self.args).results[0])
        except Exception as e:
            raise DeviceError(f"timing {self.func!r} (instrumented) failed on {self.device_name}: {e}") from None
        seen = self.timer.count()
        if seen != (number + 1) * n:  # a run whose calls vary would misattribute every slot
            raise DeviceError(f"{self.func!r} made {seen} VM calls in {number + 1} runs, not {n} per run: "
                              f"its calls are not the same every run, in-run timing cannot attribute them")
        self.per_call_ms.append(buf / number / 1e6)
        self.samples_s.append(t)
        return t


def python_sampler(fn: Callable[[], object]) -> Sampler:
    """A Sampler of a Python callable (ONNX Runtime, OpenVINO): wall time of `number` calls."""
    def sample(number: int) -> float:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number
    return sample


def interleaved_samples(samplers: dict[str, Sampler], *, warmup: int = 3, rounds: int = 15,
                        min_repeat_ms: float = 20.0, pause_s: float = 0.002,
                        number: dict[str, int] | None = None) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Time peers side by side: after warm-up, each round takes one sample (about min_repeat_ms long)
    of every peer in turn, the order rotating by one each round, with a short pause between samples
    (TVM's idle workers spin for a while after a call; the pause keeps them off the next peer). A
    load swing on a shared host then hits every peer alike, and ratios hold where absolute times do
    not. Returns ({name: [seconds per run, one per round]}, {name: runs per sample}); `number`
    fixes the runs per sample (else calibrated here)."""
    names = list(samplers)
    number = dict(number or {})
    for n in names:
        f = samplers[n]
        f(max(1, warmup))
        if n not in number:
            one = min(f(1) for _ in range(3))
            number[n] = int(max(1, min(10000, round(min_repeat_ms / 1e3 / max(one, 1e-7)))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for i in range(len(names)):
            n = names[(i + r) % len(names)]
            time.sleep(pause_s)
            samples[n].append(samplers[n](number[n]))
    return samples, number


def interleaved(samplers: dict[str, Sampler], *, warmup: int = 3, rounds: int = 15, min_repeat_ms: float = 20.0,
                pause_s: float = 0.002) -> dict[str, Timing]:
    """interleaved_samples summarised: {name: Timing} over the `rounds` samples of each peer."""
    samples, number = interleaved_samples(samplers, warmup=warmup, rounds=rounds, min_repeat_ms=min_repeat_ms,
                                          pause_s=pause_s)
    return {n: Timing.from_samples(v, number[n]) for n, v in samples.items()}


def find_function_owner(mod, name: str):
    """The module that holds function `name`: `mod` itself, or one of its imports (the compiled
    PrimFuncs of a Relax executable live in its imported library; over RPC the remote module
    resolves them itself). DeviceError when none has it."""
    todo = [mod]
    while todo:
        m = todo.pop(0)
        try:
            m[name]
            return m
        except Exception:  # AttributeError locally, RPC errors remotely
            todo.extend(getattr(m, "imports", ()) or ())
    raise DeviceError(f"the compiled library has no function {name!r}")


def local_device_name() -> str:
    """'AMD EPYC ... (x86_64, N cpus)' from /proc/cpuinfo, best effort."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({platform.machine()}, {os.cpu_count()} cpus)"

"""The RPC path: a TVM tracker + rpc_server on loopback, a library uploaded and timed remotely;
bounded, clear errors for unreachable trackers and unknown keys."""

import time

import numpy as np
import pytest

from dcpnas.errors import DeviceError, TargetError
from dcpnas.targets import get_target
from dcpnas.targets.profiler import Profiler, Timing, parse_hostport

pytestmark = pytest.mark.tvm


def _lib(tmp_path, target):
    import tvm
    from tvm import te

    a = te.placeholder((256,), "float32", name="a")
    b = te.compute((256,), lambda i: a[i] * 2.0 + 1.0, name="b")
    path = tmp_path / "axpb.so"
    tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), target=target.tvm_target()).export_library(str(path))
    return path


def test_timing_summary():
    t = Timing.from_samples([0.001, 0.002, 0.003, 0.004, 0.010], number=7)
    assert t.median_ms == pytest.approx(3.0) and t.q1_ms == pytest.approx(2.0) and t.q3_ms == pytest.approx(4.0)
    assert t.iqr_ms == pytest.approx(2.0) and t.min_ms == pytest.approx(1.0) and t.count == 5 and t.number == 7


@pytest.mark.parametrize("spec", ["localhost", "host:", ":9190", "host:99999", "host:abc"])
def test_bad_rpc_spec(spec):
    with pytest.raises(DeviceError, match="HOST:PORT"):
        parse_hostport(spec)


def test_arm_target_needs_rpc():
    with pytest.raises(TargetError, match="--rpc"):
        Profiler(get_target("arm-a72"))


def test_unreachable_tracker_bounded():
    from dcpnas.targets.rpclocal import free_port

    prof = Profiler(get_target("x86-avx512"), rpc=f"127.0.0.1:{free_port()}", retries=2, retry_delay_s=0.1, timeout_s=2)
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="after 2 tries.*refused"):
        with prof.session():
            pass
    assert time.monotonic() - t0 < 10


def test_local_profiler_fixed_threads(tmp_path):
    target = get_target("x86-avx512")
    with Profiler(target, repeat=3, min_repeat_ms=1).session() as s:
        assert s.threads == 2
        mod = s.load(_lib(tmp_path, target))
        out = s.tensor(np.zeros(256, "float32"))
        r = s.time_func(mod, "main", [np.arange(256, dtype="float32"), out])
        assert r.count == 3 and r.median_ms > 0
        np.testing.assert_allclose(out.numpy(), np.arange(256) * 2.0 + 1.0)


@pytest.mark.slow
def test_loopback_tracker_and_server(tmp_path):
    pytest.importorskip("tornado", reason="TVM's rpc_tracker needs the tornado package")
    from dcpnas.targets.rpclocal import local_rpc

    target = get_target("x86-avx512")
    lib = _lib(tmp_path, target)
    with local_rpc("dcpnas-test", threads=2, timeout_s=90) as addr:
        prof = Profiler(target, rpc=addr, key="dcpnas-test", repeat=3, min_repeat_ms=1, timeout_s=30)
        assert prof.device_name == f"rpc dcpnas-test@{addr}"
        with prof.session() as s:
            assert s.threads == 2  # set remotely through runtime.config_threadpool
            mod = s.load(lib)  # uploaded to the server
            out = s.tensor(np.zeros(256, "float32"))
            r = s.time_func(mod, "main", [np.arange(256, dtype="float32"), out])
            np.testing.assert_allclose(out.numpy(), np.arange(256) * 2.0 + 1.0)
            assert r.count == 3 and r.median_ms > 0
        wrong = Profiler(target, rpc=addr, key="no-such-board", retries=2, retry_delay_s=0.1, timeout_s=5)
        with pytest.raises(DeviceError, match="no RPC server registered with key 'no-such-board'.*dcpnas-test"):
            with wrong.session():
                pass


@pytest.mark.arm
def test_emulated_aarch64_rpc_server_times_a_cross_compiled_op(tmp_path):
    """The board path end to end under qemu-user: cross-compile an op through the project pipeline,
    upload it to an aarch64 RPC server, run and time it there. The LUT is labelled `emulated`."""
    from dcpnas.targets import armrpc
    from dcpnas.targets.lut import LatencyTable
    from dcpnas.targets.measure import build_lut

    why = armrpc.missing()
    if why:
        pytest.skip(why)
    target = get_target("arm-a72")
    keys = ["pre_conv1x1|12|4|8|8|1", "max_pool_3x3|4|4|8|8|1"]
    with armrpc.qemu_rpc_server() as addr:
        prof = Profiler(target, rpc=addr, direct=True, repeat=2, warmup=1, min_repeat_ms=1, timeout_s=60)
        lut = build_lut(target, keys, tmp_path / "arm-a72.emulated.json", prof, method="emulated")
    assert lut.method == "emulated" and lut.device == f"rpc server@{addr}" and list(lut.entries) == keys
    assert all(e["median_ms"] > 0 for e in lut.entries.values())
    assert LatencyTable.load(tmp_path / "arm-a72.emulated.json").method == "emulated"

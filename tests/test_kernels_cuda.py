"""CUDA binary conv: generated source uses __popc and thread binding, nvcc compiles it to PTX; runs on a GPU
only when one is present (this machine has none)."""

import shutil

import numpy as np
import pytest

from dcpnas.compiler.kernels import BinaryConvAttrs, BinaryConvModule, binary_conv2d_reference, pack_weights

SM80 = {"kind": "cuda", "arch": "sm_80", "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
        "thread_warp_size": 32}

pytestmark = [pytest.mark.cuda, pytest.mark.tvm]

CASES = [(64, 14, 64, 3, 1, 1, 1), (40, 9, 24, 3, 2, 2, 1), (72, 7, 72, 3, 1, 1, 72),
         (32, 7, 32, 1, 1, 1, 1)]  # the last: a one-word input window per block (no shared staging)


def _module(case, rng):
    c, h, co, k, s, d, g = case
    attrs = BinaryConvAttrs((k, k), (s, s), (d * (k // 2),) * 4, (d, d), g, c)
    x = rng.standard_normal((1, c, h, h)).astype(np.float32)
    wb = pack_weights(rng.standard_normal((co, c // g, k, k)))
    scale, bias = rng.uniform(0.5, 2, co).astype(np.float32), rng.standard_normal(co).astype(np.float32)
    return BinaryConvModule(x.shape, wb, scale, bias, attrs, SM80), x, binary_conv2d_reference(x, wb, scale, bias, attrs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "c{}h{}co{}k{}s{}d{}g{}".format(*c))
def test_cuda_codegen_and_ptx(case):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    import tvm
    from tvm.support import nvcc

    m, _, _ = _module(case, np.random.default_rng(0))
    src = m.executable.mod.imports[0].inspect_source("cuda")
    assert "__popc" in src and "blockIdx.x" in src and "threadIdx.x" in src
    if (case[2] // case[6]) % 32 == 0 and case[3] > 1:  # channel form: the packed-input window is staged in shared memory
        assert "__shared__" in src and "__syncthreads()" in src
    with m.target:
        ptx = nvcc.compile_cuda(src, target_format="ptx", arch="sm_80", compiler="nvcc")
    ptx = bytes(ptx).decode() if not isinstance(ptx, str) else ptx
    assert "popc.b32" in ptx and ".entry" in ptx


def test_cuda_runs_on_gpu():
    import tvm

    if not tvm.cuda(0).exist:
        pytest.skip("no CUDA GPU on this machine")
    m, x, ref = _module(CASES[0], np.random.default_rng(1))
    dev = tvm.cuda(0)
    rt = m.executable.jit() if hasattr(m.executable, "jit") else m.executable
    arrs = m.arrays(x)
    pack = [tvm.runtime.tensor(a, dev) for a in arrs["binpack"]]
    rt["binpack"](*pack)
    conv = [pack[-1]] + [tvm.runtime.tensor(a, dev) for a in arrs["binconv"][1:]]
    rt["binconv"](*conv)
    np.testing.assert_allclose(conv[-1].numpy().reshape(ref.shape), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.slow
def test_cuda_check_bundle(tmp_path):
    """benchmarks/cuda_check.py prepare builds fatbin modules + references (and one b1 tensor-core case, as
    the MMA kernel and the popcount kernels); run refuses cleanly without a GPU."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_check.py"
    bundle = tmp_path / "bundle"
    subprocess.run([sys.executable, str(script), "prepare", str(bundle), "--quick", "--b1", "quick"], check=True,
                   capture_output=True)
    man = json.loads((bundle / "manifest.json").read_text())
    (b1,) = man["b1"]
    assert b1["op"] == "and" and b1["batch"] == 16 and set(b1["kernels"]) == {"bmma", "xnor"}
    assert b"mma.sync" not in (bundle / b1["kernels"]["bmma"]["lib"]).read_bytes()  # a fatbin, not source
    for k in b1["kernels"].values():
        assert len(np.load(bundle / k["data"]).files) == k["n_consts"] and b"sm_90" in (bundle / k["lib"]).read_bytes()
    assert [c["kernel"] for c in man["convs"]] == ["xnor", "xnor", "pm1", "xnor"] and man["target"] == "cuda-sm90"
    for c in man["convs"]:
        data = np.load(bundle / c["data"])
        assert data["ref"].shape[0] == c["x_shape"][0] and b"sm_90" in (bundle / c["lib"]).read_bytes()
    import tvm

    if not tvm.cuda(0).exist:
        r = subprocess.run([sys.executable, str(script), "run", str(bundle), "-o", str(tmp_path / "out")],
                           capture_output=True, text=True)
        assert r.returncode != 0 and not (tmp_path / "out" / "cuda_check.json").exists()


@pytest.mark.parametrize("h,lanes", [(14, True), (126, False)])
def test_cuda_pack_schedule_choice(h, lanes):
    """Few packed words: one lane per bit, the word a warp-shuffle sum; many: one thread per word."""
    m, _, _ = _module((64, h, 64, 3, 1, 1, 1), np.random.default_rng(2))
    src = m.executable.mod.imports[0].inspect_source("cuda")
    start = src.rindex("binpack_kernel(")  # the definition (declarations come first)
    pack = src[start:src.find("__global__", start)]
    assert ("__shfl_down_sync" in pack) == lanes
    assert ("threadIdx.y" in pack) == lanes

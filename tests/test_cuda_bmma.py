"""The b1 tensor-core conv (compiler/kernels/bmma_cuda.py) without a GPU: the numpy model of the MMA fragment
layout and the AND correction against the reference, the kernel rule, and the SASS nvcc makes of the generated
CUDA (BMMA.AND on sm_90 with no XOR emulation, BMMA.XOR on sm_80); a run against the reference where a GPU exists."""

import re
from dataclasses import replace

import numpy as np
import pytest

from dcpnas.compiler.kernels import BinaryConvAttrs, BinaryConvModule, binary_conv2d_reference, pack_weights
from dcpnas.compiler.kernels.binary_conv import ConvGeometry
from dcpnas.compiler.kernels.bmma_cuda import (BmmaTiles, bmma_op, choose_mma, fold_weight_popcount, mma_model,
                                               model_conv)
from dcpnas.compiler.kernels.pack import border_correction, pack_activations_reference, weights_to_words

SM80 = {"kind": "cuda", "arch": "sm_80"}
SM90 = {"kind": "cuda", "arch": "sm_90"}

# (n, c_in, h, c_out, k, stride, dilation): tails in every direction (rows past M, columns past C_out,
# channels not a multiple of 32, K words not a multiple of 8), strides, dilation, a 1x1 with K > 256 bits
MODEL_CASES = [(2, 64, 9, 40, 3, 1, 1), (1, 40, 7, 20, 3, 2, 2), (3, 300, 5, 16, 1, 1, 1), (1, 96, 6, 72, 3, 1, 1)]


def _problem(case, rng, prelu=True):
    n, c, h, co, k, s, d = case
    attrs = BinaryConvAttrs((k, k), (s, s), (d * (k // 2),) * 4, (d, d), 1, c)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    wb = pack_weights(rng.standard_normal((co, c, k, k)))
    ep = {"scale": rng.uniform(0.5, 2, co).astype(np.float32), "bias": rng.standard_normal(co).astype(np.float32),
          "prelu": rng.uniform(0, 0.3, co).astype(np.float32) if prelu else None}
    return attrs, x, wb, ep


@pytest.mark.parametrize("op", ["xor", "and"])
@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: "n{}c{}h{}co{}k{}s{}d{}".format(*c))
def test_model_matches_reference(case, op):
    """The kernel's fragment assembly (its own index functions) through the PTX fragment model, with the AND
    correction (popc(b) folded into corr, popc(a) from the all-ones MMA) and the fused epilogue."""
    attrs, x, wb, ep = _problem(case, np.random.default_rng(hash(case) % 2**32))
    n, c, h, co = case[:4]
    geo = ConvGeometry(n, c, h, h, co, attrs)
    p, wt = pack_activations_reference(x, attrs), weights_to_words(wb, attrs)
    corr, ycls, xcls = border_correction(wb, attrs, h, h)
    if op == "and":
        corr = fold_weight_popcount(corr, wt)
    got = model_conv(geo, op, p, wt, corr, ycls, xcls, ep["scale"][None], ep["bias"][None], ep["prelu"][None])
    want = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs, prelu=ep["prelu"])
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_and_needs_the_weight_term():
    """Without popc(b) folded in, the AND form is off by exactly 2 popc(b) * scale per output channel."""
    case = MODEL_CASES[0]
    attrs, x, wb, ep = _problem(case, np.random.default_rng(3), prelu=False)
    n, c, h, co = case[:4]
    geo = ConvGeometry(n, c, h, h, co, attrs)
    p, wt = pack_activations_reference(x, attrs), weights_to_words(wb, attrs)
    corr, ycls, xcls = border_correction(wb, attrs, h, h)
    ones = np.ones((1, co), np.float32)
    zero = np.zeros((1, co), np.float32)
    right = model_conv(geo, "and", p, wt, fold_weight_popcount(corr, wt), ycls, xcls, ones, zero)
    wrong = model_conv(geo, "and", p, wt, corr, ycls, xcls, ones, zero)
    popc_b = np.unpackbits(wb, axis=1, bitorder="little")[:, :c].sum(axis=(1, 2, 3))
    np.testing.assert_array_equal(wrong - right, np.broadcast_to((2 * popc_b)[None, None, :, None, None], right.shape))


@pytest.mark.parametrize("op", ["xor", "and"])
def test_mma_model_is_a_bit_gemm(op):
    """mma_model: a 16x256 by 256x8 bit GEMM distributed as the PTX ISA's m16n8k256 b1 fragments."""
    rng = np.random.default_rng(4)
    a = rng.integers(0, 2, (16, 256), dtype=np.uint8)
    b = rng.integers(0, 2, (256, 8), dtype=np.uint8)
    words_a = np.packbits(a, axis=1, bitorder="little").view("<u4")  # [16, 8]
    words_b = np.packbits(np.ascontiguousarray(b.T), axis=1, bitorder="little").view("<u4")  # [8, 8]
    lane = np.arange(32)
    g, t = lane // 4, lane % 4
    af = np.stack([words_a[g + 8 * (i % 2), t + 4 * (i // 2)] for i in range(4)], 1)
    bf = np.stack([words_b[g, t + 4 * i] for i in range(2)], 1)
    acc = rng.integers(-100, 100, (32, 4)).astype(np.int32)
    d = mma_model(af, bf, acc, op)
    f = np.bitwise_xor if op == "xor" else np.bitwise_and
    want = f(a[:, :, None], b[None, :, :]).sum(axis=1)  # [16 rows, 8 columns]
    for i in range(4):
        np.testing.assert_array_equal(d[:, i] - acc[:, i], want[g + 8 * (i // 2), 2 * t + i % 2])


def test_kernel_rule():
    attrs = BinaryConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 128)
    big, small = ConvGeometry(16, 128, 14, 14, 128, attrs), ConvGeometry(1, 128, 7, 7, 128, attrs)
    assert (bmma_op(SM80), bmma_op({"kind": "cuda", "arch": "sm_86"}), bmma_op(SM90)) == ("xor", "xor", "and")
    assert bmma_op({"kind": "cuda", "arch": "sm_100"}) == "" and bmma_op({"kind": "cuda", "arch": "sm_75"}) == ""
    assert choose_mma(big, SM90) == "and" and choose_mma(big, SM80) == "xor"
    assert choose_mma(small, SM90) == ""  # batch 1, 49 GEMM rows: the popcount kernels stay
    b1_28 = ConvGeometry(1, 64, 28, 28, 64, BinaryConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 64))
    assert choose_mma(b1_28, SM90) == "" and choose_mma(replace(b1_28, n=16), SM90) == "and"
    grouped = BinaryConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, 128)
    assert choose_mma(ConvGeometry(16, 128, 14, 14, 128, grouped), SM90) == ""
    assert BmmaTiles.for_geometry(big).nt == 4


def _source(target, case, rng, mma=None):
    attrs, x, wb, ep = _problem(case, rng)
    m = BinaryConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, target, prelu=ep["prelu"], mma=mma)
    return m, x, wb, ep, attrs, m.executable.mod.imports[0].inspect_source("cuda")


def _bmma_sass(target, src, tmp_path, mma):
    """-> (the set of BMMA ops in nvcc's SASS of `src`, BMMAs per b1 mma.sync of nvcc's PTX, the SASS).
    src: a conv of 9 taps x 4 words = 36 K words, i.e. 5 K steps."""
    from dcpnas.compiler.cuda_host import compile_cuda, sass

    steps = 5
    ptx = compile_cuda(src, target["arch"], tmp_path / f"{mma}.ptx", "ptx").read_text()
    n_mma = len(re.findall(r"mma\.sync\.aligned\.m16n8k256\.row\.col\.s32\.b1\.b1\.s32\.\w+\.popc", ptx))
    text = sass(compile_cuda(src, target["arch"], tmp_path / f"{mma}.cubin"))
    bmma = re.findall(r"BMMA\.\w+\.(\w+)\.POPC", text)
    assert n_mma > 0 and bmma
    ratio = len(bmma) / n_mma  # ptxas may unroll the K loop fully: then `steps` BMMAs per mma.sync
    return set(bmma), (ratio / steps if ratio >= steps else ratio), text


@pytest.mark.tvm
@pytest.mark.cuda
@pytest.mark.parametrize("target,op", [(SM90, "and"), (SM80, "xor")], ids=["sm_90", "sm_80"])
def test_sass_has_native_bmma(target, op, tmp_path):
    """nvcc's SASS of the compiler-chosen kernel: BMMA.<op>.POPC only, one per b1 mma.sync, no emulation
    routine. A forced XOR on sm_90 shows what is avoided: ptxas calls __cuda_sm_9x_mma_bit_internal_xor_*
    (two BMMA.AND + LOP3s) for each mma.sync."""
    from dcpnas.compiler.cuda_host import cuda_tool

    if cuda_tool("nvcc") is None or cuda_tool("nvdisasm") is None:
        pytest.skip("needs nvcc (CUDA 13 toolkit) and nvdisasm (pip install nvidia-cuda-nvdisasm)")
    *_, src = _source(target, (16, 128, 14, 128, 3, 1, 1), np.random.default_rng(5))
    assert set(re.findall(r"b1\.s32\.(\w+)\.popc", src)) == {op}  # the compiler's choice for this layer
    ops, per_mma, text = _bmma_sass(target, src, tmp_path, op)
    assert (ops, per_mma) == ({op.upper()}, 1) and "mma_bit_internal" not in text
    if target is SM90:
        *_, xor_src = _source(SM90, (1, 128, 14, 128, 3, 1, 1), np.random.default_rng(5), mma="xor")
        ops, _, text = _bmma_sass(SM90, xor_src, tmp_path, "xor")
        assert ops == {"AND"} and "mma_bit_internal_xor" in text


@pytest.mark.tvm
@pytest.mark.cuda
def test_small_layers_keep_popcount():
    *_, src = _source(SM90, (1, 64, 14, 64, 3, 1, 1), np.random.default_rng(6))
    assert "mma.sync" not in src and "__popc" in src


@pytest.mark.tvm
@pytest.mark.cuda
@pytest.mark.parametrize("target", [SM80, SM90], ids=["sm_80", "sm_90"])
def test_bmma_runs_on_gpu(target):
    import tvm

    dev = tvm.cuda(0)
    if not dev.exist:
        pytest.skip("no CUDA GPU on this machine (the numpy model and the SASS are checked above)")
    major = int(dev.compute_version.split(".")[0])
    if (target is SM90) != (major == 9):
        pytest.skip(f"this GPU is sm_{dev.compute_version}")
    m, x, wb, ep, attrs, _ = _source(target, (16, 128, 14, 128, 3, 1, 1), np.random.default_rng(7))
    rt = m.executable.jit()
    arrs = m.arrays(x)
    pack = [tvm.runtime.tensor(a, dev) for a in arrs["binpack"]]
    rt["binpack"](*pack)
    conv = [pack[-1]] + [tvm.runtime.tensor(a, dev) for a in arrs["binconv"][1:]]
    rt["binconv"](*conv)
    want = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs, prelu=ep["prelu"])
    np.testing.assert_allclose(conv[-1].numpy().reshape(want.shape), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.tvm
@pytest.mark.cuda
def test_without_prelu_signature():
    """No PReLU: the popcount conv's signature (P, Wt, corr, ycls, xcls, scale, bias, out5), no slope."""
    attrs, x, wb, ep = _problem((16, 128, 14, 128, 3, 1, 1), np.random.default_rng(8), prelu=False)
    m = BinaryConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, SM90)
    assert m.geo.mma == "and" and len(m.ir_module["binconv"].params) == 8 == len(m.arrays(x)["binconv"])


def test_module_constants_through_the_model(benchmark_script):
    """The constants the compiler emits for the AND kernel (conv_constants: 2 popc(b) folded into corr) give
    the reference through the numpy model; the GPU benchmark's PyTorch reference agrees with the numpy one."""

    from dcpnas.compiler.kernels import conv_constants, geometry

    case = (2, 64, 9, 40, 3, 1, 1)
    attrs, x, wb, ep = _problem(case, np.random.default_rng(9))
    geo = geometry(x.shape, wb, attrs, SM90, mma="and")
    consts = conv_constants(geo, wb, ep["scale"], ep["bias"], ep["prelu"])
    got = model_conv(geo, "and", pack_activations_reference(x, attrs), *consts)
    want = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs, prelu=ep["prelu"])
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    cc = benchmark_script("cuda_check")
    plain = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs)
    torch_ref = cc.sign_conv_reference(x, wb, ep["scale"], ep["bias"], 64, {"stride": 1, "padding": 1}, "cpu")
    np.testing.assert_allclose(torch_ref, plain, rtol=1e-6, atol=1e-6 * np.abs(plain).max())


def test_goal_evaluation(benchmark_script):
    """cuda_check's verdict on issue 15's goal reads only batch-16 3x3 MMA rows of >= 128 channels."""

    cc = benchmark_script("cuda_check")

    def row(name, batch, c_in, k, kernel, speedup, ms):
        return {"name": name, "batch": batch, "c_in": c_in, "k": k, "kernel": kernel, "speedup_vs_fp16": speedup,
                "binary_ms": ms, "parity_ok": True}

    rows = [row("a", 16, 128, 3, "bmma", 2.5, 1.0), row("b", 16, 256, 3, "bmma", 2.1, 1.0),
            row("a", 16, 128, 3, "xnor", 0.4, 4.0), row("c", 16, 64, 3, "bmma", 1.0, 1.0),
            row("d", 16, 256, 1, "bmma", 1.0, 1.0), row("a", 1, 128, 3, "bmma", 0.5, 1.0)]
    goal = cc.b1_goal(rows, [{"channels": 64, "speedup_vs_float": 2.9}])
    assert goal["batch16_3x3_ge128_min_speedup_vs_fp16"] == 2.1 and goal["batch16_goal_met"]
    assert not goal["net64_goal_met"] and goal["bmma_speedup_vs_popcount"] == {"a-b16": 4.0}
    rows[1]["speedup_vs_fp16"] = 1.9
    assert not cc.b1_goal(rows, [])["batch16_goal_met"]
    rows[1] = {"name": "b", "batch": 16, "c_in": 256, "k": 3, "kernel": "bmma", "parity_ok": False, "error": "x"}
    rows[0]["speedup_vs_fp16"] = 9.0
    assert cc.b1_goal(rows, [])["batch16_3x3_ge128_min_speedup_vs_fp16"] is None  # a failed kernel fails the goal


def test_check_run_survives_a_failing_stage(benchmark_script, tmp_path, monkeypatch):
    """cuda_check run: a stage that raises (a faulting kernel) is recorded, the others' results are written,
    and the run fails."""
    import json
    import types

    import torch

    cc = benchmark_script("cuda_check")
    dev = types.SimpleNamespace(exist=True, compute_version="9.0")
    monkeypatch.setattr(cc, "_import_tvm_runtime", lambda: types.SimpleNamespace(cuda=lambda i: dev, __version__="x"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "fake")
    net = {"name": "n", "cells": 6, "channels": 64, "speedup_vs_float": 3.1,
           "binary": {"parity_ok": True}, "float": {"parity_ok": True}}
    monkeypatch.setattr(cc, "run_networks", lambda *a: [net])
    monkeypatch.setattr(cc, "run_convs", lambda *a: [{"name": "c", "parity_ok": True}])

    def b1_fails(*a):
        raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS")

    monkeypatch.setattr(cc, "run_b1", b1_fails)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"target": "cuda-sm90"}))
    assert cc.run(tmp_path / "b", tmp_path / "out") == 1
    res = json.loads((tmp_path / "out" / "cuda_check.json").read_text())
    assert res["networks"] == [net] and res["convs"][0]["name"] == "c" and "ILLEGAL" in res["b1_error"]
    assert not res["parity_ok"] and not (tmp_path / "out" / "cuda_b1.json").exists()

"""The CUDA kernels and a compiled network on a real GPU: built here (no GPU needed), run there.

    # here (nvcc on PATH; no GPU needed, see compiler/cuda_host.py): every module for one
    # CUDA target, embedded as a fatbin, with its inputs and numpy/ONNX Runtime references
    .venv/bin/python benchmarks/cuda_check.py prepare build/cuda-check --target cuda-sm90
    # on the GPU machine: only the TVM runtime (libtvm_runtime + libtvm_runtime_cuda) and torch are needed
    python3 benchmarks/cuda_check.py run build/cuda-check -o results/
    # the runtime-only TVM package that `run` imports (put it on PYTHONPATH there, as cuda_check_remote.sh does),
    # made from this venv's TVM
    .venv/bin/python benchmarks/cuda_check.py runtime-pkg build/tvm-runtime

`run` checks every binary conv (pack + XNOR/popcount conv, and the +-1 kernel) against the numpy
reference and the compiled network's logits against ONNX Runtime's, then times each conv beside
PyTorch's float conv on the same GPU (cuDNN, fp32 without TF32, and fp16) and the 1-bit network beside
the float network built by the same TVM pipeline. It writes OUT/cuda_check.json and prints a table;
it exits 1 when any parity check fails.

The b1 tensor-core convs (compiler/kernels/bmma_cuda.py, B1_CASES at batch 1, 16, 64): each layer is
built twice, as the b1 MMA kernel (the target's op, whatever the compiler's rule would pick) and as the
popcount kernels; `run` checks both against an fp64 PyTorch conv of the signs on the GPU (exact: integer
sums), times them beside cuDNN fp16 (tensor cores, channels-last), fp32 and, where PyTorch has one, an
int8 GEMM of the im2col shape (torch._int_mm; the im2col itself not counted), and writes OUT/cuda_b1.json
(commit it as benchmarks/results/cuda_b1.json) with the goal of issue 15 evaluated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "dcpnas.cuda-check/1"

# (name, c_in, h, c_out, k, stride, dilation, groups, batch, prelu+in_affine): correctness and speed cases
CONV_CASES = [
    ("c64h14k3", 64, 14, 64, 3, 1, 1, 1, 1, False),
    ("c40h9k3s2d2", 40, 9, 24, 3, 2, 2, 1, 1, True),
    ("c72h7k3dw", 72, 7, 72, 3, 1, 1, 72, 1, True),
    ("c33h10k1g3", 33, 10, 48, 1, 1, 1, 3, 1, True),
    ("c64h56k3", 64, 56, 64, 3, 1, 1, 1, 1, False),
    ("c128h28k3", 128, 28, 128, 3, 1, 1, 1, 1, False),
    ("c256h14k3", 256, 14, 256, 3, 1, 1, 1, 1, False),
    ("c512h7k3", 512, 7, 512, 3, 1, 1, 1, 1, False),
    ("c256h14k3b16", 256, 14, 256, 3, 1, 1, 1, 16, False),
    ("c512h7k3b16", 512, 7, 512, 3, 1, 1, 1, 16, False),
    ("c256h14k1", 256, 14, 256, 1, 1, 1, 1, 1, False),
]
# b1 tensor-core cases: (name, c_in, h, c_out, k, stride), each at every batch of B1_BATCHES
B1_CASES = [
    ("c64h28k3", 64, 28, 64, 3, 1),
    ("c128h28k3", 128, 28, 128, 3, 1),
    ("c256h14k3", 256, 14, 256, 3, 1),
    ("c512h7k3", 512, 7, 512, 3, 1),
    ("c128h28k3s2", 128, 28, 256, 3, 2),
    ("c256h14k1", 256, 14, 256, 1, 1),
]
B1_BATCHES = (1, 16, 64)
# (name, cells, channels): networks of the genotype a README search found, 1-bit and float
NETWORKS = [("searched-6x8", 6, 8), ("searched-6x64", 6, 64)]
GENOTYPE = REPO / "tests" / "data" / "searched_genotype.json"


# ---------------------------------------------------------------- prepare (here, no GPU)
def _conv_problem(case, rng):
    from dcpnas.compiler.kernels import BinaryConvAttrs, pack_weights

    name, c, h, co, k, s, d, g, n, extra = case
    attrs = BinaryConvAttrs((k, k), (s, s), (d * (k // 2),) * 4, (d, d), g, c)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = rng.standard_normal((co, c // g, k, k)).astype(np.float32)
    ep = {"scale": rng.uniform(0.5, 2, co).astype(np.float32), "bias": rng.standard_normal(co).astype(np.float32),
          "prelu": rng.uniform(0, 0.3, co).astype(np.float32) if extra else None}
    aff = ({"in_scale": rng.uniform(0.5, 2, c).astype(np.float32), "in_shift": rng.standard_normal(c).astype(np.float32)}
           if extra else {"in_scale": None, "in_shift": None})
    return attrs, x, w, pack_weights(w), ep, aff


def prepare(bundle: Path, target_name: str, quick: bool, b1: str | None = None) -> dict:
    """b1: "all" (every B1_CASES layer at every batch), "quick" (the first at batch 16), "none";
    default "none" with quick, else "all"."""
    from dcpnas.compiler.build import resolve_target
    from dcpnas.compiler.kernels import BinaryConvModule, binary_conv2d_reference
    from dcpnas.compiler.kernels.depthwise import Pm1ConvModule, use_pm1_kernel
    from dcpnas.compiler.kernels.emit import geometry

    tgt = resolve_target(target_name)
    tdict = dict(tgt.tvm)
    bundle.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    manifest = {"schema": SCHEMA, "target": target_name, "tvm_target": tdict, "convs": [], "networks": []}
    cases = CONV_CASES[:4] if quick else CONV_CASES
    for case in cases:
        name = case[0]
        attrs, x, w, wb, ep, aff = _conv_problem(case, rng)
        t0 = time.perf_counter()
        affine = aff["in_scale"] is not None
        geo = geometry(x.shape, wb, attrs, tdict)
        pm1 = use_pm1_kernel(geo)
        kernel = "pm1" if pm1 else "bmma" if geo.mma else "xnor"  # the compiler's choice
        if pm1:
            m = Pm1ConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, tdict, prelu=ep["prelu"], in_affine=affine)
            arrays = m.arrays(x, **aff)
            calls = [("pm1conv", list(range(len(arrays))))]
        else:
            m = BinaryConvModule(x.shape, wb, ep["scale"], ep["bias"], attrs, tdict, prelu=ep["prelu"], in_affine=affine)
            a = m.arrays(x, **aff)
            arrays = a["binpack"] + a["binconv"][1:]
            npk = len(a["binpack"])
            calls = [("binpack", list(range(npk))), ("binconv", [npk - 1] + list(range(npk, len(arrays))))]
        m.export(bundle / f"{name}.so")
        ref = binary_conv2d_reference(x, wb, ep["scale"], ep["bias"], attrs, prelu=ep["prelu"], **aff)
        np.savez_compressed(bundle / f"{name}.npz", *arrays, ref=ref)
        manifest["convs"].append({
            "name": name, "lib": f"{name}.so", "data": f"{name}.npz", "kernel": kernel,
            "calls": calls, "out_index": len(arrays) - 1, "x_shape": list(x.shape), "w_shape": list(w.shape),
            "stride": attrs.strides[0], "pad": attrs.pads[0], "dilation": attrs.dilations[0], "groups": attrs.group,
            "binary_macs": int(np.prod(ref.shape) * np.prod(w.shape[1:])), "build_s": round(time.perf_counter() - t0, 2)})
        print(f"  built {name} ({kernel}) in {time.perf_counter() - t0:.1f} s", flush=True)
    b1 = b1 or ("none" if quick else "all")
    manifest["b1"] = [] if b1 == "none" else _prepare_b1(bundle, tdict, rng, quick=b1 == "quick")
    for name, cells, channels in ([] if quick else NETWORKS):
        manifest["networks"].append(_prepare_network(bundle, tgt.name, name, cells, channels))
    from dcpnas.io import write_json

    write_json(bundle / "manifest.json", manifest)
    return manifest


def _prepare_b1(bundle: Path, tdict: dict, rng, quick: bool = False) -> list[dict]:
    """Every B1_CASES layer at every batch, as the b1 MMA kernel and as the popcount kernels. The input is
    drawn on the GPU side from `seed` (keeps the bundle small); weights, epilogue and constants are stored."""
    from dcpnas.compiler.kernels import BinaryConvAttrs, BinaryConvModule, pack_weights
    from dcpnas.compiler.kernels.bmma_cuda import bmma_op, choose_mma
    from dcpnas.compiler.kernels.emit import geometry

    op = bmma_op(tdict)
    if not op:
        print(f"  no b1 tensor-core MMA on {tdict.get('arch')}: b1 cases skipped", flush=True)
        return []
    out = []
    for name, c, h, co, k, s in B1_CASES[:1] if quick else B1_CASES:
        attrs = BinaryConvAttrs((k, k), (s, s), (k // 2,) * 4, (1, 1), 1, c)
        wb = pack_weights(rng.standard_normal((co, c, k, k)).astype(np.float32))
        scale, bias = rng.uniform(0.5, 2, co).astype(np.float32), rng.standard_normal(co).astype(np.float32)
        for n in (16,) if quick else B1_BATCHES:
            shape = (n, c, h, h)
            rule = choose_mma(geometry(shape, wb, attrs, tdict, mma=""), tdict)
            rec = {"name": name, "batch": n, "c_in": c, "c_out": co, "k": k, "stride": s, "pad": k // 2, "h": h,
                   "x_shape": list(shape), "seed": int(rng.integers(2**31)), "op": op,
                   "compiler_choice": "bmma" if rule else "xnor", "kernels": {}}
            for kernel, mma in (("bmma", op), ("xnor", "")):
                t0 = time.perf_counter()
                m = BinaryConvModule(shape, wb, scale, bias, attrs, tdict, mma=mma)
                stem = f"b1-{name}-n{n}-{kernel}"
                m.export(bundle / f"{stem}.so")
                consts = m.arrays(np.zeros(shape, np.float32))["binconv"][1:-1]
                np.savez_compressed(bundle / f"{stem}.npz", *consts)
                rec["kernels"][kernel] = {"lib": f"{stem}.so", "data": f"{stem}.npz", "n_consts": len(consts),
                                          "packed_shape": list(m.geo.packed_shape), "packed_dtype": m.geo.word_dtype,
                                          "out5_shape": list(m.geo.out5_shape), "build_s": round(time.perf_counter() - t0, 2)}
            np.savez_compressed(bundle / f"b1-{name}-n{n}-ref.npz", w_bits=wb, scale=scale, bias=bias)
            rec["ref"] = f"b1-{name}-n{n}-ref.npz"
            out.append(rec)
            print(f"  built b1 {name} batch {n} (bmma {op} + popcount; the rule picks {rec['compiler_choice']})",
                  flush=True)
    return out


def _prepare_network(bundle: Path, target: str, name: str, cells: int, channels: int) -> dict:
    import onnxruntime as ort

    from dcpnas.compiler.pipeline import compile_genotype
    from dcpnas.compiler.pipeline import _parity_inputs

    rec = {"name": name, "cells": cells, "channels": channels, "genotype": str(GENOTYPE.relative_to(REPO))}
    for kind, float_ in (("binary", False), ("float", True)):
        t0 = time.perf_counter()
        out = bundle / f"{name}-{kind}"
        art = compile_genotype(GENOTYPE, target, out, float_=float_, cells=cells, channels=channels, parity_inputs=16,
                               check=False)
        x, _ = _parity_inputs(None, None, art.manifest["input"]["shape"], 16, "embedded")
        sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        iname = sess.get_inputs()[0].name
        ref = np.concatenate([sess.run(None, {iname: x[i:i + 1]})[0] for i in range(len(x))])
        np.savez_compressed(out / "check.npz", x=x, ref=ref)
        (out / "model.onnx").unlink()  # not needed on the GPU side; keeps the bundle small
        rec[kind] = {"dir": out.name, "lib": "model.so", "data": "check.npz",
                     "onnx_ort_vs_torch": art.manifest["parity"].get("max_abs_diff_ort"),
                     "build_s": round(time.perf_counter() - t0, 1)}
        print(f"  built {name} {kind} in {time.perf_counter() - t0:.1f} s", flush=True)
    return rec


def runtime_pkg(dest: Path) -> Path:
    """Copy this venv's TVM Python package without the compiler library and bundled headers (what the
    runtime-only import needs: Python sources, libtvm_runtime, libtvm_runtime_cuda)."""
    import tvm

    src = Path(tvm.__file__).parent
    if dest.exists():
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns("libtvm_compiler.so", "3rdparty", "include", "__pycache__", "*.pyc", "src")
    shutil.copytree(src, dest / "tvm", ignore=ignore)
    return dest


# ---------------------------------------------------------------- run (on the GPU)
def _import_tvm_runtime():
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    import ctypes

    import tvm
    from tvm.base import _LOADED_LIBS

    lib_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
    if "tvm_runtime_cuda" not in _LOADED_LIBS:
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = ctypes.CDLL(str(lib_dir / "libtvm_runtime_cuda.so"), ctypes.RTLD_GLOBAL)
        except OSError as e:
            sys.exit(f"error: TVM's CUDA runtime does not load ({e}): needs the NVIDIA driver (libcuda.so.1) "
                     "and libcudart.so.13 on LD_LIBRARY_PATH")
    return tvm


def _torch_ms(fn, reps: int = 200) -> float:
    import torch

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / reps)
    return float(np.min(times))


def _tvm_ms(mod, fname, dev, args, number: int = 200) -> float:
    ev = mod.time_evaluator(fname, dev, number=number, repeat=5, min_repeat_ms=50)
    return float(np.min(ev(*args).results)) * 1e3


def run_convs(tvm, bundle: Path, manifest: dict, dev) -> list[dict]:
    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    rows = []
    for c in manifest["convs"]:
        mod = tvm.runtime.load_module(str(bundle / c["lib"]))
        data = np.load(bundle / c["data"])
        arrays = [data[f"arr_{i}"] for i in range(sum(k.startswith("arr_") for k in data.files))]
        tens = [tvm.runtime.tensor(a, dev) for a in arrays]
        for fname, idx in c["calls"]:
            mod[fname](*[tens[i] for i in idx])
        dev.sync()
        ref = data["ref"]
        got = tens[c["out_index"]].numpy().reshape(ref.shape)
        err = float(np.max(np.abs(got - ref)))
        ok = bool(np.allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max())))
        call_ms = [_tvm_ms(mod, f, dev, [tens[i] for i in idx]) for f, idx in c["calls"]]
        binary_ms, conv_ms = sum(call_ms), call_ms[-1]  # the conv is the last call
        x = torch.from_numpy(arrays[0]).cuda()
        w = torch.randn(c["w_shape"], device="cuda")  # the float baseline's weights: values do not matter
        kw = dict(stride=c["stride"], padding=c["pad"], dilation=c["dilation"], groups=c["groups"])
        fp32 = _torch_ms(lambda: F.conv2d(x, w, **kw))
        xh, wh = x.half().to(memory_format=torch.channels_last), w.half().to(memory_format=torch.channels_last)
        fp16 = _torch_ms(lambda: F.conv2d(xh, wh, **kw))
        row = {"name": c["name"], "kernel": c["kernel"], "x_shape": c["x_shape"], "w_shape": c["w_shape"],
               "parity_ok": ok, "max_abs_diff": err, "binary_ms": binary_ms, "binary_conv_only_ms": conv_ms,
               "torch_fp32_ms": fp32, "torch_fp16_ms": fp16, "speedup_vs_fp32": fp32 / binary_ms,
               "speedup_vs_fp16": fp16 / binary_ms,
               "binary_gmacs_per_s": c["binary_macs"] / (conv_ms * 1e6)}
        rows.append(row)
        print(f"  {c['name']:<14} {'ok ' if ok else 'BAD'} err {err:.2e}  1-bit {binary_ms:.4f} ms  "
              f"fp32 {fp32:.4f}  fp16 {fp16:.4f}  x{row['speedup_vs_fp32']:.2f} / x{row['speedup_vs_fp16']:.2f}",
              flush=True)
    return rows


def _int8_gemm_ms(m_rows: int, k: int, n: int):
    """torch._int_mm of the im2col GEMM shape (int8 x int8 -> int32 on the tensor cores), or None where
    PyTorch offers none for it (needs M > 16 and K, N multiples of 8)."""
    import torch

    if m_rows <= 16 or k % 8 or n % 8 or not hasattr(torch, "_int_mm"):
        return None
    a = torch.randint(-1, 2, (m_rows, k), dtype=torch.int8, device="cuda")
    b = torch.randint(-1, 2, (k, n), dtype=torch.int8, device="cuda")
    try:
        return _torch_ms(lambda: torch._int_mm(a, b))
    except RuntimeError:
        return None


def sign_conv_reference(x, w_bits, scale, bias, c_in: int, conv_kw: dict, device: str) -> np.ndarray:
    """binary_conv2d_reference in PyTorch (float64 on `device`: integer sums, exact) for the big b1 cases:
    scale * conv(sign(x) with zero padding, ±1 weights) + bias, float32 NCHW."""
    import torch
    import torch.nn.functional as F

    w_pm = 1.0 - 2.0 * np.unpackbits(w_bits, axis=1, bitorder="little")[:, :c_in].astype(np.float64)
    xs = torch.where(torch.from_numpy(x).to(device) >= 0, 1.0, -1.0).double()
    acc = F.conv2d(xs, torch.from_numpy(w_pm).to(device), **conv_kw)
    sc = torch.from_numpy(scale).to(device).double()[None, :, None, None]
    bi = torch.from_numpy(bias).to(device).double()[None, :, None, None]
    return (acc * sc + bi).float().cpu().numpy()


def _run_b1_kernel(tvm, bundle: Path, kc: dict, x: np.ndarray, ref: np.ndarray, dev):
    """Run one b1 case's pack + conv module: -> (max |diff| vs ref, parity ok, pack ms, conv ms)."""
    mod = tvm.runtime.load_module(str(bundle / kc["lib"]))
    data = np.load(bundle / kc["data"])
    consts = [data[f"arr_{i}"] for i in range(kc["n_consts"])]
    p = tvm.runtime.tensor(np.zeros(kc["packed_shape"], kc["packed_dtype"]), dev)
    out = tvm.runtime.tensor(np.zeros(kc["out5_shape"], np.float32), dev)
    pack_args = [tvm.runtime.tensor(x, dev), p]
    conv_args = [p] + [tvm.runtime.tensor(a, dev) for a in consts] + [out]
    mod["binpack"](*pack_args)
    mod["binconv"](*conv_args)
    dev.sync()
    got = out.numpy().reshape(ref.shape)
    err = float(np.max(np.abs(got - ref)))
    ok = bool(np.allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max())))
    pack_ms, conv_ms = _tvm_ms(mod, "binpack", dev, pack_args), _tvm_ms(mod, "binconv", dev, conv_args)
    return err, ok, pack_ms, conv_ms


def run_b1(tvm, bundle: Path, manifest: dict, dev) -> list[dict]:
    """Parity and timings of the b1 tensor-core convs and the popcount kernels (see the module doc)."""
    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for c in manifest.get("b1", []):
        x = np.random.default_rng(c["seed"]).standard_normal(c["x_shape"]).astype(np.float32)
        ref_data = np.load(bundle / c["ref"])
        wb, scale, bias = ref_data["w_bits"], ref_data["scale"], ref_data["bias"]
        conv_kw = dict(stride=c["stride"], padding=c["pad"])
        torch.backends.cudnn.benchmark = False
        ref = sign_conv_reference(x, wb, scale, bias, c["c_in"], conv_kw, "cuda")
        torch.backends.cudnn.benchmark = True
        xg = torch.from_numpy(x).cuda()
        w = torch.randn(c["c_out"], c["c_in"], c["k"], c["k"], device="cuda")
        fp32 = _torch_ms(lambda: F.conv2d(xg, w, **conv_kw))
        xh, wh = xg.half().to(memory_format=torch.channels_last), w.half().to(memory_format=torch.channels_last)
        fp16 = _torch_ms(lambda: F.conv2d(xh, wh, **conv_kw))
        n, _, oh, ow = ref.shape
        int8 = _int8_gemm_ms(n * oh * ow, c["c_in"] * c["k"] ** 2, c["c_out"])
        for kernel, kc in c["kernels"].items():
            try:
                err, ok, pack_ms, conv_ms = _run_b1_kernel(tvm, bundle, kc, x, ref, dev)
            except Exception as e:  # noqa: BLE001 -- a faulting kernel is a failed row, the others still run
                rows.append({"name": c["name"], "batch": c["batch"], "c_in": c["c_in"], "k": c["k"], "kernel": kernel,
                             "parity_ok": False, "error": f"{type(e).__name__}: {e}"[:500]})
                print(f"  {c['name']:<12} b{c['batch']:<3} {kernel:<5} ERROR {rows[-1]['error']}", flush=True)
                continue
            binary_ms = pack_ms + conv_ms
            row = {"name": c["name"], "batch": c["batch"], "c_in": c["c_in"], "c_out": c["c_out"], "k": c["k"],
                   "stride": c["stride"], "h": c["h"], "kernel": kernel, "mma_op": c["op"] if kernel == "bmma" else None,
                   "compiler_choice": c["compiler_choice"], "parity_ok": ok, "max_abs_diff": err,
                   "binary_ms": binary_ms, "binary_conv_only_ms": conv_ms, "pack_ms": pack_ms,
                   "cudnn_fp16_ms": fp16, "cudnn_fp32_ms": fp32, "int8_gemm_ms": int8,
                   "speedup_vs_fp16": fp16 / binary_ms, "speedup_vs_fp32": fp32 / binary_ms,
                   "speedup_vs_int8_gemm": int8 / binary_ms if int8 else None}
            rows.append(row)
            print(f"  {c['name']:<12} b{c['batch']:<3} {kernel:<5} {'ok ' if ok else 'BAD'} err {err:.1e}  "
                  f"1-bit {binary_ms:.4f} ms  fp16 {fp16:.4f}  int8 {int8 if int8 is None else round(int8, 4)}  "
                  f"x{row['speedup_vs_fp16']:.2f} vs fp16", flush=True)
    return rows


def b1_goal(rows: list[dict], nets: list[dict]) -> dict:
    """Issue 15's goal on this GPU: every 3x3 b1 MMA conv with >= 128 input channels at batch 16 >= 2x cuDNN
    fp16, and the 64-channel 6-cell network >= 3x its float twin (batch 1: the networks are built at batch 1)."""
    sel = [r for r in rows if r["kernel"] == "bmma" and r["batch"] == 16 and r["k"] == 3 and r["c_in"] >= 128]
    net = [r for r in nets if r["channels"] == 64]
    failed = any("error" in r or not r["parity_ok"] for r in sel)
    worst = None if failed else min((r["speedup_vs_fp16"] for r in sel), default=None)
    rows = [r for r in rows if "error" not in r]
    net_x = net[0]["speedup_vs_float"] if net else None
    bm = {(r["name"], r["batch"]): r["binary_ms"] for r in rows if r["kernel"] == "bmma"}
    pc = {(r["name"], r["batch"]): r["binary_ms"] for r in rows if r["kernel"] == "xnor"}
    return {"batch16_3x3_ge128_min_speedup_vs_fp16": worst, "batch16_goal_met": worst is not None and worst >= 2.0,
            "net64_speedup_vs_float": net_x, "net64_goal_met": net_x is not None and net_x >= 3.0,
            "bmma_speedup_vs_popcount": {f"{k[0]}-b{k[1]}": pc[k] / v for k, v in bm.items() if k in pc}}


def run_networks(tvm, bundle: Path, manifest: dict, dev) -> list[dict]:
    from tvm.runtime.vm import VirtualMachine

    rows = []
    for net in manifest["networks"]:
        row = {"name": net["name"], "cells": net["cells"], "channels": net["channels"]}
        for kind in ("binary", "float"):
            rec = net[kind]
            d = bundle / rec["dir"]
            vm = VirtualMachine(tvm.runtime.load_module(str(d / rec["lib"])), dev)
            data = np.load(d / rec["data"])
            x, ref = data["x"], data["ref"]
            got = np.concatenate([vm["main"](tvm.runtime.tensor(x[i:i + 1], dev)).numpy() for i in range(len(x))])
            err = float(np.max(np.abs(got - ref)))
            top1 = float(np.mean(got.argmax(1) == ref.argmax(1)))
            ok = bool(err <= 1e-4 * max(1.0, float(np.abs(ref).max())) and top1 == 1.0)
            x0 = tvm.runtime.tensor(x[:1], dev)
            ev = vm.time_evaluator("main", dev, number=100, repeat=5, min_repeat_ms=50)
            ms = float(np.min(ev(x0).results)) * 1e3
            row[kind] = {"parity_ok": ok, "max_abs_diff_vs_ort": err, "top1_agreement": top1, "ms_batch1": ms}
            print(f"  {net['name']:<14} {kind:<6} {'ok ' if ok else 'BAD'} |TVM-ORT| {err:.2e} top-1 {top1:.3f}  "
                  f"{ms:.4f} ms/image", flush=True)
        row["speedup_vs_float"] = row["float"]["ms_batch1"] / row["binary"]["ms_batch1"]
        rows.append(row)
    return rows


def run(bundle: Path, out: Path) -> int:
    tvm = _import_tvm_runtime()
    import torch

    manifest = json.loads((bundle / "manifest.json").read_text())
    dev = tvm.cuda(0)
    if not dev.exist:
        print("error: no CUDA GPU visible to the TVM runtime", file=sys.stderr)
        return 2
    info = {"gpu": torch.cuda.get_device_name(0), "compute_version": dev.compute_version,
            "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "tvm": tvm.__version__}
    print(f"GPU {info['gpu']} (sm {info['compute_version']}), torch {info['torch']}, TVM {info['tvm']} runtime")
    out.mkdir(parents=True, exist_ok=True)
    res = {"schema": SCHEMA + "-result", "target": manifest["target"], "device": info, "parity_ok": False,
           "timing": "min over 5 repeats; TVM time_evaluator and CUDA events; batch as in x_shape",
           "convs": [], "b1": [], "networks": []}
    # the batch-1 networks and the proven kernels first, the new b1 MMA kernels last: a fault there (a CUDA
    # error poisons the context) cannot cost the rest; results are written after every stage
    for stage, fn in (("networks", run_networks), ("convs", run_convs), ("b1", run_b1)):
        try:
            res[stage] = fn(tvm, bundle, manifest, dev)
        except Exception as e:  # noqa: BLE001 -- recorded, and the run fails below
            res[f"{stage}_error"] = f"{type(e).__name__}: {e}"[:1000]
            print(f"  {stage} FAILED: {res[f'{stage}_error']}", flush=True)
        ok = (not any(k.endswith("_error") for k in res) and all(r["parity_ok"] for r in res["convs"] + res["b1"])
              and all(r[k]["parity_ok"] for r in res["networks"] for k in ("binary", "float")))
        res["parity_ok"] = ok
        (out / "cuda_check.json").write_text(json.dumps(res, indent=1))
    b1, nets = res["b1"], res["networks"]
    if b1:
        b1_res = {"schema": "dcpnas.cuda-b1/1", "target": manifest["target"], "device": info,
                  "parity_ok": all(r["parity_ok"] for r in b1) and "b1_error" not in res,
                  "command": "benchmarks/cuda_check.py prepare BUNDLE --target " + manifest["target"]
                             + "; bash benchmarks/cuda_check_remote.sh OUT (run BUNDLE -o OUT)",
                  "timing": "min over 5 repeats (TVM time_evaluator, CUDA events); binary_ms = pack + conv; "
                            "int8_gemm_ms = torch._int_mm of the im2col GEMM shape, im2col not counted",
                  "goal": b1_goal(b1, nets), "rows": b1}
        (out / "cuda_b1.json").write_text(json.dumps(b1_res, indent=1))
        print(f"b1 goal: {json.dumps(b1_res['goal'])}; wrote {out / 'cuda_b1.json'}")
    print(f"parity {'OK' if ok else 'FAILED'}; wrote {out / 'cuda_check.json'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="build every module for the GPU here, with references")
    p.add_argument("bundle", type=Path)
    p.add_argument("--target", default="cuda-sm90")
    p.add_argument("--quick", action="store_true", help="only the four small correctness cases")
    p.add_argument("--b1", choices=("all", "quick", "none"), default=None,
                   help="b1 tensor-core cases: all layers x batches 1/16/64, the first at batch 16, or none "
                        "(default: none with --quick, else all)")
    r = sub.add_parser("run", help="run the bundle on this machine's GPU")
    r.add_argument("bundle", type=Path)
    r.add_argument("-o", "--out", type=Path, default=Path("."))
    k = sub.add_parser("runtime-pkg", help="copy the runtime-only TVM Python package to DEST/tvm")
    k.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        from dcpnas.compiler.cuda_host import enable_cuda_fatbins

        enable_cuda_fatbins()  # nvcc fatbins, also without a GPU driver here
        prepare(a.bundle, a.target, a.quick, a.b1)
        return 0
    if a.cmd == "runtime-pkg":
        print(runtime_pkg(a.dest))
        return 0
    return run(a.bundle, a.out)


if __name__ == "__main__":
    sys.exit(main())

"""Binary XNOR-popcount conv vs fp32 conv (ONNX Runtime, PyTorch, TVM), batch 1, 2 threads, this CPU.

    python benchmarks/kernels.py [--json] [--target JSON] [--quick]

Rows: 3x3 and 1x1 convs, stride 1, "same" padding, C_in = C_out = C, at (H, C) in
{(56, 64), (28, 128), (14, 256), (7, 512)}. binary_ms: the XNOR conv with its fused epilogue (packed input
ready); binary_with_pack_ms: + the sign/bit-pack kernel (float NCHW in, float NCHW out);
speedup_vs_best_fp32 = best fp32 ms / binary_with_pack_ms. Each time is per call, measured side by side in
one process: by default the minimum over 7 runs of many calls (--stat median for medians), because the
machine is shared and a median there measures the neighbours as much as the kernel.
The popcount roofline is measured, not taken from a datasheet: a TVM micro-kernel that does
only XOR + popcount + add on vectors held in registers (8 independent accumulators, operands in L1, both
threads; the faster of 32-bit and 8-bit lanes), so "roofline %" = (binary MACs / binary_ms) / that peak rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

SHAPES = [(56, 64), (28, 128), (14, 256), (7, 512)]
X86 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4", "num-cores": 2}


def _time_ms(fn, stat: str, warm=5, iters=20, reps=7) -> float:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        ts.append((time.perf_counter() - t0) / iters * 1e3)
    return float(np.min(ts) if stat == "min" else np.median(ts))


def fp32_torch_ms(x, w, pad, stat: str) -> float:
    import torch

    torch.set_num_threads(2)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    with torch.inference_mode():
        nchw = _time_ms(lambda: torch.nn.functional.conv2d(xt, wt, padding=pad), stat)
        xc, wc = xt.contiguous(memory_format=torch.channels_last), wt.contiguous(memory_format=torch.channels_last)
        nhwc = _time_ms(lambda: torch.nn.functional.conv2d(xc, wc, padding=pad), stat)
    return min(nchw, nhwc)


def fp32_ort_ms(x, w, pad, stat: str) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = w.shape[2]
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4, kernel_shape=[k, k])
    g = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return _time_ms(lambda: s.run(None, {"x": x}), stat)


def _popcount_rate(target, bits: int) -> float:
    """Binary MACs per ns of XOR + popcount + add on `bits`-bit lanes (512 bits per vector unit), 2 threads."""
    import tvm
    from tvm import te
    from tvm.s_tir import Schedule

    dt = f"uint{bits}"
    T, A, L, Q, R = 2, 8, 512 // bits, 64, 256
    a = te.placeholder((T, A, L), dt, "a")
    b = te.placeholder((Q, L), dt, "b")
    r, q = te.reduce_axis((0, R), "r"), te.reduce_axis((0, Q), "q")
    o = te.compute((T, A, L), lambda t, i, l: te.sum(tvm.tirx.popcount(a[t, i, l] ^ b[q, l] ^ r.astype(dt)),
                                                     axis=[r, q]), name="o")  # wraps in uint8: only timed
    sch = Schedule(tvm.IRModule({"main": te.create_prim_func([a, b, o])}))
    blk = sch.get_sblock("o")
    acc = sch.cache_write(blk, 0, "local")
    t, i, l, rr, qq = sch.get_loops(blk)
    sch.reorder(t, rr, qq, i, l)
    sch.parallel(t)
    sch.reverse_compute_at(acc, t)
    sch.unroll(i)
    sch.vectorize(l)
    sch.decompose_reduction(blk, rr)
    rt = tvm.compile(sch.mod, target=tvm.target.Target(target)).jit()
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.zeros(sh, dt), dev) for sh in ((T, A, L), (Q, L), (T, A, L))]
    ev = rt.time_evaluator("main", dev, number=20, repeat=7, min_repeat_ms=20)
    sec = float(np.min(ev(*args).results))  # min: the peak is a best case
    return T * A * L * bits * Q * R / sec / 1e9


def popcount_peak_gbitops(target) -> float:
    """The popcount roofline: the faster of 32-bit lanes (VPOPCNTD on AVX-512) and byte lanes (vpshufb on
    AVX2, NEON cnt), in binary MACs per ns."""
    return max(_popcount_rate(target, 32), _popcount_rate(target, 8))


def run(target, quick: bool, stat: str = "min", progress=None) -> tuple[list[dict], float]:
    from dcpnas.compiler.kernels import BinaryConvAttrs, BinaryConvModule, pack_weights
    from dcpnas.compiler.kernels.float_conv import FloatConvModule

    rng = np.random.default_rng(0)
    peak = popcount_peak_gbitops(target)
    rows = []
    shapes = SHAPES[2:3] if quick else SHAPES
    for k in (3, 1):
        for h, c in shapes:
            pad = k // 2
            attrs = BinaryConvAttrs((k, k), (1, 1), (pad,) * 4, (1, 1), 1, c)
            x = rng.standard_normal((1, c, h, h)).astype(np.float32)
            w = rng.standard_normal((c, c, k, k)).astype(np.float32)
            scale, bias = np.abs(rng.standard_normal(c)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
            bm = BinaryConvModule(x.shape, pack_weights(w), scale, bias, attrs, target)
            tb = bm.time_ms(x, stat=stat)
            fm = FloatConvModule(x.shape, w, None, attrs, target)
            row = {"kernel": f"conv{k}x{k}", "h": h, "c_in": c, "c_out": c,
                   "binary_ms": tb["binconv"], "binary_with_pack_ms": tb["binconv"] + tb["binpack"],
                   "fp32_ort_ms": fp32_ort_ms(x, w, pad, stat), "fp32_torch_ms": fp32_torch_ms(x, w, pad, stat),
                   "fp32_tvm_ms": fm.time_ms(x, stat=stat)}
            best = min(row["fp32_ort_ms"], row["fp32_torch_ms"], row["fp32_tvm_ms"])
            row["speedup_vs_best_fp32"] = best / row["binary_with_pack_ms"]
            row["_speedup_conv_only"] = best / row["binary_ms"]
            row["_roofline"] = bm.geo.binary_macs / (row["binary_ms"] * 1e6) / peak
            rows.append(row)
            if progress:
                progress(row)
    return rows, peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON on stdout (DESIGN.md)")
    ap.add_argument("--target", default=json.dumps(X86), help="TVM target dict as JSON (an x86 CPU of this machine)")
    ap.add_argument("--quick", action="store_true", help="only the (14, 256) rows")
    ap.add_argument("--stat", choices=("min", "median"), default="min", help="statistic over the repeated runs")
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    target = json.loads(args.target)
    log = (lambda r: print(f"  measured {r['kernel']} h={r['h']} c={r['c_in']}", file=sys.stderr, flush=True))
    rows, peak = run(target, args.quick, args.stat, None if args.json else log)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=1))
        return 0
    print(f"target {json.dumps(target)}; 2 threads; popcount peak (measured) {peak:.0f} binary MACs/ns")
    hdr = ("kernel", "h", "c", "binary", "bin+pack", "ort", "torch", "tvm fp32", "x best (w/ pack)", "x (conv)", "roofline")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['kernel']} | {r['h']} | {r['c_in']} | {r['binary_ms']:.4f} | {r['binary_with_pack_ms']:.4f} | "
              f"{r['fp32_ort_ms']:.4f} | {r['fp32_torch_ms']:.4f} | {r['fp32_tvm_ms']:.4f} | "
              f"{r['speedup_vs_best_fp32']:.1f} | {r['_speedup_conv_only']:.1f} | {100 * r['_roofline']:.0f}% |")
    print(f"times in ms per call ({args.stat} over 7 runs); x = best fp32 / binary; roofline = binary MACs/s of the conv"
          " / the measured popcount peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())

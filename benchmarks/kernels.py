"""Binary XNOR-popcount conv vs fp32 conv (ONNX Runtime, PyTorch, TVM, OpenVINO) and vs OpenVINO's BinaryConvolution,
batch 1, 2 threads, this CPU.

    python benchmarks/kernels.py [--json] [--target JSON] [--quick]

Rows: 3x3 and 1x1 convs, stride 1, "same" padding, C_in = C_out = C, at (H, C) in
{(56, 64), (28, 128), (14, 256), (7, 512)}. binary_ms: the XNOR conv with its fused epilogue (packed input
ready); binary_with_pack_ms: + the sign/bit-pack kernel (float NCHW in, float NCHW out);
fp32_openvino_ms: OpenVINO's CPU plugin at f32 precision; openvino_binary_ms: OpenVINO's BinaryConvolution
(u1 weights, xnor-popcount, `jit_avx512_u1` on this CPU) with the same scale and bias, built by the conversion
extension of targets/openvino.py and checked against the TVM binary conv before timing.
speedup_vs_best_fp32 = best fp32 ms / binary_with_pack_ms; speedup_vs_openvino_binary = openvino_binary_ms /
binary_with_pack_ms. Every peer of a row is timed side by side in one process, in interleaved rounds (one
sample of each per round, order rotating: targets/profiler.interleaved); by default the minimum over the
rounds (--stat median for medians), because the machine is shared and a median there measures the
neighbours as much as the kernel.
The popcount roofline is measured, not taken from a datasheet: a TVM micro-kernel that does
only XOR + popcount + add on vectors held in registers (8 independent accumulators, operands in L1, both
threads; the faster of 32-bit and 8-bit lanes), so "roofline %" = (binary MACs / binary_ms) / that peak rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from dcpnas.targets import get_target

SHAPES = [(56, 64), (28, 128), (14, 256), (7, 512)]
X86 = get_target("x86-avx512").tvm


def torch_conv(x, w, pad, channels_last: bool):
    import torch

    torch.set_num_threads(2)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    if channels_last:
        xt, wt = xt.contiguous(memory_format=torch.channels_last), wt.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            return torch.nn.functional.conv2d(xt, wt, padding=pad)
    return run


def conv_onnx(x, w, pad) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    k = w.shape[2]
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4, kernel_shape=[k, k])
    g = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def ort_conv(x, w, pad):
    from dcpnas.targets.bench import ort_runner  # no spinning workers (they steal the next peer's core)

    return ort_runner(conv_onnx(x, w, pad), x, 2)


def openvino_convs(x, w, signs, scale, bias, pad):
    """(fp32 conv, BinaryConvolution) of OpenVINO's CPU plugin as callables, 2 threads, f32 precision;
    the binary one is the conversion extension's (targets/openvino.py: the plugin binarises the float
    input itself), checked against the +-1 reference by the caller."""
    import openvino as ov
    from openvino import opset1 as o1

    from dcpnas.targets import openvino as dov

    cfg = {"INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    fp = dov.compile_onnx(conv_onnx(x, w, pad), 2)
    p = o1.parameter(list(x.shape), np.float32)
    y = dov.binary_conv(p.output(0), signs, scale, bias, x.shape[2:], (1, 1), (pad,) * 4, (1, 1), 1)
    req = ov.Core().compile_model(ov.Model([y], [p]), "CPU", cfg).create_infer_request()
    return (lambda: fp.run(x)), (lambda: req.infer({0: x})[0])


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


def run(target, quick: bool, stat: str = "min", progress=None, rounds: int = 9) -> tuple[list[dict], float]:
    from dcpnas.compiler.kernels import BinaryConvAttrs, BinaryConvModule, pack_weights
    from dcpnas.compiler.conv_module import FloatConvModule
    from dcpnas.targets.profiler import interleaved, python_sampler

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
            fm = FloatConvModule(x.shape, w, None, target, pads=(pad,) * 4)  # the float twin's conv
            signs = np.where(w >= 0, 1, -1).astype(np.int8)
            ov_fp32, ov_bin = openvino_convs(x, w, signs, scale, bias, pad)
            ours = bm.run(x)
            ov_max = float(np.abs(ov_bin() - ours).max())
            if ov_max > 1e-3 * float(np.abs(ours).max()):
                raise SystemExit(f"OpenVINO BinaryConvolution disagrees with the TVM binary conv at {k}x{k} h={h} c={c}: "
                                 f"max |diff| {ov_max:.3g}")
            peers = {
                "binconv": lambda n, bm=bm, x=x: bm.time_ms(x, number=n, repeat=1)["binconv"] / 1e3,
                "binpack": lambda n, bm=bm, x=x: bm.time_ms(x, number=n, repeat=1)["binpack"] / 1e3,
                "fp32_tvm": lambda n, fm=fm, x=x: fm.time_ms(x, number=n, repeat=1) / 1e3,
                "fp32_ort": python_sampler(ort_conv(x, w, pad)),
                "fp32_torch_nchw": python_sampler(torch_conv(x, w, pad, False)),
                "fp32_torch_nhwc": python_sampler(torch_conv(x, w, pad, True)),
                "fp32_openvino": python_sampler(ov_fp32),
                "openvino_binary": python_sampler(ov_bin),
            }
            t = {name: v.value(stat) for name, v in interleaved(peers, rounds=rounds, min_repeat_ms=20).items()}
            row = {"kernel": f"conv{k}x{k}", "h": h, "c_in": c, "c_out": c,
                   "binary_ms": t["binconv"], "binary_with_pack_ms": t["binconv"] + t["binpack"],
                   "fp32_ort_ms": t["fp32_ort"], "fp32_torch_ms": min(t["fp32_torch_nchw"], t["fp32_torch_nhwc"]),
                   "fp32_tvm_ms": t["fp32_tvm"], "fp32_openvino_ms": t["fp32_openvino"],
                   "openvino_binary_ms": t["openvino_binary"]}
            best = min(row["fp32_ort_ms"], row["fp32_torch_ms"], row["fp32_tvm_ms"], row["fp32_openvino_ms"])
            row["speedup_vs_best_fp32"] = best / row["binary_with_pack_ms"]
            row["speedup_vs_openvino_binary"] = row["openvino_binary_ms"] / row["binary_with_pack_ms"]
            row["_speedup_conv_only"] = best / row["binary_ms"]
            row["_roofline"] = bm.geo.binary_macs / (row["binary_ms"] * 1e6) / peak
            row["_openvino_binary_max_abs_diff"] = ov_max
            rows.append(row)
            if progress:
                progress(row)
    return rows, peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON on stdout (DESIGN.md)")
    ap.add_argument("--target", default=json.dumps(X86), help="TVM target dict as JSON (an x86 CPU of this machine)")
    ap.add_argument("--quick", action="store_true", help="only the (14, 256) rows")
    ap.add_argument("--stat", choices=("min", "median"), default="min", help="statistic over the interleaved rounds")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds (one sample of every peer each)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    target = json.loads(args.target)
    log = (lambda r: print(f"  measured {r['kernel']} h={r['h']} c={r['c_in']}", file=sys.stderr, flush=True))
    rows, peak = run(target, args.quick, args.stat, None if args.json else log, args.rounds)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=1))
        return 0
    print(f"target {json.dumps(target)}; 2 threads; popcount peak (measured) {peak:.0f} binary MACs/ns")
    hdr = ("kernel", "h", "c", "binary", "bin+pack", "ort", "torch", "tvm fp32", "OV fp32", "OV binary",
           "x best fp32 (w/ pack)", "x OV binary", "x (conv)", "roofline")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        print(f"| {r['kernel']} | {r['h']} | {r['c_in']} | {r['binary_ms']:.4f} | {r['binary_with_pack_ms']:.4f} | "
              f"{r['fp32_ort_ms']:.4f} | {r['fp32_torch_ms']:.4f} | {r['fp32_tvm_ms']:.4f} | {r['fp32_openvino_ms']:.4f} | "
              f"{r['openvino_binary_ms']:.4f} | {r['speedup_vs_best_fp32']:.1f} | {r['speedup_vs_openvino_binary']:.1f} | "
              f"{r['_speedup_conv_only']:.1f} | {100 * r['_roofline']:.0f}% |")
    print(f"times in ms per call ({args.stat} over {args.rounds} interleaved rounds, one process); x best fp32 = best fp32 / "
          "(binary + pack); x OV binary = OpenVINO BinaryConvolution / (binary + pack); roofline = binary MACs/s of the "
          "conv / the measured popcount peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Binary conv + residual add: one kernel (the add in the conv's epilogue) vs conv then a separate add,
timed side by side in interleaved rounds (targets.profiler.interleaved) on the shapes of DDPNAS_MCN_2 at
8 cells x 32 channels (28x28x1 input). Prints the ratio per shape; --json writes the rows.

    python benchmarks/fused_epilogue.py [--threads 2] [--rounds 15] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# (C_in, C_out, spatial, kernel, group): depthwise 3x3 / 5x5 (+-1 kernel), pointwise 1x1 (XNOR kernel)
SHAPES = [(32, 32, 28, 3, 32), (32, 32, 28, 5, 32), (64, 64, 14, 3, 64), (128, 128, 7, 3, 128),
          (32, 32, 28, 1, 1), (64, 64, 14, 1, 1), (128, 128, 7, 1, 1)]
TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4", "num-cores": 2}


def build(case, fused: bool):
    import numpy as np
    import tvm
    from tvm import relax

    from dcpnas.compiler.float_schedule import elementwise
    from dcpnas.compiler.kernels.targets import cpu_params
    from dcpnas.compiler.kernels import BinaryConvAttrs, emit_binary_conv2d, pack_weights

    c, co, h, k, g = case
    attrs = BinaryConvAttrs((k, k), (1, 1), (k // 2,) * 4, (1, 1), g, c)
    rng = np.random.default_rng(0)
    wb = pack_weights(rng.standard_normal((co, c // g, k, k)))
    vec = [rng.uniform(0.5, 2, co).astype(np.float32) for _ in range(3)]
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, c, h, h), "float32"))
    rv = relax.Var("r", relax.TensorType((1, co, h, h), "float32"))
    with bb.function("main", [xv, rv]):
        with bb.dataflow():
            y = emit_binary_conv2d(bb, xv, wb, vec[0], vec[1], attrs, TARGET, in_scale=np.ones(c, np.float32),
                                   in_shift=np.zeros(c, np.float32), prelu=vec[2], residual=[rv] if fused else [])
            if not fused:
                s = (1, co, h, h)
                f = elementwise([s, s], lambda t, i: t[0][i] + t[1][i], s, name="add", cpu=cpu_params(TARGET))
                y = bb.emit(relax.call_tir(bb.add_func(f, "add"), [y, rv], relax.TensorType(s, "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=tvm.target.Target(TARGET))
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    args = [tvm.runtime.tensor(rng.standard_normal(s).astype(np.float32), dev) for s in ((1, c, h, h), (1, co, h, h))]
    evs = {}

    def sample(number):
        if number not in evs:
            evs[number] = vm.time_evaluator("main", dev, number=number, repeat=1, min_repeat_ms=0)
        return float(evs[number](*args).results[0])
    return sample


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    from dcpnas.io import write_json
    from dcpnas.targets.profiler import interleaved

    rows = []
    for case in SHAPES:
        t = interleaved({"fused": build(case, True), "separate": build(case, False)}, rounds=a.rounds)
        r = {"c_in": case[0], "c_out": case[1], "hw": case[2], "kernel": case[3], "group": case[4],
             "fused_ms": t["fused"].median_ms, "separate_ms": t["separate"].median_ms,
             "fused_iqr_ms": t["fused"].iqr_ms, "separate_iqr_ms": t["separate"].iqr_ms,
             "speedup": t["separate"].median_ms / t["fused"].median_ms}
        rows.append(r)
        print(f"{case}: fused {r['fused_ms']:.4f} ms, conv + add {r['separate_ms']:.4f} ms -> {r['speedup']:.2f}x",
              flush=True)
    if a.json:
        write_json(a.json, {"threads": a.threads, "rounds": a.rounds, "rows": rows,
                            "command": " ".join(["python", "benchmarks/fused_epilogue.py"] + (argv or sys.argv[1:]))})
    return 0


if __name__ == "__main__":
    sys.exit(main())

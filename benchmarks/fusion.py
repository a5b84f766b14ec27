"""End to end, side by side in one process: 1-bit TVM builds (e.g. before/after a fusion) vs the float
network on OpenVINO and ONNX Runtime, in interleaved rounds (targets.profiler.interleaved), so that the
shared host's load swings hit every peer alike and the ratios hold where absolute times do not.

    python benchmarks/fusion.py --build NAME=BUILD_DIR [--build ...] --float FLOAT.onnx [--threads 2]
        [--rounds 15] [--json OUT.json]

Each build: a `dcpnas compile` folder (model.so, manifest.json). Prints a table with each peer's median
and IQR, its minimum, the kernel calls per run, and every 1-bit build's speedup over the fastest float
runtime (by medians, and by minima: the least loaded sample, steadier on a busy host); --json
writes {"threads", "rounds", "peers": {name: timing}, "calls": {...}, "speedup_vs_best_float": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="append", required=True, help="NAME=BUILD_DIR (a 1-bit build folder)")
    ap.add_argument("--float", dest="float_onnx", required=True, help="the float network's model.onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.threads < 1 or a.rounds < 3:
        ap.error("--threads >= 1 and --rounds >= 3")
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    import numpy as np
    from dcpnas.targets.bench import ort_runner
    import openvino as ov
    import tvm
    from tvm import relax

    from dcpnas.io import write_json
    from dcpnas.targets.profiler import interleaved, python_sampler

    samplers, calls = {}, {}
    dev = tvm.cpu()
    shape = None
    for spec in a.build:
        name, _, path = spec.partition("=")
        d = Path(path)
        m = json.loads((d / "manifest.json").read_text())
        shape = tuple(m["input"]["shape"])
        x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32), dev)
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(d / "model.so")), dev)
        calls[name] = sum(len(lay["funcs"]) for lay in m["layers"])

        def tvm_sample(number, vm=vm, x=x, evs={}):
            key = (id(vm), number)
            if key not in evs:
                evs[key] = vm.time_evaluator("main", dev, number=number, repeat=1, min_repeat_ms=0)
            return float(evs[key](x).results[0])
        samplers[name] = tvm_sample
    xf = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    req = ov.Core().compile_model(a.float_onnx, "CPU", {"INFERENCE_NUM_THREADS": a.threads,
                                                        "PERFORMANCE_HINT": "LATENCY",
                                                        "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    samplers["float_openvino"] = python_sampler(lambda: req.infer({0: xf}))
    samplers["float_ort"] = python_sampler(ort_runner(Path(a.float_onnx).read_bytes(), xf, a.threads))
    res = interleaved(samplers, rounds=a.rounds)
    best_float = min(res["float_openvino"].median_ms, res["float_ort"].median_ms)
    speed = {n: best_float / res[n].median_ms for n in calls}
    best_min = min(res["float_openvino"].min_ms, res["float_ort"].min_ms)
    speed_min = {n: best_min / res[n].min_ms for n in calls}  # the least loaded sample of each peer
    for n, t in res.items():
        extra = (f"  {calls[n]} kernel calls  {speed[n]:.2f}x the best float (by min {speed_min[n]:.2f}x)"
                 if n in calls else "")
        print(f"{n:24s} median {t.median_ms:8.3f} ms (IQR {t.iqr_ms:.3f}), min {t.min_ms:8.3f} ms{extra}")
    out = {"threads": a.threads, "rounds": a.rounds, "input_shape": list(shape), "float_onnx": a.float_onnx,
           "builds": {s.partition("=")[0]: s.partition("=")[2] for s in a.build},
           "peers": {n: t.to_dict() for n, t in res.items()}, "calls": calls,
           "speedup_vs_best_float": speed, "speedup_vs_best_float_by_min": speed_min, "command": " ".join(["python", "benchmarks/fusion.py"] + (argv or sys.argv[1:]))}
    if a.json:
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

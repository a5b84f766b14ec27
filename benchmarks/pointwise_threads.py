"""Per XNOR 1x1 (pointwise) conv shape of a build: its parallel vs serial kernel, timed alone at the
threads of TVM_NUM_THREADS (15 interleaved rounds of 200 calls). Usage: TVM_NUM_THREADS=2 python
benchmarks/pointwise_threads.py BUILD_DIR"""
import argparse
import collections
import json
from pathlib import Path

import numpy as np
import tvm

from dcpnas.compiler.kernels import BinaryConvAttrs
from dcpnas.compiler.kernels.binary_conv import ConvGeometry
from dcpnas.compiler.kernels.pointwise import make_pointwise_func
from dcpnas.compiler.kernels.targets import cpu_params
from dcpnas.targets import get_target
X86 = get_target("x86-avx512").tvm
cpu = cpu_params(X86)
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("build_dir", type=Path, help="a build folder of `dcpnas compile` (its manifest.json)")
m = json.loads((ap.parse_args().build_dir / "manifest.json").read_text())
shapes = collections.Counter()
for l in m["layers"]:
    for f in l["funcs"]:
        if f["name"].startswith("dcpnas_binary_conv"):
            a = f["args"]
            P, out = a[0][0], a[-1][0]
            nres = sum(1 for s, d in a[7:-1] if len(s) == 4)
            prelu = len(a) - 1 - 7 - nres == 1
            shapes[(tuple(P), tuple(out), nres, prelu)] += 1
dev = tvm.cpu()
tot = {True: 0.0, False: 0.0}
for (P, out, nres, prelu), cnt in sorted(shapes.items()):
    n, q, h, w = P
    co = out[1]
    c = q * 32
    geo = ConvGeometry(n, c, h, w, co, BinaryConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, c), 32)
    fs = {}
    for par in (True, False):
        f = make_pointwise_func(geo, 1, 1, prelu, nres, cpu, parallel=par)
        fs[par] = tvm.compile(tvm.IRModule({"k": f.with_attr("global_symbol", "k")}), target=tvm.target.Target(X86)).jit()
    rng = np.random.default_rng(0)
    args = [rng.integers(0, 2**32, P, dtype=np.uint32), rng.integers(0, 2**32, (1, 1, 1, q, co), dtype=np.uint32),
            np.zeros((1, 1, 1, co), np.int32), np.zeros(h, np.int32), np.zeros(w, np.int32),
            np.ones((1, co), np.float32), np.zeros((1, co), np.float32)]
    if prelu:
        args.append(np.ones((1, co), np.float32))
    args += [np.zeros(out, np.float32)] * nres + [np.zeros(out, np.float32)]
    targs = [tvm.runtime.tensor(a, dev) for a in args]
    samples = {True: [], False: []}
    for r in range(15):
        for par in (True, False):
            te = fs[par].time_evaluator("k", dev, number=200, repeat=1)
            samples[par].append(te(*targs).mean * 1e6)
    med = {k: float(np.median(v)) for k, v in samples.items()}
    for k in med:
        tot[k] += med[k] * cnt
    print(f"P{P} out{out} res{nres} prelu{int(prelu)} x{cnt}: parallel {med[True]:.2f} us, serial {med[False]:.2f} us, ratio {med[True]/med[False]:.2f}")
print(f"total over the network: parallel {tot[True]:.1f} us, serial {tot[False]:.1f} us")

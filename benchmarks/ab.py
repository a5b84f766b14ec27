"""Two builds of the same network side by side (before / after a compiler change), in one process.

    python benchmarks/ab.py BUILD_A BUILD_B [--rounds 15] [--threads 2] [--json]

Interleaved rounds (targets/profiler.interleaved_samples: one sample of every peer per round, order
rotating) of: A and B end to end, A and B with the in-run call timer (targets/vmtimer.py), and the float
network (the float twin of A's model.onnx) on OpenVINO's CPU plugin at its default precision, the best
float runtime here. Prints per build the end to end (median, IQR), speedup vs OpenVINO float, the median
over rounds of B/A (paired per round: a load swing on a shared host hits both samples of a round alike),
and the in-run time of every kernel family (targets/bench.inrun_accounting), A vs B. Both builds must
take the same input shape; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def run(build_a: Path, build_b: Path, threads: int, rounds: int, min_repeat_ms: float = 20.0, openvino: bool = True,
        seed: int = 0) -> dict:
    import onnx

    from dcpnas.compiler.artifact import Artifact
    from dcpnas.compiler.twin import float_twin_onnx
    from dcpnas.targets import get_target
    from dcpnas.targets.bench import inrun_accounting
    from dcpnas.targets.profiler import Profiler, Timing, interleaved_samples, python_sampler

    arts = {"A": Artifact.load(build_a), "B": Artifact.load(build_b)}
    shapes = {k: tuple(a.manifest["input"]["shape"]) for k, a in arts.items()}
    if shapes["A"] != shapes["B"]:
        raise SystemExit(f"the builds take different inputs: A {shapes['A']}, B {shapes['B']}")
    tname = arts["A"].manifest["target"]["name"]
    x = np.random.default_rng(seed).standard_normal(shapes["A"]).astype(np.float32)
    prof = Profiler(get_target(tname), threads=threads, repeat=rounds, min_repeat_ms=min_repeat_ms)
    with prof.session() as s:
        mods = {k: s.load(a.lib_path) for k, a in arts.items()}
        peers, inrun = {}, {}
        for k, m in mods.items():
            peers[k] = s.vm_sampler(m, [x])
            inrun[k] = s.inrun_sampler(m, [x])
            peers[f"{k}_instrumented"] = inrun[k]
        ov_info = {}
        if openvino:
            from dcpnas.targets import openvino as dov

            why = dov.available()
            if why:
                ov_info["openvino"] = f"not timed: {why}"
            else:
                fl = dov.compile_onnx(float_twin_onnx(onnx.load(str(arts["A"].onnx_path))), s.threads, precision=None)
                peers["float_openvino"] = python_sampler(lambda: fl.run(x))
                ov_info["openvino_float_precision"] = fl.precision
        raw, number = interleaved_samples(peers, rounds=rounds, min_repeat_ms=min_repeat_ms)
        threads_used = s.threads
    t = {k: Timing.from_samples(v, number[k]) for k, v in raw.items()}
    out = {"build_a": str(build_a), "build_b": str(build_b), "target": tname, "threads": threads_used,
           "rounds": rounds, **ov_info,
           "ms": {k: v.median_ms for k, v in t.items()}, "iqr_ms": {k: v.iqr_ms for k, v in t.items()},
           "b_over_a_paired": float(np.median(np.asarray(raw["B"]) / np.asarray(raw["A"])))}
    if "float_openvino" in raw:
        for k in ("A", "B"):
            out[f"speedup_vs_openvino_float_{k}"] = t["float_openvino"].median_ms / t[k].median_ms
            out[f"speedup_vs_openvino_float_{k}_paired"] = float(np.median(np.asarray(raw["float_openvino"])
                                                                           / np.asarray(raw[k])))
    fam = {}
    for k, a in arts.items():
        _, bd = inrun_accounting(t[k].median_ms, inrun[k].calls, inrun[k].per_call_ms[-rounds:],
                                 a.manifest["layers"], [1e3 * v for v in raw[k]])
        fam[k] = {**bd["by_kernel"], "vm builtins": bd["vm_builtins"], "vm dispatch": bd["vm_dispatch"]}
        out[f"calls_{k}"] = bd["calls"]
    out["by_kernel_ms"] = fam
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_a", type=Path)
    ap.add_argument("build_b", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--min-repeat-ms", type=float, default=20.0)
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    r = run(args.build_a, args.build_b, args.threads, args.rounds, args.min_repeat_ms, not args.no_openvino)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    ms, iqr = r["ms"], r["iqr_ms"]
    print(f"{r['target']}, {r['threads']} threads, {r['rounds']} interleaved rounds (median ms, IQR)")
    for k in ("A", "B"):
        sp = r.get(f"speedup_vs_openvino_float_{k}")
        extra = f"; x OpenVINO float {sp:.2f} (paired {r[f'speedup_vs_openvino_float_{k}_paired']:.2f})" if sp else ""
        print(f"  {k}: {ms[k]:.4f} ms (IQR {iqr[k]:.4f}), {r[f'calls_{k}']['kernels']} kernel calls{extra}  "
              f"[{r[f'build_{k.lower()}']}]")
    if "float_openvino" in ms:
        print(f"  OpenVINO float ({r.get('openvino_float_precision')}): {ms['float_openvino']:.4f} ms "
              f"(IQR {iqr['float_openvino']:.4f})")
    print(f"  B / A, median of per-round ratios: {r['b_over_a_paired']:.3f}")
    fa, fb = r["by_kernel_ms"]["A"], r["by_kernel_ms"]["B"]
    names = sorted(set(fa) | set(fb), key=lambda n: -max(fa.get(n, 0.0), fb.get(n, 0.0)))
    print(f"  {'in-run ms by kernel':32s} {'A':>9s} {'B':>9s}")
    for n in names:
        print(f"  {n:32s} {fa.get(n, 0.0):9.4f} {fb.get(n, 0.0):9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

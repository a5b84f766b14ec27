"""1-bit vs the best float runtime at the sizes people deploy: whole networks, batch 1, this CPU.

    python benchmarks/deploy.py [--json] [--out benchmarks/results/deploy_x86.json] [--only NAME] [--rounds 15]

Rows: DDPNAS_MCN_2 and DARTS_V2 (the DARTS paper's CIFAR cell) at 8 cells x 32 channels on 1x28x28,
at the DARTS CIFAR evaluation size (20 x 36 on 3x32x32) and at the DARTS ImageNet-mobile size
(14 x 48 on 3x224x224 with DARTS' ImageNet stem: three stride-2 float convs, the cells at 28/14/7).
Each row compiles the 1-bit network with fresh weights (`dcpnas compile --cells C --channels K
--input-shape ... [--stem imagenet]`; the build folders go under --build-root and are reused)
and benches it with `dcpnas bench`'s library function (targets/bench.py): 1-bit TVM, the float TVM
twin, the float network on ONNX Runtime and on OpenVINO, and the 1-bit network on OpenVINO, all
timed side by side in interleaved rounds in one process (median and IQR), with the target's thread
count; each row in a fresh process (isolated()). Resumable: each row is saved (atomically) into --out
as soon as it is measured; rows already there are skipped unless --force. A build whose parity failed is benched and flagged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# the DARTS paper's CIFAR-10 cell (Liu et al. 2019, genotypes.py DARTS_V2)
DARTS_V2 = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=range(2, 6))")
SIZES = ((8, 32, (1, 28, 28), "cifar"), (20, 36, (3, 32, 32), "cifar"), (14, 48, (3, 224, 224), "imagenet"))
SCHEMA = "dcpnas.deploy-bench/1"


def genotypes() -> dict:
    from dcpnas.genotype import DDPNAS_MCN_2, Genotype

    return {"ddpnas_mcn_2": DDPNAS_MCN_2, "darts_v2": Genotype.from_darts(DARTS_V2)}


def row_name(geno: str, cells: int, channels: int, shape, stem: str = "cifar") -> str:
    return f"{geno}-{cells}x{channels}-{'x'.join(map(str, shape))}" + ("" if stem == "cifar" else f"-{stem}")


def measure_row(geno_name, geno, cells, channels, shape, target_name: str, threads, build_root: Path, rounds: int,
                min_repeat_ms: float, stem: str = "cifar"):
    from dcpnas.compiler.artifact import Artifact
    from dcpnas.compiler.pipeline import compile_genotype
    from dcpnas.errors import DcpnasError
    from dcpnas.targets.bench import bench
    from dcpnas.targets import get_target
    from dcpnas.targets.profiler import Profiler

    target = get_target(target_name, threads=threads)
    name = row_name(geno_name, cells, channels, shape, stem)
    src = build_root / "genotypes" / name / "genotype.json"
    geno.save(src)
    out = build_root / f"{name}-{target.name}"
    t0 = time.perf_counter()
    try:
        art = Artifact.load(out)
        compile_s = None  # reused
    except DcpnasError:
        art = compile_genotype(src, target.name, out, cells=cells, channels=channels, input_shape=shape,
                               stem=stem, parity_inputs=4, check=False)
        compile_s = time.perf_counter() - t0
    r = bench(out, Profiler(target, repeat=rounds, min_repeat_ms=min_repeat_ms), per_layer=False)
    keys = ("binary_ms", "binary_iqr_ms", "float_tvm_ms", "float_tvm_iqr_ms", "float_ort_ms", "float_ort_iqr_ms",
            "float_openvino_ms", "float_openvino_iqr_ms", "binary_openvino_ms", "binary_openvino_iqr_ms",
            "speedup_vs_best_float", "best_float", "speedup_vs_float_ort", "speedup_vs_float_tvm",
            "speedup_vs_binary_openvino", "openvino", "openvino_float_precision", "openvino_binary_kernels",
            "threads", "device", "parity_passed", "warnings")
    return {"name": name, "genotype": geno_name, "cells": cells, "channels": channels, "input_shape": list(shape),
            "stem": stem,
            "compile_s": compile_s, "build": str(out), "parity": {k: art.manifest["parity"].get(k) for k in
                                                                  ("passed", "top1_agreement", "max_abs_diff_tvm")},
            **{k: r.get(k) for k in keys}, "created": r["created"]}


def isolated(fn, *args):
    """fn(*args) in a fresh process, as a user benches one build (`dcpnas bench`): no runtime, thread pool or
    session of an earlier row is alive while a row is timed."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/deploy_x86.json", help="results JSON (resumed, updated per row)")
    ap.add_argument("--build-root", default="build/deploy", help="where the builds go (reused when present)")
    ap.add_argument("--target", default="x86-avx512")
    ap.add_argument("--threads", type=int, default=None, help="[default: the target's]")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--min-repeat-ms", type=float, default=20.0)
    ap.add_argument("--only", action="append", help="row name(s) to measure (e.g. darts_v2-20x36-3x32x32)")
    ap.add_argument("--skip-large", action="store_true", help="leave out the 224x224 rows")
    ap.add_argument("--force", action="store_true", help="measure rows already in --out again")
    ap.add_argument("--json", action="store_true", help="print the results JSON on stdout at the end")
    args = ap.parse_args(argv)
    known = [row_name(g, c, ch, s, st) for c, ch, s, st in SIZES for g in genotypes()]
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:  # a row that does not exist would otherwise be skipped in silence and nothing measured
        ap.error(f"--only: no row named {', '.join(unknown)}; the rows: {', '.join(known)}")
    from dcpnas.io import read_json, write_json
    from dcpnas.targets import get_target

    target = get_target(args.target, threads=args.threads)
    out = Path(args.out)
    report = read_json(out, schema=SCHEMA) if out.is_file() else {
        "schema": SCHEMA, "target": target.name, "rows": [],
        "command": "python benchmarks/deploy.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    done = {r["name"]: r for r in report["rows"]}
    for cells, channels, shape, stem in SIZES:  # small sizes of both genotypes first
        for gname, geno in genotypes().items():
            name = row_name(gname, cells, channels, shape, stem)
            if (args.only and name not in args.only) or (args.skip_large and shape[1] >= 224):
                continue
            if name in done and not args.force:
                print(f"{name}: kept from {out}", file=sys.stderr)
                continue
            print(f"{name}: compiling (if needed) and timing ...", file=sys.stderr, flush=True)
            row = isolated(measure_row, gname, geno, cells, channels, shape, args.target, args.threads,
                           Path(args.build_root), args.rounds, args.min_repeat_ms, stem)
            done[name] = row
            report["rows"] = list(done.values())
            write_json(out, report)
            print(f"{name}: 1-bit {row['binary_ms']:.3f} ms, best float ({row['best_float']}) "
                  f"x{row['speedup_vs_best_float']:.2f}, 1-bit OpenVINO "
                  f"{row['binary_openvino_ms'] or float('nan'):.3f} ms", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("| row | 1-bit TVM ms | float TVM | float ORT | float OpenVINO | 1-bit OpenVINO | x best float | parity |")
        print("|---|---|---|---|---|---|---|---|")
        for r in report["rows"]:
            f = lambda k: "-" if r.get(k) is None else f"{r[k]:.3f} ({r[k.replace('_ms', '_iqr_ms')]:.3f})"  # noqa: E731
            print(f"| {r['name']} | {f('binary_ms')} | {f('float_tvm_ms')} | {f('float_ort_ms')} | "
                  f"{f('float_openvino_ms')} | {f('binary_openvino_ms')} | {r['speedup_vs_best_float']:.2f} | "
                  f"{'ok' if r['parity']['passed'] else 'FAILED'} |")
        print("ms: median (IQR) of interleaved rounds in one process; x best float = fastest float / 1-bit TVM")
    return 0


if __name__ == "__main__":
    sys.exit(main())

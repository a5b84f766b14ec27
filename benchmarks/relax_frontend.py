"""The project's ONNX importer vs TVM's own Relax ONNX frontend (issue 14: measure, then decide).

Both compile the same standard-op ONNX (the float twin of a genotype's network, BatchNorm calibrated on
the embedded images) for one CPU target; both are checked against ONNX Runtime on real test images and
timed side by side in one process, in interleaved rounds (TVM's time_evaluator on the VM's `main`), so
that the ratio survives a loaded host. Writes relax_frontend.json (schema dcpnas.relax-frontend/1).

    python benchmarks/relax_frontend.py [--target x86-avx2] [--genotype DDPNAS_MCN_2] [--rounds 5]
                                        [-o benchmarks/results/relax-frontend]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="x86-avx2")
    p.add_argument("--genotype", default="DDPNAS_MCN_2", help="a built-in genotype name or a genotype file")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("-o", "--out", type=Path, default=Path("benchmarks/results/relax-frontend"))
    a = p.parse_args(argv)

    import torch
    import tvm
    from tvm import relax

    from dcpnas import genotype as G
    from dcpnas.compiler.build import build_onnx_model, tvm_target
    from dcpnas.compiler.export import build_onnx
    from dcpnas.compiler.parity import run_ort
    from dcpnas.compiler.pipeline import calibrate_batchnorm
    from dcpnas.data import load_dataset
    from dcpnas.io import write_json
    from dcpnas.model import Network
    from dcpnas.targets import get_target
    from dcpnas.train import default_eval_space

    torch.set_num_threads(1)
    geno = getattr(G, a.genotype) if hasattr(G, a.genotype) else G.load_genotype(a.genotype)
    ds = load_dataset("embedded")
    norm = ds.normalization()
    net = Network(geno, default_eval_space(ds.input_shape, ds.num_classes), binary=False)
    torch.manual_seed(0)
    x_train, _ = ds.tensors("train", norm["mean"], norm["std"])
    calibrate_batchnorm(net, x_train)
    shape = (1,) + tuple(ds.input_shape)
    model = build_onnx(net, shape)
    x, _ = ds.tensors("test", norm["mean"], norm["std"])
    x = x[: a.images].numpy().astype(np.float32)
    ref = run_ort(model.SerializeToString(), x)
    tgt = get_target(a.target)
    tt = tvm_target(tgt)
    dev = tvm.cpu()
    record = {"schema": "dcpnas.relax-frontend/1", "target": tgt.name, "genotype": geno.digest(),
              "input_shape": list(shape), "tvm_version": tvm.__version__, "images": len(x), "rounds": a.rounds}
    vms = {}
    with tempfile.TemporaryDirectory(prefix="dcpnas-relaxfe-") as tmp:
        t0 = time.perf_counter()
        built = build_onnx_model(model, tgt, Path(tmp) / "ours.so")
        record["ours_build_s"] = time.perf_counter() - t0
        vms["ours"] = relax.VirtualMachine(tvm.runtime.load_module(str(built.lib_path)), dev)
        t0 = time.perf_counter()
        try:
            from tvm.relax.frontend.onnx import from_onnx

            mod = from_onnx(model, shape_dict={model.graph.input[0].name: list(shape)})
            ex = tvm.compile(mod, target=tt)
            vms["relax_frontend"] = relax.VirtualMachine(ex, dev)
            record["relax_frontend_build_s"] = time.perf_counter() - t0
        except Exception as e:  # the frontend's own errors: recorded, not hidden
            record["relax_frontend_error"] = str(e).strip().splitlines()[-1][:300]
        for name, vm in vms.items():
            y = np.concatenate([vm["main"](tvm.runtime.tensor(x[i:i + 1], dev)).numpy() for i in range(len(x))])
            record[f"{name}_max_abs_diff_vs_ort"] = float(np.abs(y - ref).max())
            record[f"{name}_top1_agreement_vs_ort"] = float((y.argmax(1) == ref.argmax(1)).mean())
        times = {k: [] for k in vms}
        xt = tvm.runtime.tensor(x[:1], dev)
        for _ in range(a.rounds):  # interleaved: each round times every peer once
            for name, vm in vms.items():
                f = vm.time_evaluator("main", dev, number=5, repeat=1, min_repeat_ms=50)
                times[name].append(f(xt).median * 1e3)
    for name, ts in times.items():
        record[f"{name}_ms"] = statistics.median(ts)
        record[f"{name}_ms_rounds"] = ts
    if "relax_frontend" in times:
        record["relax_frontend_over_ours"] = record["relax_frontend_ms"] / record["ours_ms"]
    path = write_json(a.out / "relax_frontend.json", record)
    for k, v in record.items():
        if not k.endswith("_rounds"):
            print(f"{k}: {v}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

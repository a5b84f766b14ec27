"""The ±1 conv, sign+pack and pool kernels of one build, compiled by two versions of the compiler, timed side by side.

    python benchmarks/build_kernels.py export BUILD OUT_DIR        # with the compiler under test on the path
    python benchmarks/build_kernels.py time BUILD DIR_A DIR_B [--rounds 9] [--json]

`export` compiles every distinct kernel shape of BUILD (a `dcpnas compile` folder: shapes from manifest.json,
attributes from model.onnx) into one library per shape in OUT_DIR. `time` loads the libraries of both folders
in one process, checks every output against its numpy reference (binary_conv2d_reference,
pack_activations_reference bit for bit, float_schedule.pool2d_reference), and times them in interleaved rounds
(targets/profiler.interleaved, min over the rounds: contention on a shared host only ever adds time). Rows:
us per call of A and B; totals weight each shape by its number of calls in the network.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

import numpy as np


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def shapes(build: Path) -> list[tuple[tuple, int]]:
    """[(key, calls)]: key = ("pm1" | "pack", x shape, C_out, kernel, strides, pads, dilations, group, C_in)
    or ("pool", kind, x shape, kernel, strides, pads, count_include_pad, residual)."""
    import onnx

    man = json.loads((build / "manifest.json").read_text())
    nodes = {n.name: n for n in onnx.load(str(build / "model.onnx"), load_external_data=False).graph.node}
    cnt: collections.Counter = collections.Counter()
    for lay in man["layers"]:
        node = nodes.get(lay["name"])
        if node is None or not lay["funcs"]:
            continue
        a = _attrs(node)
        f0 = lay["funcs"][0]
        xs = tuple(f0["args"][0][0])
        if lay["op"] == "BinaryConv2d":
            out = lay["funcs"][-1]["args"][-1][0]
            co = int(np.prod(out[1:-2]))  # [N, C_out, ...] or [N, G, Cog, ...]
            kind = "pm1" if "pm1" in f0["name"] else "pack"
            cnt[(kind, xs, co, tuple(a["kernel_shape"]), tuple(a.get("strides", (1, 1))), tuple(a.get("pads", (0,) * 4)),
                 tuple(a.get("dilations", (1, 1))), int(a.get("group", 1)), int(a["channels_in"]))] += 1
        elif lay["op"] in ("MaxPool", "AveragePool"):
            cnt[("pool", "max" if lay["op"] == "MaxPool" else "avg", xs, tuple(a["kernel_shape"]),
                 tuple(a.get("strides", (1, 1))), tuple(a.get("pads", (0,) * 4)), bool(a.get("count_include_pad", 0)),
                 len(f0["args"]) == 3)] += 1
    return sorted(cnt.items(), key=lambda kv: (kv[0][0], -kv[1]))


def name(key) -> str:
    if key[0] == "pool":
        _, kind, xs, k, s, p, cip, res = key
        return f"pool-{kind}-c{xs[1]}h{xs[2]}k{k[0]}s{s[0]}{'-res' if res else ''}"
    kind, xs, co, k, s, p, d, g, ci = key
    return f"{kind}-c{xs[1]}h{xs[2]}o{co}k{k[0]}s{s[0]}d{d[0]}g{g}"


def problem(key, target):
    """(PrimFunc builder, numpy arguments, expected output builder, exact?) of one kernel shape (builders: so
    that `export` runs with a compiler version whose references differ)."""
    from dcpnas.compiler import float_schedule as fs
    from dcpnas.compiler.kernels import BinaryConvAttrs, binary_conv2d_reference, pack_weights
    from dcpnas.compiler.kernels import depthwise as dwm
    from dcpnas.compiler.kernels.pack import pack_activations_reference
    from dcpnas.compiler.kernels.emit import cpu_pack_func
    from dcpnas.compiler.kernels.shapes import geometry
    from dcpnas.compiler.kernels.targets import cpu_params

    rng = np.random.default_rng(0)
    if key[0] == "pool":
        _, kind, xs, k, s, p, cip, res = key
        x = rng.standard_normal(xs).astype(np.float32)
        oh, ow = (xs[2] + p[0] + p[2] - k[0]) // s[0] + 1, (xs[3] + p[1] + p[3] - k[1]) // s[1] + 1
        r = rng.standard_normal((xs[0], xs[1], oh, ow)).astype(np.float32) if res else None
        want = lambda: fs.pool2d_reference(x, kind=kind, kernel=k, strides=s, pads=p, count_include_pad=cip,  # noqa: E731
                                           res=r)
        build = lambda: fs.pool2d_nchw(xs, kind=kind, kernel=k, strides=s, pads=p, count_include_pad=cip,  # noqa: E731
                                       name="k", cpu=cpu_params(target), residual=res)
        return build, [x] + ([r] if res else []) + [np.zeros((xs[0], xs[1], oh, ow), np.float32)], want, kind == "max"
    kind, xs, co, k, s, p, d, g, ci = key
    attrs = BinaryConvAttrs(k, s, p, d, g, ci)
    x = rng.standard_normal(xs).astype(np.float32)
    wb = pack_weights(rng.standard_normal((co, ci // g) + tuple(k)))
    ins, ish = rng.uniform(-2, 2, ci).astype(np.float32), rng.standard_normal(ci).astype(np.float32)
    geo = geometry(xs, wb, attrs, target)
    if kind == "pack":
        build = lambda: cpu_pack_func(geo, target, True)  # noqa: E731
        return build, [x, ins, ish, np.zeros(geo.packed_shape, geo.word_dtype)], \
            (lambda: pack_activations_reference(x, attrs, ins, ish, word_bits=geo.word_bits)), True
    sc, bi = rng.uniform(0.5, 2, co).astype(np.float32), rng.standard_normal(co).astype(np.float32)
    sl = rng.uniform(-0.3, 0.3, co).astype(np.float32)
    want = lambda: binary_conv2d_reference(x, wb, sc, bi, attrs, in_scale=ins, in_shift=ish, prelu=sl)  # noqa: E731
    build = lambda: dwm.pm1_func(geo, target, affine=True, prelu=True)  # noqa: E731
    return build, [x, ins, ish, dwm.pm1_weights(wb, geo), sc, bi, sl, np.zeros(geo.out_shape, np.float32)], want, False


def export(build: Path, out: Path, target) -> int:
    import tvm

    out.mkdir(parents=True, exist_ok=True)
    keys = shapes(build)
    for key, _ in keys:
        f = problem(key, target)[0]()
        ex = tvm.compile(tvm.IRModule({"k": f.with_attr("global_symbol", "k")}), target=tvm.target.Target(target))
        ex.export_library(str(out / f"{name(key)}.so"))
    return len(keys)


def time_dirs(build: Path, dirs: list[Path], target, rounds: int) -> list[dict]:
    import tvm

    from dcpnas.targets.profiler import interleaved

    dev = tvm.cpu()
    rows = []
    for key, calls in shapes(build):
        _, arrays, want, exact = problem(key, target)
        want = want()
        samplers = {}
        for i, d in enumerate(dirs):
            rt = tvm.runtime.load_module(str(d / f"{name(key)}.so"))
            args = [tvm.runtime.tensor(a, dev) for a in arrays]
            rt["k"](*args)
            got = args[-1].numpy()
            if exact:
                np.testing.assert_array_equal(got, want, err_msg=f"{d}: {name(key)}")
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()),
                                           err_msg=f"{d}: {name(key)}")
            evs: dict = {}

            def sample(m, rt=rt, args=args, evs=evs):
                if m not in evs:
                    evs[m] = rt.time_evaluator("k", dev, number=m, repeat=1, min_repeat_ms=0)
                return float(evs[m](*args).results[0])
            samplers[str(i)] = sample
        t = interleaved(samplers, rounds=rounds, min_repeat_ms=10)
        rows.append({"kernel": name(key), "calls": calls,
                     "us": [t[str(i)].value("min") * 1e3 for i in range(len(dirs))]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("build", type=Path)
    e.add_argument("out", type=Path)
    t = sub.add_parser("time")
    t.add_argument("build", type=Path)
    t.add_argument("dirs", type=Path, nargs="+")
    t.add_argument("--rounds", type=int, default=9)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from dcpnas.targets import get_target

    man = json.loads((args.build / "manifest.json").read_text())
    target = get_target(man["target"]["name"]).tvm
    if args.cmd == "export":
        print(f"exported {export(args.build, args.out, target)} kernels to {args.out}", file=sys.stderr)
        return 0
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    rows = time_dirs(args.build, args.dirs, target, args.rounds)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    fam: dict = collections.defaultdict(lambda: np.zeros(len(args.dirs)))
    print(f"{'kernel':36s} calls " + " ".join(f"{chr(65 + i):>9s}" for i in range(len(args.dirs))) + "  (us per call, min)")
    for r in rows:
        print(f"{r['kernel']:36s} {r['calls']:5d} " + " ".join(f"{v:9.2f}" for v in r["us"]))
        fam[r["kernel"].split("-")[0]] += np.asarray(r["us"]) * r["calls"]
    for k, v in fam.items():
        print(f"{k + ' (calls x us)':36s}       " + " ".join(f"{x:9.1f}" for x in v) + "   B/A " +
              " ".join(f"{x / v[0]:.3f}" for x in v[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

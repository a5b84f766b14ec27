"""`dcpnas bench`: the 1-bit network vs the float network on OpenVINO, ONNX Runtime and its TVM twin,
and vs the same 1-bit network on OpenVINO (targets/openvino.py).

Input: a build folder of `dcpnas compile` (manifest.json, model.onnx, model.so). The float twin
(compiler/twin.py) is the sibling folder `<name>-float-<target>` written by `dcpnas compile --float`
when it exists; otherwise it is derived from the 1-bit model.onnx and built into DIR/float-twin/.

Timings: end to end, every peer side by side in one process (profiler.interleaved: rounds of one
sample per peer, order rotating; median and IQR; the same thread count for all; ONNX Runtime and
OpenVINO on local x86 runs only; `speedup_vs_best_float` = fastest float / 1-bit TVM),
per layer (every PrimFunc the manifest's `layers` name, timed by name with time_evaluator on
arguments of the recorded shapes: floats random normal, integers zero, which keeps index tables in
range; locally from the build's own library, over RPC from `kernels.so`, a plain library of the same
PrimFuncs, since a remote Relax executable does not expose its kernels by name; these are timed
alone, hot in cache, so "VM dispatch and glue" = end to end - their sum also holds what the network's
own run adds to them). Layers are grouped into the network's ops (stem, cells.i.pre0/pre1,
cells.i.ops.k, cells.i glue, classifier), each shown with its LUT prediction (the OpKeys compile
recorded in the manifest).
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np

from dcpnas.errors import ArtifactError, DcpnasError
from dcpnas.progress import ProgressFn, no_progress
from dcpnas.compiler.twin import float_twin, kernels_library
from dcpnas.targets.profiler import Profiler, interleaved, python_sampler

SCHEMA = "dcpnas.bench/1"
JSON_KEYS = ("target", "threads", "binary_ms", "float_tvm_ms", "float_ort_ms", "float_openvino_ms",
             "binary_openvino_ms", "speedup_vs_float_ort", "speedup_vs_float_tvm", "speedup_vs_best_float",
             "speedup_vs_binary_openvino", "layers")
FLOAT_PEERS = ("float_tvm", "float_ort", "float_openvino")
_GROUP = re.compile(r"^(stem|classifier|cells\.\d+\.(?:pre0|pre1|ops\.\d+))(?:\.|$)")
_CELL = re.compile(r"^(cells\.\d+)\.")


def group_of(layer_name: str) -> str:
    """The network op a layer belongs to: 'cells.2.ops.5.op.0.dw.bn_in' -> 'cells.2.ops.5';
    a cell's node adds and concat -> 'cells.2.glue'."""
    m = _GROUP.match(layer_name)
    if m:
        return m.group(1)
    m = _CELL.match(layer_name)
    return f"{m.group(1)}.glue" if m else layer_name


def newest_build(root: Path) -> Path:
    """The 1-bit build folder under `root` whose manifest.json is newest; ArtifactError when none."""
    import json

    found = []
    for mf in Path(root).glob("*/manifest.json"):
        if mf.parent.name.startswith("."):
            continue  # a compile in progress
        try:
            if json.loads(mf.read_text()).get("binary"):
                found.append((mf.stat().st_mtime, mf.parent))
        except (OSError, ValueError):
            continue
    if not found:
        raise ArtifactError(f"no 1-bit build under {root}/; run `dcpnas compile GENOTYPE --target T` or name a build folder")
    return max(found)[1]


# ---- timing ----------------------------------------------------------------------------------------
def ort_runner(onnx_bytes: bytes, x: np.ndarray, threads: int):
    """A callable running the ONNX model on ONNX Runtime (CPU, intra-op threads = `threads`, sequential)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})


def _openvino_peers(float_onnx: bytes, binary_onnx: bytes, x: np.ndarray, threads: int) -> tuple[dict, dict]:
    """({peer: callable}, info) of the float and the 1-bit network on OpenVINO (CPU plugin)."""
    from dcpnas.targets import openvino as dov

    why = dov.available()
    if why:
        return {}, {"openvino": f"not timed: {why}"}
    fl = dov.compile_onnx(float_onnx, threads, precision=None)  # the plugin's default: what a user gets
    bi = dov.compile_onnx(binary_onnx, threads)                 # f32: parity with ONNX Runtime
    import openvino

    info = {"openvino": openvino.__version__, "openvino_float_precision": fl.precision,
            "openvino_binary_kernels": bi.kernels}
    return {"float_openvino": lambda: fl.run(x), "binary_openvino": lambda: bi.run(x)}, info


def _arg(shape, dtype, rng):
    if dtype.startswith("float"):
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype)  # integer inputs: index tables must stay in range


def time_layers(sess, lib, layers: list[dict], rng) -> list[dict]:
    """Per layer: the sum of the median times of its PrimFuncs (ms)."""
    rows = []
    for layer in layers:
        total, n = 0.0, 0
        for f in layer["funcs"]:
            args = [_arg(tuple(s), d, rng) for s, d in f["args"]]
            total += sess.time_func(lib, f["name"], args).median_ms
            n += 1
        rows.append({"layer": layer["name"], "op": layer["op"], "group": group_of(layer["name"]), "ms": total, "funcs": n})
    return rows


# ---- LUT predictions per group ---------------------------------------------------------------------
def _lut_column(art, target, threads: int) -> tuple[dict, dict]:
    """({group: predicted ms or None}, info about the LUT): each group's OpKey as `dcpnas compile`
    recorded it (manifest `op_keys`); no predictions from a LUT measured at another thread count."""
    from dcpnas.space import SearchSpace

    if not art.manifest.get("space"):
        return {}, {"lut": "n/a: the build has no search space (compiled from an .onnx file)"}
    if not art.manifest.get("op_keys"):
        return {}, {"lut": "n/a: the manifest records no op keys (built by an older dcpnas: compile it again)"}
    try:
        lut = target.load_lut()
    except DcpnasError as e:
        return {}, {"lut": f"unavailable: {e}"}
    if lut.threads != threads:
        return {}, {"lut": f"not shown: the {lut.method} LUT holds {lut.threads}-thread figures, this bench ran "
                           f"{threads} threads (bench with --threads {lut.threads} to compare)"}
    space = SearchSpace.from_dict(art.manifest["space"])
    pred = {}
    for g, key in art.manifest["op_keys"].items():
        pred[g] = None if key is None or key not in lut else lut.query(key)
    missing = sorted(g for g, key in art.manifest["op_keys"].items() if key is not None and key not in lut)
    per_cell = float(lut.glue.get("per_cell_ms", 0.0))
    for i in range(space.cells):  # the glue is charged to the pre keys in query(); show it on its own row
        for pre in ("pre0", "pre1"):
            if pred.get(f"cells.{i}.{pre}") is not None:
                pred[f"cells.{i}.{pre}"] -= 0.5 * per_cell
        pred[f"cells.{i}.glue"] = per_cell if per_cell else None
    if pred.get("stem") is not None:
        pred["stem"] -= float(lut.glue.get("call_overhead_ms", 0.0))
    return pred, {"lut": lut.method, "lut_device": lut.device,
                  "lut_call_overhead_ms": float(lut.glue.get("call_overhead_ms", 0.0)),
                  "lut_missing_layers": missing}


# ---- the benchmark ---------------------------------------------------------------------------------
def bench(build_dir: str | Path, profiler: Profiler, *, per_layer: bool = True, ort: bool = True,
          emulated: bool = False, seed: int = 0, progress: ProgressFn = no_progress) -> dict:
    """Time the build in `build_dir` (see module docstring); returns the report (bench.json content).
    Nothing is written except the float twin's build when it must be derived."""
    from dcpnas.compiler.artifact import Artifact

    art = Artifact.load(build_dir)
    m = art.manifest
    target = profiler.target
    if m["target"]["name"] != target.name:
        raise ArtifactError(f"{art.path} was built for {m['target']['name']}, not {target.name}; "
                            f"bench it with --target {m['target']['name']} or rebuild")
    if not m["binary"]:
        raise ArtifactError(f"{art.path} is a float build; bench the 1-bit build (its float twin is found or derived)")
    parity = m.get("parity") or {}
    warnings = []
    if parity.get("passed") is False:
        warnings.append(f"PARITY FAILED for this build (manifest: top-1 agreement {parity.get('top1_agreement')}, "
                        f"max |TVM-ref| {parity.get('max_abs_diff_tvm')}): its timings are of a network that "
                        f"disagrees with its reference")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(m["input"]["shape"])).astype(np.float32)
    local_x86 = profiler.rpc is None and target.arch == "x86_64"
    steps = 2 + (2 if per_layer else 0)
    notes = []
    with profiler.session() as s:  # first: an unreachable device fails before anything is written
        f_lib, f_layers, f_onnx, f_src, f_dir = float_twin(art, target, progress)
        progress("bench", 0, steps)
        b_mod, f_mod = s.load(art.lib_path), s.load(f_lib)
        b_kern, f_kern = b_mod, f_mod
        if per_layer and s.remote is not None:
            import onnx as _onnx

            progress("kernel libs", 0, 2)
            b_kern = s.load(kernels_library(_onnx.load(str(art.onnx_path)), target, art.path / "kernels.so"))
            progress("kernel libs", 1, 2)
            f_kern = s.load(kernels_library(_onnx.load_from_string(f_onnx), target, f_dir / "kernels.so"))
            progress("kernel libs", 2, 2)
        peers = {"binary": s.vm_sampler(b_mod, [x]), "float_tvm": s.vm_sampler(f_mod, [x])}
        ov_info: dict = {}
        if ort and local_x86:
            peers["float_ort"] = python_sampler(ort_runner(f_onnx, x, s.threads))
            ov, ov_info = _openvino_peers(f_onnx, art.onnx_path.read_bytes(), x, s.threads)
            peers.update({k: python_sampler(f) for k, f in ov.items()})
        elif ort:
            notes.append("ONNX Runtime and OpenVINO run on this host only: not timed for an RPC device")
        progress("bench", 1, steps)
        timings = interleaved(peers, warmup=profiler.warmup, rounds=profiler.repeat,
                              min_repeat_ms=profiler.min_repeat_ms)
        progress("bench", 2, steps, binary_ms=timings["binary"].median_ms)
        b_rows = time_layers(s, b_kern, m["layers"], rng) if per_layer else []
        f_rows = time_layers(s, f_kern, f_layers, rng) if per_layer else []
        if per_layer:
            progress("bench", 4, steps)
        threads = s.threads
    lut_pred, lut_info = _lut_column(art, target, threads)
    layers = _group_rows(b_rows, f_rows, lut_pred, m["layers"]) if per_layer else []
    binary_layers = sum(r["ms"] for r in b_rows if r["op"] == "BinaryConv2d")
    ms = {k: t.median_ms for k, t in timings.items()}
    tb = ms["binary"]
    floats = {k: ms[k] for k in FLOAT_PEERS if k in ms}
    best = min(floats, key=floats.get)
    report = {
        "schema": SCHEMA, "target": target.name, "threads": threads, "device": profiler.device_name,
        "emulated": emulated, "build": str(art.path), "float_twin": f_src,
        "binary_ms": tb, "binary_iqr_ms": timings["binary"].iqr_ms,
        **{f"{k}_ms": ms.get(k) for k in ("float_tvm", "float_ort", "float_openvino", "binary_openvino")},
        **{f"{k}_iqr_ms": timings[k].iqr_ms if k in timings else None
           for k in ("float_tvm", "float_ort", "float_openvino", "binary_openvino")},
        "speedup_vs_float_ort": ms["float_ort"] / tb if "float_ort" in ms else None,
        "speedup_vs_float_tvm": ms["float_tvm"] / tb,
        "speedup_vs_best_float": floats[best] / tb, "best_float": best,
        "speedup_vs_binary_openvino": ms["binary_openvino"] / tb if "binary_openvino" in ms else None,
        "parity_passed": parity.get("passed"), "warnings": warnings, **ov_info,
        "lut_predicted_ms": _lut_total(lut_pred, lut_info) if lut_pred else None, **lut_info,
        "breakdown_ms": {"binary_conv_layers": binary_layers,
                         "other_layers": sum(r["ms"] for r in b_rows) - binary_layers,
                         "vm_and_glue": tb - sum(r["ms"] for r in b_rows)} if per_layer else None,
        "timing": {"warmup": profiler.warmup, "rounds": profiler.repeat, "min_repeat_ms": profiler.min_repeat_ms,
                   "statistic": "median of interleaved rounds (every peer sampled once per round, order "
                                "rotating, one process); iqr = q3 - q1",
                   "samples_ms": {k: t.to_dict() for k, t in timings.items()}},
        "notes": "; ".join(notes),
        "layers": layers,
        "layer_detail": {"binary": b_rows, "float": f_rows},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return report


def _lut_total(pred: dict, info: dict) -> float | None:
    """The LUT's end-to-end prediction; None where some layer's op is not in the LUT (a network larger
    than the search space the LUT covers): a sum over the layers it does cover would mislead."""
    if info.get("lut_missing_layers"):
        return None
    return float(sum(v for v in pred.values() if v is not None) + info.get("lut_call_overhead_ms", 0.0))


def _group_rows(b_rows, f_rows, lut_pred, layers) -> list[dict]:
    order = list(dict.fromkeys([group_of(lay["name"]) for lay in layers]))
    out = []
    for g in order:
        b = [r for r in b_rows if r["group"] == g]
        f = [r for r in f_rows if r["group"] == g]
        bms = sum(r["ms"] for r in b) if b else None
        fms = sum(r["ms"] for r in f) if f else None
        kind = "binary" if any(r["op"] == "BinaryConv2d" for r in b) or any(
            lay["op"] == "BinaryConv2d" for lay in layers if group_of(lay["name"]) == g) else "float"
        out.append({"layer": g, "kind": kind, "binary_ms": bms, "float_ms": fms,
                    "speedup": (fms / bms) if bms and fms else None, "lut_ms": lut_pred.get(g)})
    return out


def json_summary(report: dict) -> dict:
    """The `dcpnas bench --json` object of DESIGN.md."""
    return {k: report[k] for k in JSON_KEYS}


# ---- outputs ---------------------------------------------------------------------------------------
def write_outputs(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """bench.json and bench.png (per-layer time, 1-bit vs float, and speedup), each written atomically."""
    from dcpnas.io import atomic_write_bytes, write_json

    out_dir = Path(out_dir)
    png = atomic_write_bytes(out_dir / "bench.png", render_chart(report))
    js = write_json(out_dir / "bench.json", report)
    return js, png


def render_chart(report: dict) -> bytes:
    """PNG bytes: per-layer ms (1-bit vs float TVM, log scale) and per-layer speedup."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["layers"] if r["binary_ms"] is not None or r["float_ms"] is not None]
    names = [r["layer"] for r in rows]
    xs = np.arange(len(rows))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(8, 0.28 * len(rows) + 2), 8), sharex=True)
    b = [r["binary_ms"] or 0 for r in rows]
    f = [r["float_ms"] or 0 for r in rows]
    a1.bar(xs - 0.2, f, 0.4, label=f"float (TVM) {report['float_tvm_ms']:.3f} ms e2e", color="#999999")
    a1.bar(xs + 0.2, b, 0.4, label=f"1-bit (TVM) {report['binary_ms']:.3f} ms e2e", color="#1f77b4")
    a1.set_yscale("log")
    a1.set_ylabel("ms per layer")
    title = f"dcpnas bench: {report['target']}, {report['threads']} threads"
    others = [(lab, report.get(k)) for lab, k in (("float ORT", "float_ort_ms"), ("float OpenVINO", "float_openvino_ms"),
                                                  ("1-bit OpenVINO", "binary_openvino_ms")) if report.get(k)]
    if others:
        title += "\n" + ", ".join(f"{lab} {v:.3f} ms" for lab, v in others)
    title += f"\n1-bit TVM vs best float ({report['best_float']}): {report['speedup_vs_best_float']:.2f}x"
    if report.get("emulated"):
        title += " (EMULATED: not real device timings)"
    a1.set_title(title)
    a1.legend()
    sp = [r["speedup"] or 0 for r in rows]
    a2.bar(xs, sp, 0.6, color=["#2ca02c" if r["kind"] == "binary" else "#ff7f0e" for r in rows])
    a2.axhline(1.0, color="k", lw=0.8)
    a2.set_ylabel("speedup float / 1-bit")
    a2.set_xticks(xs, names, rotation=90, fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()

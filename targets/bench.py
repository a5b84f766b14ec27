"""`dcpnas bench`: the 1-bit network vs the float network on OpenVINO, ONNX Runtime and its TVM twin,
and vs the same 1-bit network on OpenVINO (targets/openvino.py).

Input: a build folder of `dcpnas compile` (manifest.json, model.onnx, model.so). The float twin
(compiler/twin.py) is the sibling folder `<name>-float-<target>` written by `dcpnas compile --float`
when it exists; otherwise it is derived from the 1-bit model.onnx and built into DIR/float-twin/.

Timings: end to end, every peer side by side in one process (profiler.interleaved: rounds of one
sample per peer, order rotating; median and IQR; the same thread count for all; ONNX Runtime and
OpenVINO on local x86 runs only; `speedup_vs_best_float` = fastest float / 1-bit TVM),
per layer inside the network's own run: every call the Relax VM makes (each layer's PrimFuncs,
which the manifest's `layers` name, and the VM's builtins such as alloc_tensor) is timed by a C instrument
(targets/vmtimer.py; TVM 0.27's VM has no profiler) in extra instrumented peers of the same interleaved
rounds ("binary_instrumented", "float_tvm_instrumented"). Their total is the plain end to end x the median
over the rounds of (in-run sum / plain sample of the same round): a load swing hits both alike and cancels
in the ratio; each call's figure is its median over the rounds, scaled so that all sum to that total
(`noise_spread`: a loaded host's preemptions, which per-call medians drop and the end to end holds, spread
over the calls in proportion to their time). Each call is attributed to its manifest layer (a kernel shared by several layers: the k-th call to the
k-th listing, in run order).

The breakdown adds up by construction: binary conv layers + other layers + VM builtins (+ kernels no
layer lists) + VM dispatch = the plain end to end (`binary_ms`, uninstrumented), where
VM dispatch = end to end - the sum of the in-run call times: what the interpreter does between calls. It
is never negative: where the in-run sum exceeds the plain end to end (host noise: the two are medians of
different samples), every in-run figure is scaled by end to end / in-run sum (`scale` < 1 in the
breakdown, the raw figures kept as `in_run_ms`) and dispatch is 0. The instrumented run itself is slower
than the plain one (the instrument's own cost, between calls): `instrumentation_overhead` says by how
much. The float twin gets the same accounting (`float_breakdown_ms`), so the table compares like with like.

`layers`: one row per network op (stem, cells.i.pre0/pre1, cells.i.ops.k, cells.i glue, classifier), then
the VM rows (kind "vm": builtins, dispatch, and any kernel no layer lists); the 1-bit column sums to the end
to end, `share` is each row's fraction of it; each op row shows its LUT prediction (the OpKeys compile
recorded in the manifest); `breakdown_ms.by_kernel` sums the 1-bit time per kernel family (the project's
kernels, e.g. dcpnas_binary_pack / _conv / _pm1conv, and the op of every other layer).

Over RPC, for CUDA, and without a C compiler on this host the VM is not instrumented: there the layers' PrimFuncs are timed alone, hot in
cache, by name with time_evaluator on arguments of the recorded shapes (floats random normal, integers
zero, which keeps index tables in range), from `kernels.so`, a plain library of the same PrimFuncs (a
remote Relax executable does not expose its kernels by name); such rows do not add up to the end to end
and no dispatch term is given (`breakdown_ms.method` = "alone", with a note).
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np

from dcpnas.errors import ArtifactError, DcpnasError, DeviceError
from dcpnas.io import parse_json
from dcpnas.progress import ProgressFn, no_progress
from dcpnas.compiler.twin import float_twin, kernels_library
from dcpnas.targets.profiler import Profiler, Timing, interleaved_samples, python_sampler

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
    found = []
    for mf in Path(root).glob("*/manifest.json"):
        if mf.parent.name.startswith("."):
            continue  # a compile in progress
        try:
            d = parse_json(mf.read_text())
            if isinstance(d, dict) and d.get("binary"):
                found.append((mf.stat().st_mtime, mf.parent))
        except (OSError, ValueError):
            continue
    if not found:
        raise ArtifactError(f"no 1-bit build under {root}/; run `dcpnas compile GENOTYPE --target T` or name a build folder")
    return max(found)[1]


# ---- timing ----------------------------------------------------------------------------------------
def ort_runner(onnx_bytes: bytes, x: np.ndarray, threads: int):
    """A callable running the ONNX model on ONNX Runtime (CPU, intra-op threads = `threads`, sequential).

    Its workers do not spin between runs: ORT pins them to cores and by default lets them spin-wait after
    a run, which takes a core from the peer timed next in interleaved rounds. Measured (2 threads, the
    14 x 48 224x224 DDPNAS_MCN_2 build, fresh processes, the two settings alternated 4 times): OpenVINO
    float 8.3-9.8 ms beside a spinning ORT, 6.2-7.2 ms beside this one; ORT itself pays 1.3x (26 -> 34 ms)
    and stays 4-5x slower than OpenVINO."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


# ---- in-run accounting -----------------------------------------------------------------------------
VM_BUILTIN = "vm."  # the Relax VM's own functions: vm.builtin.alloc_tensor, vm.builtin.reshape, ...
VM_ROWS = ("vm builtins", "vm dispatch", "unattributed kernels")


def attribute_calls(calls: list[str], layers: list[dict]) -> list[int | None]:
    """Per VM call (symbols in run order): the index of the manifest layer whose PrimFunc it runs, or None
    (a VM builtin, or a function no layer lists). Identical kernels share one symbol across layers: the
    k-th call of a symbol goes to its k-th listing in manifest order, the order the network runs them."""
    from collections import deque

    queues: dict[str, deque] = {}
    for i, lay in enumerate(layers):
        for f in lay["funcs"]:
            queues.setdefault(f["name"], deque()).append(i)
    return [queues[c].popleft() if queues.get(c) else None for c in calls]


def kernel_family(symbol: str, op: str) -> str:
    """What a layer's kernel is, for `by_kernel`: the project's own kernels by name without the number
    TVM appends to variants ('dcpnas_binary_pm1conv3' -> 'dcpnas_binary_pm1conv'), every other kernel
    by its layer's op ('MaxPool')."""
    return re.sub(r"\d+$", "", symbol) if symbol.startswith("dcpnas_") else op


def inrun_accounting(e2e_ms: float, calls: list[str], per_call_ms: list, layers: list[dict],
                     plain_ms: list[float] | None = None) -> tuple[list[dict], dict]:
    """(rows, breakdown) of one network from in-run call times (see the module docstring).

    e2e_ms: the plain end to end (median); calls: the VM's calls of one run, in order; per_call_ms: one
    array per instrumented sample, each call's mean ms in that sample; layers: the manifest's layers.
    plain_ms: the plain samples of the same rounds, one per instrumented sample (None: unpaired).
    The in-run total (`in_run_sum`) is e2e_ms x the median over the rounds of (the round's in-run sum / its
    plain sample) (`in_run_fraction_per_round`: a load swing hits both samples of a round alike and
    cancels in the ratio); unpaired, the median of the in-run sums. Each call's figure is its median over
    the samples times `noise_spread`, which makes them sum to that total (usually >= 1: per-call medians
    drop the preemptions that a typical sample, and the end to end, holds; they go to the calls in
    proportion to their time, the odds of a call being hit).
    rows: one per layer, `ms` (scaled, see below), `in_run_ms` (measured), `funcs` (calls). breakdown:
    binary_conv_layers + other_layers + vm_builtins + unattributed_kernels + vm_dispatch = end_to_end,
    vm_dispatch >= 0; where the in-run sum exceeds e2e_ms every in-run figure is scaled by
    e2e_ms / in-run sum (`scale`) and dispatch is 0."""
    if not per_call_ms:
        raise DeviceError("no instrumented samples to account for")
    samples = np.stack([np.asarray(v, float) for v in per_call_ms])
    if samples.shape[1] != len(calls):
        raise DeviceError(f"internal: {samples.shape[1]} call times for {len(calls)} calls")
    sums = samples.sum(axis=1)
    ratios = None
    if plain_ms is not None:
        plain = np.asarray(plain_ms, float)
        if plain.shape != sums.shape:
            raise DeviceError(f"internal: {plain.size} plain samples for {sums.size} instrumented ones")
        ratios = sums / plain
        total = e2e_ms * float(np.median(ratios))
    else:
        total = float(np.median(sums))
    med = np.median(samples, axis=0)  # robust: a preemption of the shared host lands on one call of one sample
    norm = total / float(med.sum()) if med.sum() > 0 else 1.0
    per = med * norm
    attr = attribute_calls(calls, layers)
    layer_ms, n_funcs = np.zeros(len(layers)), [0] * len(layers)
    builtins: dict[str, float] = {}
    unattributed: dict[str, float] = {}
    by_kernel: dict[str, float] = {}
    for c, a, t in zip(calls, attr, per):
        if a is not None:
            layer_ms[a] += t
            n_funcs[a] += 1
            fam = kernel_family(c, layers[a]["op"])
            by_kernel[fam] = by_kernel.get(fam, 0.0) + t
        elif c.startswith(VM_BUILTIN):
            builtins[c] = builtins.get(c, 0.0) + t
        else:
            unattributed[c] = unattributed.get(c, 0.0) + t
    measured = float(per.sum())
    scale = min(1.0, e2e_ms / measured) if measured > 0 else 1.0
    rows = [{"layer": lay["name"], "op": lay["op"], "group": group_of(lay["name"]), "ms": float(layer_ms[i] * scale),
             "in_run_ms": float(layer_ms[i]), "funcs": n_funcs[i]} for i, lay in enumerate(layers)]
    binary = sum(r["ms"] for r in rows if r["op"] == "BinaryConv2d")
    breakdown = {
        "method": "in_run", "end_to_end": e2e_ms,
        "binary_conv_layers": binary, "other_layers": sum(r["ms"] for r in rows) - binary,
        "vm_builtins": sum(builtins.values()) * scale, "unattributed_kernels": sum(unattributed.values()) * scale,
        "vm_dispatch": max(0.0, e2e_ms - measured * scale),
        "in_run_sum": measured, "in_run_sums_per_sample": [float(v) for v in sums], "noise_spread": norm,
        "in_run_fraction_per_round": None if ratios is None else [float(v) for v in ratios],
        "scale": scale,
        "calls": {"kernels": sum(n_funcs), "builtins": sum(1 for c, a in zip(calls, attr) if a is None and c.startswith(VM_BUILTIN)),
                  "unattributed": sum(1 for c, a in zip(calls, attr) if a is None and not c.startswith(VM_BUILTIN))},
        "by_kernel": {k: v * scale for k, v in sorted(by_kernel.items(), key=lambda kv: -kv[1])},
        "vm_builtins_by_name": {k: v * scale for k, v in sorted(builtins.items(), key=lambda kv: -kv[1])},
        "unattributed_by_name": {k: v * scale for k, v in sorted(unattributed.items(), key=lambda kv: -kv[1])},
    }
    return rows, breakdown


def alone_accounting(rows: list[dict], note: str) -> dict:
    """The breakdown of layers timed alone (RPC): no dispatch term, since alone times do not add up."""
    binary = sum(r["ms"] for r in rows if r["op"] == "BinaryConv2d")
    return {"method": "alone", "binary_conv_layers": binary, "other_layers": sum(r["ms"] for r in rows) - binary,
            "vm_builtins": None, "unattributed_kernels": None, "vm_dispatch": None, "note": note}


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
        lut = target.load_lut(threads)  # the table of this thread count where one is shipped
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


UNSTABLE_REL_IQR = 0.5  # a peer whose IQR exceeds half its median was timed on a host busy with other work


def unstable_timing_warnings(timings: dict, threads: int) -> list[str]:
    """One warning per peer (end-to-end, not instrumented) whose samples spread by more than UNSTABLE_REL_IQR
    of their median: measured on this 2-core host with one core taken by another job, the 2-thread TVM run
    of a network went from ~1 ms to a 20 ms median with a 100 ms IQR (a parallel region waits for its
    preempted thread), and such a median says nothing about the network."""
    bad = [f"{k} {t.median_ms:.3g} ms (IQR {t.iqr_ms:.3g})" for k, t in timings.items()
           if not k.endswith("_instrumented") and t.median_ms > 0 and t.iqr_ms / t.median_ms > UNSTABLE_REL_IQR]
    if not bad:
        return []
    hint = " or with fewer threads (--threads 1)" if threads > 1 else ""
    return [f"unstable timings, the host was busy: {', '.join(bad)}; rerun on a quiet host{hint}"]


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
        peers = {"binary": s.vm_sampler(b_mod, [x]), "float_tvm": s.vm_sampler(f_mod, [x])}
        inrun: dict = {}
        alone_why = None
        if per_layer:
            try:
                inrun = {"binary": s.inrun_sampler(b_mod, [x]), "float_tvm": s.inrun_sampler(f_mod, [x])}
            except DeviceError as e:
                alone_why = str(e)
            peers.update({f"{k}_instrumented": v for k, v in inrun.items()})
        b_kern, f_kern = b_mod, f_mod
        if alone_why and s.remote is not None:
            import onnx as _onnx

            progress("kernel libs", 0, 2)
            b_kern = s.load(kernels_library(_onnx.load(str(art.onnx_path)), target, art.path / "kernels.so"))
            progress("kernel libs", 1, 2)
            f_kern = s.load(kernels_library(_onnx.load_from_string(f_onnx), target, f_dir / "kernels.so"))
            progress("kernel libs", 2, 2)
        ov_info: dict = {}
        if ort and local_x86:
            peers["float_ort"] = python_sampler(ort_runner(f_onnx, x, s.threads))
            ov, ov_info = _openvino_peers(f_onnx, art.onnx_path.read_bytes(), x, s.threads)
            peers.update({k: python_sampler(f) for k, f in ov.items()})
        elif ort:
            notes.append("ONNX Runtime and OpenVINO run on this host only: not timed for an RPC device")
        progress("bench", 1, steps)
        raw, number = interleaved_samples(peers, warmup=profiler.warmup, rounds=profiler.repeat,
                                          min_repeat_ms=profiler.min_repeat_ms)
        timings = {k: Timing.from_samples(v, number[k]) for k, v in raw.items()}
        progress("bench", 2, steps, binary_ms=timings["binary"].median_ms)
        warnings += unstable_timing_warnings(timings, profiler.threads)
        ms = {k: t.median_ms for k, t in timings.items()}
        b_rows, f_rows, breakdown, f_breakdown = [], [], None, None
        if inrun:  # the last `repeat` samples of each instrumented peer are its rounds (warm-up and calibration first)
            b_rows, breakdown = inrun_accounting(ms["binary"], inrun["binary"].calls,
                                                 inrun["binary"].per_call_ms[-profiler.repeat:], m["layers"],
                                                 [1e3 * v for v in raw["binary"]])
            f_rows, f_breakdown = inrun_accounting(ms["float_tvm"], inrun["float_tvm"].calls,
                                                   inrun["float_tvm"].per_call_ms[-profiler.repeat:], f_layers,
                                                   [1e3 * v for v in raw["float_tvm"]])
            for bd, k in ((breakdown, "binary"), (f_breakdown, "float_tvm")):
                bd["instrumented_end_to_end"] = ms[f"{k}_instrumented"]
                bd["instrumentation_overhead"] = ms[f"{k}_instrumented"] / ms[k] - 1.0
            if breakdown["scale"] < 1.0:
                notes.append(f"the 1-bit network's in-run call times summed to {breakdown['in_run_sum']:.4f} ms, above "
                             f"its end to end {ms['binary']:.4f} ms (host noise, or the instrument slowing the "
                             f"kernels): per-layer times scaled by {breakdown['scale']:.3f}, VM dispatch shown as 0")
        elif per_layer:
            why = (f"per-layer times are of each layer's PrimFuncs timed alone, hot in cache ({alone_why}): "
                   f"they do not add up to the end to end, so no VM dispatch term is given")
            notes.append(why)
            b_rows = time_layers(s, b_kern, m["layers"], rng)
            f_rows = time_layers(s, f_kern, f_layers, rng)
            breakdown, f_breakdown = alone_accounting(b_rows, why), alone_accounting(f_rows, why)
        if per_layer:
            progress("bench", 4, steps)
        threads = s.threads
    lut_pred, lut_info = _lut_column(art, target, threads)
    layers = _group_rows(b_rows, f_rows, lut_pred, m["layers"], breakdown, f_breakdown, ms["binary"]) if per_layer else []
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
        "breakdown_ms": breakdown, "float_breakdown_ms": f_breakdown,
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


def _group_rows(b_rows, f_rows, lut_pred, layers, breakdown=None, f_breakdown=None, e2e_ms=None) -> list[dict]:
    """One row per network op, in run order, then (in-run breakdowns) the VM rows: the 1-bit column then
    sums to the end to end; `share` = a row's fraction of the 1-bit end to end."""
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
    if breakdown and breakdown.get("method") == "in_run":
        fb = f_breakdown or {}
        for name, key in zip(VM_ROWS, ("vm_builtins", "vm_dispatch", "unattributed_kernels")):
            bms, fms = breakdown.get(key), fb.get(key)
            if key == "unattributed_kernels" and not bms and not fms:
                continue
            out.append({"layer": name, "kind": "vm", "binary_ms": bms, "float_ms": fms,
                        "speedup": (fms / bms) if bms and fms else None, "lut_ms": None})
    for r in out:
        r["share"] = (r["binary_ms"] / e2e_ms) if e2e_ms and r["binary_ms"] is not None and \
            (breakdown or {}).get("method") == "in_run" else None
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
    """PNG bytes: per-layer ms (1-bit vs float TVM, log scale; the VM rows too) and per-layer speedup."""
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
    bd = report.get("breakdown_ms") or {}
    if bd.get("method") == "in_run":
        e2e = bd["end_to_end"]
        title += ("\n1-bit time, in-run (rows sum to the end to end): " + ", ".join(
            f"{lab} {100 * bd[k] / e2e:.0f}%" for lab, k in (("binary conv layers", "binary_conv_layers"),
                                                             ("other layers", "other_layers"),
                                                             ("VM builtins", "vm_builtins"), ("VM dispatch", "vm_dispatch"))))
    elif bd.get("method") == "alone":
        title += "\nper layer: PrimFuncs timed alone (they do not add up to the end to end)"
    if report.get("emulated"):
        title += " (EMULATED: not real device timings)"
    a1.set_title(title)
    a1.legend()
    sp = [r["speedup"] or 0 for r in rows]
    a2.bar(xs, sp, 0.6, color=[{"binary": "#2ca02c", "vm": "#7f7f7f"}.get(r["kind"], "#ff7f0e") for r in rows])
    a2.axhline(1.0, color="k", lw=0.8)
    a2.set_ylabel("speedup float / 1-bit")
    a2.set_xticks(xs, names, rotation=90, fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()

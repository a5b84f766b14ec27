"""Measured LUTs (`dcpnas lut build`) and their accuracy check (`dcpnas lut check`).

A LUT entry is the op as the compiler lowers it: for each OpKey the op is built as a small torch
module (the same classes the network uses, binary, eval mode), exported and compiled through the
project pipeline for the target (`compile_fn`, default dcpnas.compiler), and its Relax VM `main`
timed with the Profiler in interleaved rounds beside a reference kernel, each sample calibrated by
its round's reference time (build_lut). The VM's fixed cost of one call (measured on an identity
module of the smallest shape, `call_overhead_ms`) is subtracted, since a network pays it once:

    entry.mean_ms = median(calibrated samples) (or min(raw samples)) - call_overhead_ms   (>= 0)
    (stat: the Profiler's statistic, `median`, or `min` on a shared host where contention only adds time)

What the op sums still miss (the node adds and concat of each cell, VM dispatch between ops) is
fitted by `check_lut(fit_glue=True)` as one constant per cell (LatencyTable.glue).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dcpnas.errors import CompileError, DcpnasError, LutError
from dcpnas.progress import ProgressFn, no_progress
from dcpnas.latency import parse_key
from dcpnas.targets.lut import LatencyTable, utc_now
from dcpnas.targets.profiler import Profiler
from dcpnas.targets.registry import Target

# compile_fn(module, input_shape (N,C,H,W), target, out_dir) -> path of the exported library
CompileFn = Callable[[object, tuple, Target, Path], Path]
IDENTITY_KEY = "skip_connect|1|1|1|1|1"
# when a toolchain cannot export a module without kernels (aarch64 cross-compiling an identity):
# the smallest one-kernel module stands in for the call overhead
BASELINE_FALLBACK_KEY = "max_pool_3x3|8|8|4|4|1"


def op_module(key: str):
    """The torch module (binary, eval mode) of one OpKey and its input shape (1, C, H, W)."""
    from dcpnas.model import Classifier, make_stem
    from dcpnas.operations import ConvUnit, FactorizedReduce, make_op
    from dcpnas.space import SearchSpace

    op, policy, cin, cout, h, w, s = parse_key(key)
    if op == "stem":
        if s not in (1, 8):
            raise LutError(f"OpKey {key!r}: a stem has stride 1 (cifar) or 8 (imagenet)")
        m = make_stem(SearchSpace(cells=1, channels=cout, stem_multiplier=1, input_shape=(cin, h, w),
                                  stem="imagenet" if s == 8 else "cifar"))
    elif op == "classifier":
        m = Classifier(cin, cout)
    elif op == "pre_conv1x1":
        m = ConvUnit(cin, cout, 1, binary=True, real_act=policy == "authors")
    elif op == "pre_reduce" or (op == "skip_connect" and s == 2):
        m = FactorizedReduce(cin, cout, True, policy, True)
    else:
        if cin != cout:
            raise LutError(f"OpKey {key!r}: candidate ops keep the channel count (cin == cout)")
        m = make_op(op, cin, s, True, policy, True)
    return m.eval(), (1, cin, h, w)


def default_compile_fn() -> CompileFn:
    """The project's pipeline: torch module -> dcpnas ONNX -> Relax with the project's kernels ->
    library (dcpnas.compiler.build.build_module_library)."""
    from dcpnas.compiler.build import build_module_library

    return build_module_library


@dataclass
class OpTimer:
    """Compiles single ops for one target and loads them into one profiler session."""

    target: Target
    profiler: Profiler
    compile_fn: CompileFn
    workdir: Path

    def sampler(self, session, key: str):
        """A Sampler (profiler.interleaved_samples) of the compiled op of `key`."""
        module, shape = op_module(key)
        out = self.workdir / key.replace("|", "_").replace(":", "-")
        lib = self.compile_fn(module, shape, self.target, out)
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        return session.vm_sampler(session.load(lib), [x])


# the reference kernel timed in every round of a LUT build: a mid-size op of every search space;
# its time per round tracks the host's load, and each op's sample is divided by that round's load
REFERENCE_KEY = "sep_conv_3x3|8|8|16|16|1"
OVERHEAD = "__call_overhead__"
REFERENCE = "__reference__"
CHUNK = 24            # ops compiled, then timed together (interleaved) and saved: the unit of resumption
RETIME_REL_IQR = 0.2  # an op whose calibrated samples spread more than this (IQR / median) is timed again


def calibrated(samples: dict[str, list[float]], ref: str = REFERENCE) -> dict[str, np.ndarray]:
    """Samples (s per run, one per round) divided by the round's load factor: the reference kernel's
    sample of that round over the reference's median. A load burst that slows every kernel of a
    round alike cancels; what remains is each op's time at the reference's median load."""
    r = np.asarray(samples[ref], float)
    load = r / np.median(r)
    return {k: np.asarray(v, float) / load for k, v in samples.items()}


def _figure(cal: np.ndarray, raw: np.ndarray, stat: str) -> float:
    """`median`: the median of the calibrated samples; `min`: the lowest raw sample (contention only
    adds time; dividing by a round's load factor could take a sample below the op's true time)."""
    return float(np.min(raw) if stat == "min" else np.median(cal))


def _rel_iqr(v: np.ndarray) -> float:
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return float((q3 - q1) / med) if med > 0 else 0.0


def time_chunk(samplers: dict, profiler: Profiler, rounds: int) -> tuple[dict[str, np.ndarray], dict, int]:
    """Interleaved rounds of `samplers` (REFERENCE among them), calibrated; ops whose calibrated
    spread exceeds RETIME_REL_IQR get a second set of rounds (with the reference) and keep all their
    samples. Returns ({name: calibrated seconds per run}, {name: raw samples}, ops re-timed)."""
    from dcpnas.targets.profiler import interleaved_samples

    raw, number = interleaved_samples(samplers, warmup=profiler.warmup, rounds=rounds,
                                      min_repeat_ms=profiler.min_repeat_ms)
    cal = calibrated(raw)
    noisy = [k for k in samplers if k != REFERENCE and _rel_iqr(cal[k]) > RETIME_REL_IQR]
    if noisy:
        again, _ = interleaved_samples({k: samplers[k] for k in noisy + [REFERENCE]}, warmup=1, rounds=rounds,
                                       min_repeat_ms=profiler.min_repeat_ms, number=number)
        cal2 = calibrated(again)
        for k in noisy:
            raw[k] = list(raw[k]) + list(again[k])
            cal[k] = np.concatenate([cal[k], cal2[k]])
        raw[REFERENCE] = list(raw[REFERENCE]) + list(again[REFERENCE])
    return cal, raw, len(noisy)


def build_lut(target: Target, keys: Sequence[str], path: str | Path, profiler: Profiler,
              compile_fn: CompileFn | None = None, resume: bool = True, method: str = "measured",
              progress: ProgressFn = no_progress, workdir: str | Path | None = None,
              refine: bool = False) -> LatencyTable:
    """Measure every key into the LUT at `path`, saving (atomically) after each chunk of CHUNK ops.

    Measurement that holds on a shared host: the ops of a chunk are compiled first, then timed side
    by side in `profiler.repeat` interleaved rounds together with a reference kernel (REFERENCE_KEY)
    (and, once, the VM's call overhead: an identity module); every sample is calibrated by its
    round's reference time (`calibrated`); ops whose calibrated samples still spread more than
    RETIME_REL_IQR are timed again. entry.mean_ms = figure - call overhead, the figure being the
    median of the calibrated samples (statistic `median`) or the lowest raw sample (`min`);
    entry.calibrated_ms the calibrated median, entry.rel_iqr how stable the op was, and
    LatencyTable.measurement how stable the whole build was (the reference's own spread).

    resume: keep entries of an existing measured LUT at `path` for the same target, thread count and
    statistic (a modeled one is replaced). method: "measured", or "emulated" for a board emulated by
    qemu. refine (statistic `min` only): time the entries already there again and keep the lower
    figure; passes spread over time beat bursts of load from other processes on a shared host."""
    if refine and profiler.statistic != "min":
        raise LutError("refining passes keep the lower figure: use them with statistic 'min'")
    compile_fn = compile_fn or default_compile_fn()
    path = Path(path)
    lut = None
    if resume and path.is_file():
        try:
            old = LatencyTable.load(path)
        except DcpnasError as e:  # a damaged table, a newer schema or a foreign file: never replaced unasked
            raise LutError(f"{path} exists and is not a LUT this version can resume ({str(e)[:200]}): write "
                           f"elsewhere (-o FILE) or replace it on purpose (--no-resume)") from None
        if old is not None:
            differ = [f"{k} {a} (this build: {b})" for k, a, b in (
                ("method", old.method, method), ("target", old.target, target.name),
                ("threads", old.threads, profiler.threads), ("statistic", old.statistic, profiler.statistic)) if a != b]
            if differ and old.method != "modeled":  # a modeled table is derived (`lut build --modeled`): replaced
                # resuming would mix incomparable figures; starting afresh would destroy the measurements
                raise LutError(f"{path} holds a LUT of another kind ({'; '.join(differ)}): write elsewhere (-o FILE) "
                               f"or replace it on purpose (--no-resume)")
            if not differ:
                lut = old
    if lut is None:
        lut = LatencyTable(target=target.name, method=method, device=profiler.device_name, threads=profiler.threads,
                           tvm_version=_tvm_version(), created=utc_now())
    lut.path = path
    todo = [k for k in dict.fromkeys(keys) if refine or k not in lut.entries]
    stat = profiler.statistic
    lut.statistic = stat
    m = dict(lut.measurement) if lut.measurement.get("reference_key") == REFERENCE_KEY else {}
    m.update(reference_key=REFERENCE_KEY, rounds=profiler.repeat, statistic=stat,
             method="interleaved rounds per chunk of ops, each sample calibrated by the reference kernel of its "
                    f"round; ops with calibrated IQR/median > {RETIME_REL_IQR} timed again")
    with tempfile.TemporaryDirectory(prefix="dcpnas-lut-", dir=workdir) as tmp:
        timer = OpTimer(target, profiler, compile_fn, Path(tmp))
        with profiler.session() as sess:
            lut.device = profiler.device_name
            if sess.threads != profiler.threads:
                lut.notes = f"runtime reported {sess.threads} threads (asked {profiler.threads})"
            ref = timer.sampler(sess, REFERENCE_KEY)
            if refine or "call_overhead_ms" not in lut.glue:
                try:
                    overhead = timer.sampler(sess, IDENTITY_KEY)
                except CompileError:
                    overhead = timer.sampler(sess, BASELINE_FALLBACK_KEY)
                    lut.glue["call_overhead_key"] = BASELINE_FALLBACK_KEY
                cal, raw, _ = time_chunk({OVERHEAD: overhead, REFERENCE: ref}, profiler, profiler.repeat)
                base = _figure(cal[OVERHEAD], np.asarray(raw[OVERHEAD]), stat) * 1e3
                if refine and "call_overhead_ms" in lut.glue:
                    base = min(base, float(lut.glue["call_overhead_ms"]))
                lut.glue["call_overhead_ms"] = round(base, 6)
            base = float(lut.glue["call_overhead_ms"])
            done = len(keys) - len(todo)
            progress("lut build", done, len(keys))
            retimed = int(m.get("retimed", 0))
            for c0 in range(0, len(todo), CHUNK):
                chunk = todo[c0:c0 + CHUNK]
                t0 = time.monotonic()
                samplers = {k: timer.sampler(sess, k) for k in chunk}
                samplers[REFERENCE] = ref
                cal, raw, n_re = time_chunk(samplers, profiler, profiler.repeat)
                retimed += n_re
                ref_ms = np.asarray(raw[REFERENCE]) * 1e3
                spread = float((np.percentile(ref_ms, 75) - np.percentile(ref_ms, 25)) / np.median(ref_ms))
                for k in chunk:
                    v_ms, r_ms = cal[k] * 1e3, np.asarray(raw[k]) * 1e3
                    new = {"mean_ms": round(max(0.0, _figure(v_ms, r_ms, stat) - base), 6),
                           "std_ms": round(float(v_ms.std()), 6), "count": int(len(v_ms)),
                           "median_ms": round(float(np.median(r_ms)), 6), "min_ms": round(float(r_ms.min()), 6),
                           "calibrated_ms": round(float(np.median(v_ms)), 6), "rel_iqr": round(_rel_iqr(v_ms), 4),
                           "passes": 1}
                    old_e = lut.entries.get(k)
                    if refine and old_e is not None:  # keep the lower figure, count the passes
                        passes = int(old_e.get("passes", 1)) + 1
                        if old_e["mean_ms"] <= new["mean_ms"]:
                            new = dict(old_e)
                        new["passes"] = passes
                    lut.entries[k] = new
                m.update(reference_ms=round(float(np.median(ref_ms)), 6), retimed=retimed,
                         reference_rel_iqr_max=round(max(spread, float(m.get("reference_rel_iqr_max", 0.0))), 4),
                         median_rel_iqr=round(float(np.median([e.get("rel_iqr", 0.0) for e in lut.entries.values()])), 4))
                lut.measurement = m
                lut.created = utc_now()
                lut.save(path)
                done += len(chunk)
                progress("lut build", done, len(keys), ref_ms=float(np.median(ref_ms)), s=time.monotonic() - t0)
    if method == "measured":
        _attach_costmodel_fit(lut)
        lut.save(path)
    return lut


def _attach_costmodel_fit(lut: LatencyTable) -> None:
    """Store the cost-model coefficients fitted on these measurements (modeled LUTs of other targets scale them)."""
    from dcpnas.targets import costmodel

    measured = {k: e["mean_ms"] for k, e in lut.entries.items() if e["mean_ms"] > 0}
    try:
        lut.costmodel = {"coef": costmodel.fit(measured), "source": f"fit on {len(measured)} measured entries",
                         "features": list(costmodel.FEATURES)}
    except LutError:
        pass


def mape(pred: Sequence[float], meas: Sequence[float]) -> float:
    """Mean absolute percentage error, in percent."""
    p, m = np.asarray(pred, float), np.asarray(meas, float)
    return float(np.mean(np.abs(p - m) / m) * 100.0)


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson correlation of the ranks)."""
    ra, rb = rank(np.asarray(a)), rank(np.asarray(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def fit_per_cell(raw_pred: Sequence[float], meas: Sequence[float], cells: Sequence[int]) -> float:
    """The per-cell glue g (ms) minimising the relative error of raw_pred + cells * g vs meas."""
    p, m, c = (np.asarray(v, float) for v in (raw_pred, meas, cells))
    # minimise sum(((p + c g - m) / m)^2): closed form
    return float(np.sum(c * (m - p) / m**2) / np.sum(c**2 / m**2))


def _tvm_version() -> str:
    from dcpnas.targets.modeled import _tvm_version as v

    return v()

"""Measured LUTs (`dcpnas lut build`) and their accuracy check (`dcpnas lut check`).

A LUT entry is the op as the compiler lowers it: for each OpKey the op is built as a small torch
module (the same classes the network uses, binary, eval mode), exported and compiled through the
project pipeline for the target (`compile_fn`, default dcpnas.compiler), and its Relax VM `main`
timed with the Profiler. The VM's fixed cost of one call (measured on an identity module of the
smallest shape, `call_overhead_ms`) is subtracted, since a network pays it once and not per op:

    entry.mean_ms = stat(op) - call_overhead_ms   (>= 0);  entry.median_ms = median(op), entry.min_ms
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
from dcpnas.targets.costmodel import parse_key
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
    from dcpnas.model import Classifier, Stem
    from dcpnas.operations import ConvUnit, FactorizedReduce, make_op
    from dcpnas.space import SearchSpace

    op, policy, cin, cout, h, w, s = parse_key(key)
    if op == "stem":
        m = Stem(SearchSpace(cells=1, channels=cout, stem_multiplier=1, input_shape=(cin, h, w)))
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
    """The project's pipeline: dcpnas.compiler's own module builder when it has one, else the same
    steps spelled out here (export_onnx's graph -> import_onnx -> tvm.compile -> export_library)."""
    try:
        from dcpnas.compiler.build import build_module_library  # H3's builder, when present

        return build_module_library
    except ImportError:
        return compile_module_library


def compile_module_library(module, input_shape: tuple, target: Target, out_dir: Path) -> Path:
    """Export `module` to ONNX (dcpnas schema), import it to Relax with the project's kernels and
    schedules, build for `target` and export a shared library (cross-compiled for aarch64)."""
    import tvm

    from dcpnas.compiler.export import build_onnx
    from dcpnas.compiler.onnx_import import import_onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    imported = import_onnx(build_onnx(module, input_shape), target.tvm, schedule=target.arch != "cuda")
    ex = tvm.compile(imported.mod, target=target.tvm_target())
    path = out_dir / "lib.so"
    if target.cross_compiler:
        from tvm.support import cc

        ex.export_library(str(path), fcompile=cc.cross_compiler(target.cross_compiler))
    else:
        ex.export_library(str(path))
    return path


@dataclass
class OpTimer:
    """Compiles and times single ops for one target with one profiler session."""

    target: Target
    profiler: Profiler
    compile_fn: CompileFn
    workdir: Path

    def time_key(self, session, key: str):
        module, shape = op_module(key)
        out = self.workdir / key.replace("|", "_").replace(":", "-")
        lib = self.compile_fn(module, shape, self.target, out)
        x = np.random.default_rng(0).standard_normal(shape).astype("float32")
        return session.time_vm(session.load(lib), [x])


def build_lut(target: Target, keys: Sequence[str], path: str | Path, profiler: Profiler,
              compile_fn: CompileFn | None = None, resume: bool = True, method: str = "measured",
              progress: ProgressFn = no_progress, workdir: str | Path | None = None,
              refine: bool = False) -> LatencyTable:
    """Measure every key into the LUT at `path`, saving (atomically) after each entry.

    resume: keep entries of an existing measured LUT at `path` for the same target and thread count
    (a modeled one is replaced). method: "measured", or "emulated" for a board emulated by qemu.
    The entry figure is profiler.statistic (median, or min on a loaded host) minus the call overhead.
    refine (statistic `min` only): time the entries already there again and keep the lower figure;
    passes spread over time beat bursts of load from other processes on a shared host."""
    if refine and profiler.statistic != "min":
        raise LutError("refining passes keep the lower figure: use them with statistic 'min'")
    compile_fn = compile_fn or default_compile_fn()
    path = Path(path)
    lut = None
    if resume and path.is_file():
        try:
            old = LatencyTable.load(path)
        except DcpnasError:
            old = None
        if (old is not None and old.method == method and old.target == target.name and old.threads == profiler.threads
                and old.statistic == profiler.statistic):
            lut = old
    if lut is None:
        lut = LatencyTable(target=target.name, method=method, device=profiler.device_name, threads=profiler.threads,
                           tvm_version=_tvm_version(), created=utc_now())
    lut.path = path
    todo = [k for k in dict.fromkeys(keys) if refine or k not in lut.entries]
    with tempfile.TemporaryDirectory(prefix="dcpnas-lut-", dir=workdir) as tmp:
        timer = OpTimer(target, profiler, compile_fn, Path(tmp))
        with profiler.session() as sess:
            lut.device = profiler.device_name
            if sess.threads != profiler.threads:
                lut.notes = f"runtime reported {sess.threads} threads (asked {profiler.threads})"
            stat = profiler.statistic
            lut.statistic = stat
            try:
                base = timer.time_key(sess, IDENTITY_KEY).value(stat)
            except CompileError:
                base = timer.time_key(sess, BASELINE_FALLBACK_KEY).value(stat)
                lut.glue["call_overhead_key"] = BASELINE_FALLBACK_KEY
            if refine and "call_overhead_ms" in lut.glue:
                base = min(base, float(lut.glue["call_overhead_ms"]))
            lut.glue["call_overhead_ms"] = round(base, 6)
            done = len(keys) - len(todo)
            progress("lut build", done, len(keys))
            for key in todo:
                t0 = time.monotonic()
                r = timer.time_key(sess, key)
                new = {"mean_ms": round(max(0.0, r.value(stat) - base), 6),
                       "std_ms": round(r.std_ms, 6), "count": r.count, "median_ms": round(r.median_ms, 6),
                       "min_ms": round(r.min_ms, 6), "iqr_ms": round(r.iqr_ms, 6), "number": r.number, "passes": 1}
                old_e = lut.entries.get(key)
                if old_e is not None:  # refining: keep the lower figure, count the passes
                    passes = int(old_e.get("passes", 1)) + 1
                    if old_e["min_ms"] <= new["min_ms"]:
                        new = dict(old_e)
                    new["passes"] = passes
                    new["mean_ms"] = round(max(0.0, new["min_ms"] - base), 6)
                lut.entries[key] = new
                lut.created = utc_now()
                lut.save(path)
                done += 1
                progress("lut build", done, len(keys), key=key.split("|")[0], ms=r.median_ms,
                         s=time.monotonic() - t0)
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

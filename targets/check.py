"""`dcpnas lut check`: LUT-predicted vs measured latency of N random genotypes compiled end to end.

Prediction = dcpnas.latency.genotype_latency(genotype, space, lut) (the sum the search uses). With
`fit_glue`, the per-cell glue g of the LUT is refitted (closed-form least squares of the relative
error of raw + cells * g, see measure.fit_per_cell) and saved into the LUT; the reported figures are
then computed with the fitted glue, and `mape_loo` gives the leave-one-out MAPE (g fitted without
the genotype it predicts) as an honest out-of-sample figure.

Measurement that holds on a shared host: each network is timed in interleaved rounds beside the LUT's
reference kernel (measure.REFERENCE_KEY, itself an entry of a measured LUT), and its time is scaled by
(the reference's figure in the LUT) / (its figure in those rounds): a host running 2x slower than when
the LUT was measured (another VM on the same cores, a load spell) doubles both and cancels. "mape" and
"spearman" are those calibrated figures; "mape_uncalibrated" / "spearman_uncalibrated" the raw ones,
and "host_speed" how much slower (> 1) or faster the host ran than during the LUT build. A LUT that
is not measured or lacks the reference key is checked uncalibrated (host_speed None).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from dcpnas.progress import ProgressFn, no_progress
from dcpnas.targets.lut import LatencyTable
from dcpnas.targets.measure import (REFERENCE, REFERENCE_KEY, CompileFn, OpTimer, default_compile_fn, fit_per_cell,
                                    mape, spearman)
from dcpnas.targets.profiler import Profiler, interleaved
from dcpnas.targets.registry import Target


def random_genotypes(space, n: int, seed: int = 0) -> list:
    """n distinct genotypes from random architecture logits (the DARTS derivation rule)."""
    import torch

    from dcpnas.genotype import Genotype

    g = torch.Generator().manual_seed(seed)
    out, seen = [], set()
    for _ in range(50 * n):
        shape = (space.edges, len(space.primitives))
        geno = Genotype.from_alphas(torch.randn(shape, generator=g), torch.randn(shape, generator=g),
                                    space.primitives, space.steps)
        if geno.digest() not in seen:
            seen.add(geno.digest())
            out.append(geno)
        if len(out) == n:
            break
    return out


def check_lut(target: Target, lut: LatencyTable, space, n: int, profiler: Profiler, compile_fn: CompileFn | None = None,
              seed: int = 0, fit_glue: bool = False, progress: ProgressFn = no_progress,
              workdir: str | Path | None = None, build_dir: str | Path | None = None) -> dict:
    """Compile and time n random genotypes of `space`; returns {"n","mape","spearman", ...,"rows"}.
    build_dir: keep the compiled networks there (one folder per genotype digest, reused when present),
    so that a check can be timed again without compiling."""
    from dcpnas.latency import genotype_latency
    from dcpnas.model import Network

    compile_fn = compile_fn or default_compile_fn()
    genos = random_genotypes(space, n, seed)
    no_cell_glue = replace(lut, glue={k: v for k, v in lut.glue.items() if k != "per_cell_ms"})
    raw = [genotype_latency(g, space, no_cell_glue) for g in genos]   # raises LutError for a missing key
    measured, speed = [], []
    shape = (1, *space.input_shape)
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    stat = profiler.statistic
    ref_lut_ms = reference_figure_ms(lut)
    with tempfile.TemporaryDirectory(prefix="dcpnas-check-", dir=workdir) as tmp, profiler.session() as sess:
        progress("lut check", 0, len(genos))
        root = Path(build_dir) if build_dir else Path(tmp)
        ref = None if ref_lut_ms is None else OpTimer(target, profiler, compile_fn, Path(tmp)).sampler(sess, REFERENCE_KEY)
        for i, g in enumerate(genos):
            out = root / f"{target.name}-{g.digest()}"
            lib = out / "model.so"
            if not (build_dir and lib.is_file()):
                lib = compile_fn(Network(g, space, binary=True).eval(), shape, target, out)
            mod = sess.load(lib)
            if ref is None:
                measured.append(sess.time_vm(mod, [x]).value(stat))
            else:
                t = interleaved({"net": sess.vm_sampler(mod, [x]), REFERENCE: ref}, warmup=profiler.warmup,
                                rounds=profiler.repeat, min_repeat_ms=profiler.min_repeat_ms)
                measured.append(t["net"].value(stat))
                speed.append(t[REFERENCE].value(stat) / ref_lut_ms)
            progress("lut check", i + 1, len(genos), ms=measured[-1], pred=raw[i])
    uncal = list(measured)
    if speed:
        measured = [m / s for m, s in zip(measured, speed)]
    cells = [space.cells] * len(genos)
    per_cell = float(lut.glue.get("per_cell_ms", 0.0))
    loo = None
    if fit_glue:
        per_cell = max(0.0, fit_per_cell(raw, measured, cells))  # glue is time added; a LUT refuses < 0
        loo_pred = []
        for i in range(len(genos)):
            keep = [j for j in range(len(genos)) if j != i]
            gi = fit_per_cell([raw[j] for j in keep], [measured[j] for j in keep], [cells[j] for j in keep]) if keep else 0.0
            loo_pred.append(raw[i] + cells[i] * gi)
        loo = mape(loo_pred, measured)
        lut.glue["per_cell_ms"] = round(per_cell, 6)
        lut.glue["per_cell_fit"] = f"lut check: {len(genos)} genotypes of {space.cells} cells, {space.channels} channels"
    pred = [r + c * per_cell for r, c in zip(raw, cells)]
    return {
        "target": target.name, "n": len(genos), "mape": mape(pred, measured), "spearman": spearman(pred, measured),
        "mape_raw": mape(raw, measured), "mape_loo": loo, "glue_per_cell_ms": per_cell,
        "mape_uncalibrated": mape(pred, uncal), "spearman_uncalibrated": spearman(pred, uncal),
        "host_speed": None if not speed else {"reference_key": REFERENCE_KEY, "lut_reference_ms": ref_lut_ms,
                                              "median": float(np.median(speed)), "min": float(min(speed)),
                                              "max": float(max(speed))},
        "method": lut.method, "threads": profiler.threads, "statistic": profiler.statistic, "space": space.to_dict(),
        "rows": [{"genotype": g.digest(), "predicted_ms": p, "raw_predicted_ms": r, "measured_ms": m,
                  "uncalibrated_ms": u, "host_speed": s}
                 for g, p, r, m, u, s in zip(genos, pred, raw, measured, uncal, speed or [None] * len(genos))],
    }


def reference_figure_ms(lut: LatencyTable) -> float | None:
    """The reference kernel's figure in a measured LUT as timed (its entry + the call overhead the entry
    excludes), in ms; None where the LUT is not measured on a device or lacks the key."""
    e = lut.entries.get(REFERENCE_KEY)
    if lut.method != "measured" or e is None:
        return None
    v = float(e["mean_ms"]) + float(lut.glue.get("call_overhead_ms", 0.0))
    return v if v > 0 else None

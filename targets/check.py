"""`dcpnas lut check`: LUT-predicted vs measured latency of N random genotypes compiled end to end.

Prediction = dcpnas.latency.genotype_latency(genotype, space, lut) (the sum the search uses). With
`fit_glue`, the per-cell glue g of the LUT is refitted (closed-form least squares of the relative
error of raw + cells * g, see measure.fit_per_cell) and saved into the LUT; the reported figures are
then computed with the fitted glue, and `mape_loo` gives the leave-one-out MAPE (g fitted without
the genotype it predicts) as an honest out-of-sample figure.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from dcpnas.progress import ProgressFn, no_progress
from dcpnas.targets.lut import LatencyTable
from dcpnas.targets.measure import CompileFn, default_compile_fn, fit_per_cell, mape, spearman
from dcpnas.targets.profiler import Profiler
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
    measured = []
    shape = (1, *space.input_shape)
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    with tempfile.TemporaryDirectory(prefix="dcpnas-check-", dir=workdir) as tmp, profiler.session() as sess:
        progress("lut check", 0, len(genos))
        root = Path(build_dir) if build_dir else Path(tmp)
        for i, g in enumerate(genos):
            out = root / f"{target.name}-{g.digest()}"
            lib = out / "model.so"
            if not (build_dir and lib.is_file()):
                lib = compile_fn(Network(g, space, binary=True).eval(), shape, target, out)
            measured.append(sess.time_vm(sess.load(lib), [x]).value(profiler.statistic))
            progress("lut check", i + 1, len(genos), ms=measured[-1], pred=raw[i])
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
        "method": lut.method, "threads": profiler.threads, "statistic": profiler.statistic, "space": space.to_dict(),
        "rows": [{"genotype": g.digest(), "predicted_ms": p, "raw_predicted_ms": r, "measured_ms": m}
                 for g, p, r, m in zip(genos, pred, raw, measured)],
    }

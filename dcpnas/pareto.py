"""Searches at several latency targets and their accuracy-latency Pareto front (`dcpnas search --pareto N`).

Run i (0-based) searches with target latency T_i = f_i * T_0, f_i spread evenly from 1 down to
`min_fraction`, where T_0 is the expected latency of the initial (uniform) supernet, the default
target. Each run lives in OUT/pareto-<i>/ and is kept once finished, so an interrupted sweep resumes
run by run. Writes OUT/pareto.json (schema dcpnas.pareto/1) and OUT/pareto.png.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dcpnas.config import SearchConfig
from dcpnas.errors import ArtifactError, ConfigError
from dcpnas.genotype import Genotype, load_genotype
from dcpnas.io import is_finite_number, write_json
from dcpnas.progress import ProgressFn

SCHEMA = "dcpnas.pareto/1"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency ms, accuracy) points no other point dominates (lower or equal latency
    and higher or equal accuracy, one of them strictly), sorted by latency."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(l2 <= lat and a2 >= acc and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def run_pareto(config: SearchConfig, out_dir: str | Path, n: int, *, min_fraction: float = 0.5,
               progress: ProgressFn | None = None, resume: bool = False) -> dict:
    """n searches at decreasing latency targets (see module docstring); returns the pareto.json record."""
    from dcpnas.search import run_search

    if n < 2:
        raise ConfigError(f"--pareto needs at least 2 latency targets, got {n}")
    if not config.target:
        raise ConfigError("--pareto needs a --target (its LUT gives the latency of each search)")
    if config.latency_ms is not None:
        raise ConfigError("--pareto chooses the latency targets itself; drop --latency-ms")
    if not 0 < min_fraction < 1:
        raise ConfigError(f"min_fraction must be in (0, 1), got {min_fraction}")
    out_dir = Path(out_dir)
    runs: list[dict] = []
    t0 = None
    for i in range(n):
        frac = 1.0 - (1.0 - min_fraction) * i / (n - 1)
        run_dir = out_dir / f"pareto-{i}"
        cfg = dataclasses.replace(config, name=f"{config.run_name}-pareto-{i}",
                                  latency_ms=None if i == 0 else t0 * frac)
        if (run_dir / "genotype.json").is_file():
            genotype = load_genotype(run_dir / "genotype.json")  # finished earlier: keep it
        else:
            genotype = run_search(cfg, run_dir, progress=progress, resume=resume and run_dir.is_dir())
        if i == 0:
            t0 = _figure(genotype, "latency_target_ms", run_dir)
        runs.append(_record(i, frac, run_dir, genotype))
    points = [(r["expected_latency_ms"], r["val_accuracy"]) for r in runs]
    front = pareto_front(points)
    record = {"schema": SCHEMA, "target": config.target, "base_latency_ms": t0, "runs": runs,
              "front": [runs[i]["run"] for i in front]}
    write_json(out_dir / "pareto.json", record)
    plot_pareto(record, out_dir / "pareto.png")
    return record


def _figure(genotype: Genotype, key: str, run_dir: Path) -> float:
    """A number of the genotype's search record (a finished run's genotype.json may have been edited)."""
    v = genotype.search.get(key) if isinstance(genotype.search, dict) else None
    if not is_finite_number(v):
        raise ArtifactError(f"{run_dir / 'genotype.json'}: its search record has no finite {key} ({v!r}); remove "
                            f"{run_dir} to search it again")
    return float(v)


def _record(i: int, frac: float, run_dir: Path, genotype: Genotype) -> dict:
    return {"run": i, "dir": str(run_dir), "latency_fraction": frac,
            "latency_target_ms": genotype.search.get("latency_target_ms"),
            "expected_latency_ms": _figure(genotype, "expected_latency_ms", run_dir),
            "val_accuracy": _figure(genotype, "val_accuracy", run_dir),
            "lut_method": genotype.search.get("lut_method"), "genotype": genotype.to_darts()}


def plot_pareto(record: dict, path: Path) -> None:
    """Accuracy vs expected latency of every run, the front joined by a line (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dcpnas.io import atomic_write_bytes

    runs = record["runs"]
    front = [r for r in runs if r["run"] in record["front"]]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([r["expected_latency_ms"] for r in runs], [r["val_accuracy"] for r in runs], label="searches")
    ax.plot([r["expected_latency_ms"] for r in front], [r["val_accuracy"] for r in front], "r.-", label="Pareto front")
    for r in runs:
        ax.annotate(f"T={r['latency_target_ms']:.3g}", (r["expected_latency_ms"], r["val_accuracy"]), fontsize=7)
    method = runs[0].get("lut_method") or "?"
    ax.set_xlabel(f"expected latency, ms ({record['target']}, {method} LUT)")
    ax.set_ylabel("validation accuracy")
    ax.legend()
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())

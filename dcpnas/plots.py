"""PNG plots of a search: final alphas (one heatmap per cell type) and loss curves. matplotlib Agg only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcpnas.io import atomic_write_bytes, parse_json
from dcpnas.space import edge_index


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def plot_alphas(alphas: dict, primitives, steps: int, path: str | Path) -> Path:
    """Heatmaps of softmax(alpha) [edges, ops] for the normal and reduce cells."""
    plt = _figure()
    labels = [f"{i}->{j}" for i, j in edge_index(steps)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(labels) + 2))
    for ax, kind in zip(axes, ("normal", "reduce")):
        a = np.asarray(alphas[kind], dtype=np.float64)
        w = np.exp(a - a.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        im = ax.imshow(w, cmap="viridis", aspect="auto", vmin=0)
        ax.set_xticks(range(len(primitives)), primitives, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(f"{kind} cell: softmax(alpha)")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_losses(metrics_path: str | Path, path: str | Path) -> Path:
    """Per-step weight loss of the Parent (CE) and Child (KL) and their architecture losses."""
    plt = _figure()
    series: dict[str, tuple[list, list]] = {}
    p = Path(metrics_path)
    if p.is_file():
        for line in p.read_text().splitlines():
            if not line.strip():
                continue
            try:
                r = parse_json(line)
            except ValueError:  # a line cut short by an interruption
                continue
            if not isinstance(r, dict) or r.get("kind") != "step":
                continue
            for key in ("loss", "arch_loss"):
                if key in r:
                    xs, ys = series.setdefault(f"{r['phase']} {key}", ([], []))
                    xs.append(r["step"])
                    ys.append(r[key])
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("search losses (parent: CE, child: KL to parent)")
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = _save(fig, Path(path))
    plt.close(fig)
    return out

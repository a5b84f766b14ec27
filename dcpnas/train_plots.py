"""Loss / accuracy curves of a `dcpnas train` run (PNG, matplotlib Agg; no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

from dcpnas.io import atomic_write_bytes


def plot_history(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Two panels over epochs: train/test loss and train/test accuracy (%); stage boundaries dashed.
    history: the per-epoch records of metrics.jsonl (keys epoch, stage, train_loss, test_loss,
    train_accuracy, test_accuracy)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    epochs = [h["epoch"] for h in history]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_l.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax_l.plot(epochs, [h["test_loss"] for h in history], "s-", label="test loss (CE)")
    ax_a.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", label="train")
    ax_a.plot(epochs, [100 * h["test_accuracy"] for h in history], "s-", label="test")
    for prev, cur in zip(history, history[1:]):
        if prev["stage"] != cur["stage"]:
            for ax in (ax_l, ax_a):
                ax.axvline(prev["epoch"] + 0.5, color="grey", ls="--", lw=1)
    ax_l.set_xlabel("epoch")
    ax_a.set_xlabel("epoch")
    ax_l.set_ylabel("loss")
    ax_a.set_ylabel("accuracy (%)")
    ax_l.legend()
    ax_a.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())

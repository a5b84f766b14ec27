"""BatchNorm running statistics measured again on given batches: after a weight average (dcpnas.weight_average),
for a supernet's evaluation (dcpnas.parent_child) and for a fresh network about to be compiled (compiler.pipeline)."""

from __future__ import annotations

from typing import Iterable

import torch

from dcpnas.errors import ConfigError


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BatchNorm's running statistics by their plain average over `batches` (a forward pass in
    train mode without gradients). Returns the number of images seen; the model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative: every batch counts the same
    model.train()
    seen = 0
    try:
        for xb in batches:
            model(xb)
            seen += len(xb)
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    if bns and seen == 0:
        raise ConfigError("BatchNorm recalibration needs at least one batch")
    model.eval()
    return seen

"""An exponential moving average of a network's parameters (stage 2's `stage2_ema`, dcpnas.train).

The averaged network is the network with every parameter replaced by its EMA (latent weights included:
a binary conv then takes the sign of the averaged latent weight) and its BatchNorm statistics measured
again on training batches, because the running statistics of the trained network belong to its own weights.
The update is in place (torch._foreach_lerp_), so it works beside a CUDA-graph training step too. There is no
warm-up or bias correction: the average starts at the weights it is given (stage 2's first), so a decay whose
horizon 1 / (1 - decay) steps is not well below the stage's length keeps much of that start (0.9995: ~2000 steps;
the 12-epoch recipe's stage 2 has 7,500).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from dcpnas.batchnorm import recalibrate_batchnorm
from dcpnas.errors import ArtifactError, ConfigError


class WeightEMA:
    """ema <- decay * ema + (1 - decay) * parameter of `model`, after every optimiser step (`update`); the
    optimiser updates the parameters in place, so the average follows the very tensors it was made from."""

    def __init__(self, model: torch.nn.Module, decay: float, state: list[torch.Tensor] | None = None) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        params = [p.detach() for p in model.parameters()]
        self._live = params  # the network's parameters (the same tensors for its whole life)
        if state is None:
            self.params = [p.clone() for p in params]
        else:
            if len(state) != len(params) or any(s.shape != p.shape for s, p in zip(state, params)):
                raise ArtifactError("the checkpoint's EMA state does not match the network's parameters")
            self.params = [s.to(device=p.device, dtype=p.dtype).clone() for s, p in zip(state, params)]

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average, after an optimiser step of the network it was made for."""
        torch._foreach_lerp_(self.params, self._live, 1.0 - self.decay)

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, batches: Iterator[torch.Tensor]) -> None:
        """Give `model` the averaged parameters and BatchNorm statistics measured on `batches` (kept)."""
        for p, a in zip(model.parameters(), self.params):
            p.copy_(a)
        recalibrate_batchnorm(model, batches)

    def state(self) -> list[torch.Tensor]:
        """The averages, on the CPU (for a checkpoint)."""
        return [p.detach().cpu().clone() for p in self.params]

    @contextmanager
    def swapped_in(self, model: torch.nn.Module, batches: Iterator[torch.Tensor]) -> Iterator[torch.nn.Module]:
        """`model` (in eval mode) with the averaged parameters and BatchNorm statistics measured on `batches`
        (a forward pass in train mode, no gradients); on exit the trained parameters, statistics and mode come back
        exactly."""
        saved = {k: v.clone() for k, v in model.state_dict().items()}  # parameters and BatchNorm buffers
        was_training = model.training
        try:
            self.load_into(model, batches)
            yield model
        finally:
            with torch.no_grad():
                for k, v in model.state_dict().items():  # in place: a CUDA graph holds these storages
                    v.copy_(saved[k])
            model.train(was_training)


"""Data parallelism for the search under `torchrun` (DistributedDataParallel semantics).

The search takes second-order and forward-mode derivatives through the supernet, which the
nn.parallel.DistributedDataParallel wrapper does not support; it therefore does what DDP does by hand:
parameters and buffers start equal (broadcast from rank 0), every rank computes gradients on its shard
of each global batch, gradients (weights and architecture) are averaged with all_reduce before each
optimizer step, and BatchNorm buffers are broadcast from rank 0 before evaluation (DDP's
broadcast_buffers). All ranks therefore hold identical alphas and return the same genotype.
Backend: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> "DistContext":
        """The process group's rank and size when torch.distributed is initialised, else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch (every world-th sample)."""
        return x[self.rank :: self.world] if self.enabled else x

    def all_mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Average tensors over ranks (in place; returns them)."""
        if self.enabled:
            for t in tensors:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                t.div_(self.world)
        return tensors

    def broadcast_state(self, module: torch.nn.Module, buffers_only: bool = False) -> None:
        if not self.enabled:
            return
        with torch.no_grad():
            tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
            for t in tensors:
                dist.broadcast(t, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    return DistContext.current()

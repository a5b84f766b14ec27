"""One training step (forward, loss, backward, optimiser step) captured once as a CUDA graph and replayed.

Why: on a GPU the evaluation networks here are bound by Python and kernel launches, not by the GPU (a
DARTS cell is hundreds of tiny kernels: ~85 ms a step of the 4-cell x 16-channel network on an H200,
eager). A replay launches the whole step at once. The arithmetic is the eager step's, kernel for kernel;
only the launch differs.

What capture needs and this module provides: fixed input buffers (`x`, `y`: each batch is copied in),
optimiser state that exists before capture (a warm-up on a side stream creates it; the warm-up's
effect on parameters, buffers and optimiser state is undone in place, so the run is the eager run),
a learning rate that is a device tensor (`set_lr` fills it; the optimiser is `capturable`), gradients
allocated by the captured backward. A model whose forward changes between steps (a stage switch) needs a
new GraphedStep; the training loop builds one per stage.
"""

from __future__ import annotations

from typing import Callable

import torch

LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (x, y) -> (loss, logits)

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN/cuBLAS workspaces, optimiser state)


def capturable_adamw(params, lr: float, weight_decay: float, device: str) -> torch.optim.AdamW:
    """AdamW whose step can be captured in a CUDA graph: lr a device tensor, state on the device."""
    return torch.optim.AdamW(params, lr=torch.tensor(float(lr), device=device), weight_decay=weight_decay,
                             fused=True, capturable=True)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr: filled in place where it is a tensor (a captured step reads that storage)."""
    for g in opt.param_groups:
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)
        else:
            g["lr"] = lr


def eager_step(opt: torch.optim.Optimizer, loss_fn: LossFn) -> Callable:
    """`step(x, y) -> (loss, logits)`: the training step run eagerly (what GraphedStep replays)."""

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss, logits

    return step


class GraphedStep:
    """`step(x, y) -> (loss, logits)`: the captured training step of `loss_fn` with optimiser `opt`.

    loss_fn(x, y) runs the model and returns (scalar loss, logits); x_like, y_like: a batch of the shape
    and dtype every later batch has (the warm-up runs on it). The returned tensors are the graph's own
    outputs, overwritten by the next step: read or copy them before calling again.
    """

    def __init__(self, model: torch.nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn,
                 x_like: torch.Tensor, y_like: torch.Tensor):
        if x_like.device.type != "cuda":
            raise ValueError("GraphedStep needs CUDA tensors")
        self.x = x_like.detach().clone()
        self.y = y_like.detach().clone()
        saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        saved_opt = {p: {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                     for p, s in opt.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                opt.zero_grad(set_to_none=True)
                loss, _ = loss_fn(self.x, self.y)
                loss.backward()
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        # undo the warm-up in place (the graph will read and write these very tensors)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved_model[k])
            for p, s in opt.state.items():
                for k, v in s.items():
                    if isinstance(v, torch.Tensor):
                        old = saved_opt.get(p, {}).get(k)
                        v.copy_(old) if old is not None else v.zero_()
        opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss, self.logits = loss_fn(self.x, self.y)
            self.loss.backward()
            opt.step()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.loss, self.logits


__all__ = ["GraphedStep", "eager_step", "capturable_adamw", "set_lr", "WARMUP_STEPS"]

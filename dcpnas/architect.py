"""Architecture updates: plain first-order (DARTS) and decoupled with psi backtracking (METHOD.md section 4).

The caller computes the architecture gradient G (first-order, or g_C + 2 lambda H v for the Child)
and hands it to `Architect.step(G)`. With `decoupled=True`, after the optimizer step

    alpha_tilde(t+1)[e, m] = alpha(t+1)[e, m] + eta * psi(t)[e] * alpha(t)[e, m]   for m in top-tau(R(w)) on edge e

and psi(t+1) = | psi(t) - eta_psi * dL/dpsi(t) / rms(dL/dpsi(t)) |. dL/dpsi(t)[e] = eta * sum_m G'[e, m] *
alpha(t)[e, m] * mask[e, m], where G' = dL/dalpha at alpha_tilde(t+1), which is exactly the gradient handed to
the *next* step: psi is updated there, so the chain rule costs no extra forward/backward pass.

Scaling (METHOD.md "Scaling"): dL/dpsi is a product of a small gradient and a small alpha (~1e-6 at the
start of a search), so a plain gradient step with psi(0) = 0 leaves psi at ~1e-6 and the backtrack inert.
Here psi starts at psi_init and its step is normalised by the root mean square of dL/dpsi over the edges
of that alpha tensor: eta_psi is the size of psi's step in psi's own units (sign-SGD-like), and psi keeps
its sign information per edge. `step` reports psi_step_ratio = ||backtrack applied|| / ||optimizer step||.
"""

from __future__ import annotations

import torch
from torch import nn

from dcpnas.binary import BinaryConv2d, sign
from dcpnas.operations import Identity, Pool, Zero


def _conv_weight(m: nn.Module) -> torch.Tensor:
    """The weight a conv applies: beta ∘ sign(w) for a binary conv (the Child's w), else w."""
    if isinstance(m, BinaryConv2d) and m.binary_weight:
        return m.scale.detach().view(-1, 1, 1, 1) * sign(m.weight.detach())
    return m.weight.detach()


def op_weight_norm(op: nn.Module, channels: int) -> float:
    """R(w_m) = ||w_m||^2 of one candidate op with C channels. Weight-free ops count as convs with
    fixed weights: identity = 1 per channel (C), a k x k pool = 1/k^2 per tap (C / k^2), zero = 0."""
    if isinstance(op, Zero):
        return 0.0
    if isinstance(op, Identity):
        return float(channels)
    if isinstance(op, Pool):
        return channels / 9.0
    total = 0.0
    for m in op.modules():
        if isinstance(m, (nn.Conv2d, BinaryConv2d)):
            total += float(_conv_weight(m).pow(2).sum())
    return total


def op_weight_norms(supernet) -> list[torch.Tensor]:
    """[R_normal, R_reduce], each [edges, primitives]: R(w_m) summed over the cells of that type."""
    out = [torch.zeros_like(a, device="cpu") for a in supernet.arch_parameters()]
    with torch.no_grad():
        for cell in supernet.cells:
            R = out[1 if cell.reduction else 0]
            C = cell.pre1.conv.out_channels
            for e, mixed in enumerate(cell.edges):
                for m, op in enumerate(mixed.ops):
                    R[e, m] += op_weight_norm(op, C)
    return out


def top_tau_mask(R: torch.Tensor, tau: float) -> torch.Tensor:
    """1 for the ceil(tau * P) ops of largest R on each edge (ties: lower index first), else 0. [E, P]."""
    k = max(1, int(round(tau * R.shape[1])))
    order = torch.argsort(-R, dim=1, stable=True)[:, :k]
    mask = torch.zeros_like(R)
    mask.scatter_(1, order, 1.0)
    return mask


class Architect:
    """Adam on the architecture parameters (DARTS settings), optionally decoupled.

    alphas: the Parameters to update in place; norms_fn() -> [R per alpha tensor] (op_weight_norms of
    the supernet that owns the alphas). eta: backtracking step; eta_psi: psi learning rate; tau: the
    fraction of ops per edge that are backtracked; psi_init: psi(0) on every edge; psi_max_ratio: when
    given, the backtrack applied in one step to each alpha tensor is scaled down to at most this multiple
    of the optimizer step's norm on that tensor (the backtrack is proportional to alpha, so it grows
    without bound as alphas grow: a default search measured backtrack / Adam step 0.57 -> 4.3 (Parent)
    and 1.4 -> 10.4 (Child) from its second to third epoch, collapsing the alpha entropy to 0.11; one cap
    shared by the normal and reduce alphas let the reduce cell take the whole budget).
    """

    def __init__(self, alphas: list[nn.Parameter], lr: float = 3e-3, betas=(0.5, 0.999),
                 weight_decay: float = 1e-3, decoupled: bool = True, eta: float = 0.1,
                 eta_psi: float = 1e-2, tau: float = 0.5, psi_init: float = 0.0, psi_max_ratio: float | None = None,
                 norms_fn=None):
        self.alphas = list(alphas)
        self.optimizer = torch.optim.Adam(self.alphas, lr=lr, betas=betas, weight_decay=weight_decay)
        self.decoupled, self.eta, self.eta_psi, self.tau = decoupled, eta, eta_psi, tau
        self.psi_max_ratio = psi_max_ratio
        self.norms_fn = norms_fn
        self.psi = [torch.full((a.shape[0],), float(psi_init), dtype=a.dtype, device=a.device) for a in self.alphas]
        self._backtrack: list[torch.Tensor] | None = None  # eta * alpha(t) * mask of the last step

    def step(self, grads: list[torch.Tensor]) -> dict:
        """One update with the gradient `grads` (dL/dalpha at the current alpha). Returns metrics."""
        metrics = {}
        if self.decoupled and self._backtrack is not None:
            for k, (g, b) in enumerate(zip(grads, self._backtrack)):
                dpsi = (g.to(b.dtype) * b).sum(dim=1)
                rms = dpsi.square().mean().sqrt()
                if float(rms) > 0:
                    self.psi[k] = (self.psi[k] - self.eta_psi * dpsi / rms).abs()
            metrics["psi_mean"] = float(torch.cat(self.psi).mean())
        previous = [a.detach().clone() for a in self.alphas]
        for a, g in zip(self.alphas, grads):
            a.grad = g.detach().to(a.dtype).clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.decoupled:
            opt_norms = [float((a.detach() - prev).norm()) for a, prev in zip(self.alphas, previous)]
            norms = self.norms_fn() if self.norms_fn is not None else [torch.ones_like(a) for a in previous]
            self._backtrack = [self.eta * prev * top_tau_mask(R.to(prev.device), self.tau)
                               for prev, R in zip(previous, norms)]
            applied = [psi.view(-1, 1) * b for psi, b in zip(self.psi, self._backtrack)]
            back_sq = 0.0
            with torch.no_grad():
                for a, t, opt_norm in zip(self.alphas, applied, opt_norms):  # the cap holds per alpha tensor
                    back = float(t.norm())
                    if self.psi_max_ratio is not None and back > self.psi_max_ratio * opt_norm:
                        t, back = t * (self.psi_max_ratio * opt_norm / back), self.psi_max_ratio * opt_norm
                    a.add_(t)
                    back_sq += back * back
            opt_total = sum(n * n for n in opt_norms) ** 0.5
            metrics["psi_step_ratio"] = back_sq ** 0.5 / opt_total if opt_total > 0 else 0.0
        return metrics

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "psi": [p.clone() for p in self.psi],
                "backtrack": None if self._backtrack is None else [b.clone() for b in self._backtrack]}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.psi = [p.clone() for p in state["psi"]]
        self._backtrack = None if state["backtrack"] is None else [b.clone() for b in state["backtrack"]]

"""Curvature estimators for tangent propagation (METHOD.md section 3).

The Child's architecture gradient is grad = g_C + 2 lambda H v with v = g_C - g_P, where
g_C = dL_C0/dalpha, L_C0 = KL(p_parent || softmax(z(alpha))) and H = d2 L_C0 / dalpha2.
Every estimator returns, from one call, the loss value, g_C and a product M v with its curvature
matrix M, so that the caller pays only for what the estimator needs:

  exact   M = H, the true Hessian: double backward through the supernet (create_graph=True).
  ggn     M = J^T H_out J, the generalized Gauss-Newton matrix (J = dz/dalpha, H_out = d2 L / dz2):
          one forward-mode jvp (J v) + a tiny output-space Hessian product + one vjp (J^T u)
          through the graph kept from the gradient pass. No second-order graph is built.
  fisher  M = (1/N) sum_i g_i g_i^T, the empirical Fisher of the per-sample gradients g_i = dl_i/dalpha
          of the batch-mean loss L = (1/N) sum_i l_i. Never materialised: with r_i = dL/dz_i (so that
          dl_i/dz_i = N r_i), g_i . v = N r_i . (J v)_i and M v = J^T u with u_i = N (r_i . (J v)_i) r_i:
          one jvp + one vjp, the cost of ggn, for any batch-mean loss of per-sample logits.

`alphas` is a list of tensors (alpha_normal [E, P], alpha_reduce [E, P]); vectors are lists of
tensors of the same shapes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
import torch.autograd.forward_ad as fwAD

from dcpnas.errors import ConfigError

Tensors = list[torch.Tensor]
LogitsFn = Callable[[Sequence[torch.Tensor]], torch.Tensor]  # alphas -> logits [N, K]
LossFn = Callable[[torch.Tensor], torch.Tensor]  # logits [N, K] -> scalar
VectorFn = Callable[[Tensors], Tensors]  # g (detached) -> v


@dataclass
class CurvatureResult:
    """loss: L_C0 (detached scalar); grad: g_C; hvp: M v; vector: the v that was used."""

    loss: torch.Tensor
    grad: Tensors
    hvp: Tensors
    vector: Tensors


def _leaves(alphas: Sequence[torch.Tensor]) -> Tensors:
    return [a.detach().requires_grad_(True) for a in alphas]


class CurvatureEstimator:
    """Interface: `gradient_and_hvp(logits_fn, alphas, loss_fn, vector_fn, replay=None)`.

    logits_fn(alphas) -> z [N, K]; loss_fn(z) -> scalar; vector_fn(g) -> v. `replay` is a context
    manager factory entered around any forward pass after the first one (the caller uses it to keep
    BatchNorm running statistics from being updated twice for one batch).
    """

    name = "base"

    def gradient_and_hvp(self, logits_fn: LogitsFn, alphas: Sequence[torch.Tensor], loss_fn: LossFn,
                         vector_fn: VectorFn, replay: Callable[[], ContextManager] | None = None
                         ) -> CurvatureResult:
        raise NotImplementedError

    def hvp(self, logits_fn: LogitsFn, alphas: Sequence[torch.Tensor], loss_fn: LossFn,
            v: Sequence[torch.Tensor]) -> Tensors:
        """M v for a fixed vector v (tests, benchmarks)."""
        fixed = [t.detach() for t in v]
        return self.gradient_and_hvp(logits_fn, alphas, loss_fn, lambda g: fixed).hvp


class ExactHessian(CurvatureEstimator):
    """H v by double backward: d/dalpha (g_C . v) with g_C kept in the graph."""

    name = "exact"

    def gradient_and_hvp(self, logits_fn, alphas, loss_fn, vector_fn, replay=None):
        leaves = _leaves(alphas)
        loss = loss_fn(logits_fn(leaves))
        grad = torch.autograd.grad(loss, leaves, create_graph=True)
        v = [t.detach() for t in vector_fn([g.detach() for g in grad])]
        hvp = _dense(torch.autograd.grad(grad, leaves, grad_outputs=v, allow_unused=True), leaves)
        return CurvatureResult(loss.detach(), [g.detach() for g in grad], hvp, v)


class OutputSpaceCurvature(CurvatureEstimator):
    """M = J^T M_out J with J = dz/dalpha: one jvp (J v), an output-space product u = M_out (J v) of
    the subclass (`output_product`), and one vjp (J^T u) through the graph kept from the gradient pass.
    No second-order graph of the supernet is built."""

    def output_product(self, loss_fn: LossFn, z: torch.Tensor, jv: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def gradient_and_hvp(self, logits_fn, alphas, loss_fn, vector_fn, replay=None):
        leaves = _leaves(alphas)
        z = logits_fn(leaves)
        loss = loss_fn(z)
        grad = torch.autograd.grad(loss, leaves, retain_graph=True)
        v = [t.detach() for t in vector_fn([g.detach() for g in grad])]
        jv = jvp_logits(logits_fn, alphas, v, replay)
        u = self.output_product(loss_fn, z.detach(), jv)
        hvp = _dense(torch.autograd.grad(z, leaves, grad_outputs=u, allow_unused=True), leaves)
        return CurvatureResult(loss.detach(), [g.detach() for g in grad], hvp, v)


class GaussNewton(OutputSpaceCurvature):
    """J^T H_out J v: M_out = H_out = d2 L / dz2, a tiny double backward in output space."""

    name = "ggn"

    def output_product(self, loss_fn, z, jv):
        return output_hvp(loss_fn, z, jv)


class EmpiricalFisher(OutputSpaceCurvature):
    """(1/N) sum_i g_i (g_i . v) over the per-sample gradients g_i of the batch (see the module doc):
    u_i = N (r_i . (J v)_i) r_i with r_i = dL/dz_i."""

    name = "fisher"

    def output_product(self, loss_fn, z, jv):
        zd = z.detach().requires_grad_(True)
        with torch.enable_grad():
            (r,) = torch.autograd.grad(loss_fn(zd), zd)
        return z.shape[0] * (r * jv).sum(-1, keepdim=True) * r


def _dense(grads: Sequence[torch.Tensor | None], leaves: Tensors) -> Tensors:
    """Detached gradients, zeros where autograd returned None (a leaf the output does not use)."""
    return [torch.zeros_like(a) if g is None else g.detach() for g, a in zip(grads, leaves)]


def jvp_logits(logits_fn: LogitsFn, alphas: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
               replay: Callable[[], ContextManager] | None = None) -> torch.Tensor:
    """J v = dz/dalpha . v [N, K] by forward-mode AD (no reverse graph is built)."""
    ctx = replay() if replay is not None else contextlib.nullcontext()
    with ctx, torch.no_grad(), fwAD.dual_level():
        duals = [fwAD.make_dual(a.detach(), t.detach().to(a.dtype)) for a, t in zip(alphas, v)]
        tangent = fwAD.unpack_dual(logits_fn(duals)).tangent
    if tangent is None:  # the logits do not depend on alpha
        with torch.no_grad():
            return torch.zeros_like(logits_fn([a.detach() for a in alphas]))
    return tangent


def output_hvp(loss_fn: LossFn, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """H_out u with H_out = d2 loss / dz2 at logits z [N, K] (a cheap double backward in output space)."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        (gz,) = torch.autograd.grad(loss_fn(z), z, create_graph=True)
        (hu,) = torch.autograd.grad(gz, z, grad_outputs=u)
    return hu.detach()


ESTIMATORS = {"exact": ExactHessian, "ggn": GaussNewton, "fisher": EmpiricalFisher}


def make_estimator(name: str) -> CurvatureEstimator:
    """`exact`, `ggn` (default of the method) or `fisher`."""
    try:
        return ESTIMATORS[name]()
    except KeyError:
        raise ConfigError(f"unknown curvature estimator {name!r}; choose one of {', '.join(ESTIMATORS)}") from None


def kl_to_parent(parent_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_parent || softmax(logits)) averaged over the batch; parent_probs [N, K] is treated as
    a constant (the parent's output is detached)."""
    p = parent_probs.detach()
    logq = torch.log_softmax(logits, dim=-1)
    return (p * (torch.log(p.clamp_min(1e-12)) - logq)).sum(-1).mean()

"""Parent (real-valued) and Child (1-bit) supernets and their update steps (METHOD.md sections 3-5).

ParentChild holds both supernets, their weight optimisers, one Architect each, the curvature estimator,
the tangent direction g_P and the latency term. Each *_step method does one forward/backward and one
optimiser update on one batch and returns its metrics; the loop lives in dcpnas.search.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from dcpnas.architect import Architect, op_weight_norms
from dcpnas.batchnorm import recalibrate_batchnorm
from dcpnas.binary import BinaryConv2d, reconstruction_loss
from dcpnas.config import SearchConfig
from dcpnas.curvature import kl_to_parent, make_estimator
from dcpnas.distributed import DistContext
from dcpnas.latency import LatencyLookup, edge_keys, fixed_latency, latency_loss
from dcpnas.model import Supernet, cell_plan
from dcpnas.space import SearchSpace


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module):
    """Forward passes inside do not move BatchNorm running statistics (momentum 0)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def binary_signs(model: nn.Module) -> torch.Tensor:
    """Signs (w >= 0) of every binary weight of `model`, flattened in module order (bool [N])."""
    ws = [m.weight.detach().flatten() >= 0 for m in model.modules() if isinstance(m, BinaryConv2d) and m.binary_weight]
    return torch.cat(ws) if ws else torch.zeros(0, dtype=torch.bool)


def alpha_entropy(alpha: torch.Tensor) -> float:
    """Mean over edges of the entropy of softmax(alpha[e]) as a fraction of the uniform entropy ln P."""
    logp = F.log_softmax(alpha.detach().double(), dim=-1)
    return float((-(logp.exp() * logp).sum(-1) / math.log(alpha.shape[-1])).mean())


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch: int = 250) -> None:
    """Replace every BatchNorm's running mean/var by their average over the batches of x (train mode); the
    model keeps its mode."""
    was_training = model.training
    try:
        recalibrate_batchnorm(model, (x[i:i + batch] for i in range(0, len(x), batch)))
    finally:
        model.train(was_training)


class LatencyTerm:
    """Expected latency E[LAT] (ms) of a supernet, the LUT read once into tensors, and the latency loss.

    Same value as dcpnas.latency.expected_latency (the reference), without a LUT query per call.
    """

    def __init__(self, space: SearchSpace, table: LatencyLookup, target_ms: float | None, form: str,
                 gamma: float, beta: float, device="cpu"):
        self.fixed = fixed_latency(space, table)
        self.reduction = [p.reduction for p in cell_plan(space)]
        self.tables = [torch.tensor([[0.0 if k is None else table.query(k) for k in edge] for edge in cell],
                                    device=device) for cell in edge_keys(space)]
        self.form, self.gamma, self.beta = form, gamma, beta
        self.target_ms = target_ms

    def expected(self, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor) -> torch.Tensor:
        pn, pr = F.softmax(alpha_normal, -1), F.softmax(alpha_reduce, -1)
        total = alpha_normal.new_tensor(self.fixed)
        for red, lat in zip(self.reduction, self.tables):
            total = total + ((pr if red else pn) * lat.to(alpha_normal.dtype)).sum()
        return total

    def adjust(self, loss_value: float, grads: list[torch.Tensor], alphas: list[torch.Tensor]
               ) -> tuple[list[torch.Tensor], float]:
        """Gradient of latency_loss(L, E[LAT]) given L's value and gradient: L enters as the linear surrogate
        L + G . (alpha - alpha0), which has that value and gradient, so both `add` and `mul` get the exact
        chain rule. Returns (grads, E[LAT] in ms)."""
        leaves = [a.detach().requires_grad_(True) for a in alphas]
        with torch.enable_grad():
            surrogate = loss_value + sum((g.detach() * (a - a.detach())).sum() for g, a in zip(grads, leaves))
            lat = self.expected(*leaves)
            total = latency_loss(surrogate, lat, self.target_ms, self.form, self.gamma, self.beta)
            new = torch.autograd.grad(total, leaves)
        return [g.detach() for g in new], float(lat.detach())


class ParentChild:
    """Both supernets and everything their updates need. All state is in state_dict()."""

    def __init__(self, space: SearchSpace, config: SearchConfig, total_steps: int, device="cpu",
                 latency: LatencyTerm | None = None, dist_ctx: DistContext | None = None):
        self.space, self.config, self.device = space, config, device
        self.total_steps = max(1, total_steps)
        self.dist = dist_ctx or DistContext()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.parent = Supernet(space, binary=False).to(device)
            self.child = Supernet(space, binary=True).to(device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.parent.to(memory_format=self.memory_format)
        self.child.to(memory_format=self.memory_format)
        self.copy_alphas(self.parent, self.child)
        self.dist.broadcast_state(self.parent)
        self.dist.broadcast_state(self.child)
        self.p_opt = torch.optim.Adam(self.parent.weight_parameters(), lr=config.parent_lr,
                                      weight_decay=config.weight_decay)
        self.c_opt = torch.optim.Adam(self.child.weight_parameters(), lr=config.child_lr,
                                      weight_decay=config.weight_decay)
        arch_kw = dict(lr=config.arch_lr, weight_decay=config.arch_weight_decay, decoupled=config.decoupled,
                       eta=config.eta, eta_psi=config.eta_psi, tau=config.tau, psi_init=config.psi_init,
                       psi_max_ratio=config.psi_max_ratio or None)
        self.p_arch = Architect(self.parent.arch_parameters(), norms_fn=lambda: op_weight_norms(self.parent), **arch_kw)
        self.c_arch = Architect(self.child.arch_parameters(), norms_fn=lambda: op_weight_norms(self.child), **arch_kw)
        self.estimator = make_estimator(config.curvature)
        self.latency = latency
        self.g_parent: list[torch.Tensor] | None = None
        self.hvp_cache: list[torch.Tensor] | None = None  # M v of the last curvature refresh
        self.arch_count = 0  # child architecture steps so far (curvature_every counts them)
        self.step_count = {"parent": 0, "child": 0}

    # -- helpers -----------------------------------------------------------------------------------
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the supernets' memory format (a no-op when it already is)."""
        return x.contiguous(memory_format=self.memory_format)

    def _lr(self, base: float, phase: str) -> float:
        """Cosine schedule over the search's steps of that phase, down to 10% of base."""
        t = min(self.step_count[phase], self.total_steps) / self.total_steps
        return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    def _weight_update(self, model: Supernet, opt, loss: torch.Tensor, base_lr: float, phase: str) -> None:
        params = model.weight_parameters()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        self.dist.all_mean(grads)
        for p, g in zip(params, grads):
            p.grad = g
        for group in opt.param_groups:
            group["lr"] = self._lr(base_lr, phase)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.step_count[phase] += 1

    def _parent_probs(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), frozen_bn_stats(self.parent):
            return F.softmax(self.parent(x), dim=-1)

    def _arch_update(self, arch: Architect, loss_value: float, grads: list[torch.Tensor]) -> dict:
        self.dist.all_mean(grads)
        if self.dist.enabled:  # the `mul` latency form scales by L: every rank must use the same L
            loss_value = float(self.dist.all_mean([torch.tensor(loss_value, dtype=torch.float64)])[0])
        lat = None
        if self.latency is not None:
            grads, lat = self.latency.adjust(loss_value, grads, arch.alphas)
        metrics = arch.step(grads)
        if lat is not None:
            metrics["lat_ms"] = lat
        return metrics

    # -- parent ----------------------------------------------------------------------------------------
    def parent_weight_step(self, x, y) -> dict:
        x = self._input(x)
        logits = self.parent(x)
        loss = F.cross_entropy(logits, y)
        self._weight_update(self.parent, self.p_opt, loss, self.config.parent_lr, "parent")
        return {"loss": float(loss.detach()), "acc": float((logits.argmax(1) == y).float().mean())}

    def parent_arch_grad(self, x, y) -> tuple[float, list[torch.Tensor]]:
        """L_P and g_P = dL_P/dalpha on a (validation) batch."""
        loss = F.cross_entropy(self.parent(self._input(x)), y)
        return float(loss.detach()), [g.detach() for g in torch.autograd.grad(loss, self.parent.arch_parameters())]

    def parent_arch_step(self, x, y) -> dict:
        loss, grads = self.parent_arch_grad(x, y)
        return {"arch_loss": loss, **self._arch_update(self.p_arch, loss, grads)}

    def set_tangent(self, x, y) -> None:
        """g_P at the current parent (METHOD eq. 4.29), averaged over ranks."""
        with frozen_bn_stats(self.parent):
            _, g = self.parent_arch_grad(x, y)
        self.g_parent = self.dist.all_mean(g)
        self.hvp_cache = None  # a new tangent (and new alphas): the next child arch step refreshes M v

    # -- child -----------------------------------------------------------------------------------------
    def child_weight_step(self, x, y) -> dict:
        """KL to the detached parent + mu * L_R (L_R per binary weight: binary.reconstruction_loss)."""
        x = self._input(x)
        p = self._parent_probs(x)
        logits = self.child(x)
        kl = kl_to_parent(p, logits)
        metrics = {"loss": float(kl.detach()), "acc": float((logits.argmax(1) == y).float().mean())}
        loss = kl
        if self.config.mu:
            l_r = reconstruction_loss(self.child)
            loss = kl + self.config.mu * l_r
            metrics["L_R"] = float(l_r.detach())
        self._weight_update(self.child, self.c_opt, loss, self.config.child_lr, "child")
        return metrics

    def child_arch_step(self, x, y) -> dict:
        """grad = g_C + 2 lambda M (g_C - g_P) with M from the curvature estimator (lambda = 0: g_C).

        With config.lam_relative (the default), lambda is a fraction of ||g_C||: the tangent term is
        rescaled so that ||2 lambda_abs M v|| = lam * ||g_C||, i.e. lambda_abs = lam ||g_C|| / ||2 M v||
        (METHOD.md "Scaling": a fixed lambda made the term ~1e-4 of g_C). Otherwise lambda_abs = lam.
        Metrics: tangent_ratio = ||2 lambda_abs M v|| / ||g_C||, lambda_abs."""
        x = self._input(x)
        p = self._parent_probs(x)
        alphas = self.child.arch_parameters()
        lam = self.config.effective_lambda

        def loss_fn(z):
            return kl_to_parent(p, z)

        def logits_fn(a):
            return self.child(x, alphas=tuple(a))

        metrics = {}
        tangent = lam > 0 and self.g_parent is not None
        every = max(1, self.config.curvature_every)
        if tangent and (self.hvp_cache is None or self.arch_count % every == 0):
            g_p = self.g_parent
            res = self.estimator.gradient_and_hvp(
                logits_fn, alphas, loss_fn, lambda g: [gi - gp for gi, gp in zip(g, g_p)],
                replay=lambda: frozen_bn_stats(self.child))
            loss_t, g_c, hvp = res.loss, res.grad, res.hvp
            self.hvp_cache = [h.clone() for h in hvp]
        else:  # first-order g_C; between curvature refreshes the last M v is reused (curvature_every)
            leaves = [a.detach().requires_grad_(True) for a in alphas]
            loss_t = loss_fn(logits_fn(leaves))
            g_c = [g.detach() for g in torch.autograd.grad(loss_t, leaves)]
            hvp = self.hvp_cache
        self.arch_count += 1
        loss_value = float(loss_t.detach())
        grads = g_c
        if tangent:
            D = float(sum(((g - gp) ** 2).sum() for g, gp in zip(g_c, self.g_parent)))
            g_norm = float(sum((g * g).sum() for g in g_c)) ** 0.5
            t_norm = 2 * float(sum((h * h).sum() for h in hvp)) ** 0.5  # ||2 M v||
            if self.config.lam_relative:
                lam = lam * g_norm / t_norm if t_norm > 0 else 0.0
            grads = [g + 2 * lam * h for g, h in zip(g_c, hvp)]
            loss_value += lam * D
            metrics.update(D=D, lambda_abs=lam, tangent_ratio=lam * t_norm / g_norm if g_norm > 0 else 0.0)
        metrics["arch_loss"] = loss_value
        metrics.update(self._arch_update(self.c_arch, loss_value, grads))
        return metrics

    def inherit_child_weights(self) -> None:
        """Child weights <- the Parent's (its real weights become the Child's latent weights; beta <- mean |w|
        per channel; BN statistics copied), and a fresh Child optimiser: the two-stage idea of METHOD.md
        section 7 (binary initialised from real-valued) applied to the supernet pair."""
        state = {k: v for k, v in self.parent.state_dict().items() if not k.startswith("alpha_")}
        self.child.load_state_dict(state, strict=False)  # same topology and names; the Child adds .scale
        for m in self.child.modules():
            if isinstance(m, BinaryConv2d):
                m.reset_scale()
        self.c_opt = torch.optim.Adam(self.child.weight_parameters(), lr=self.config.child_lr,
                                      weight_decay=self.config.weight_decay)

    # -- alpha hand-over -----------------------------------------------------------------------------
    def copy_alphas(self, src: Supernet, dst: Supernet) -> None:
        with torch.no_grad():
            for a, b in zip(src.arch_parameters(), dst.arch_parameters()):
                b.copy_(a)

    # -- evaluation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: Supernet, x: torch.Tensor, y: torch.Tensor, batch: int = 250,
                 calib: torch.Tensor | None = None) -> float:
        """Top-1 accuracy in eval mode (BN running statistics, broadcast from rank 0 as DDP does).

        calib: training images on which the BN running statistics are first re-estimated (exact averages,
        not the momentum trace: after a few dozen steps of a changing supernet that trace is so stale that a
        Parent with 38% train accuracy scored chance in eval mode). The same images on every rank."""
        x = self._input(x)
        if calib is not None and len(calib):
            recalibrate_bn(model, self._input(calib), batch)
        self.dist.broadcast_state(model, buffers_only=True)
        model.eval()
        correct = 0
        for i in range(0, len(y), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
        model.train()
        return correct / max(1, len(y))

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"parent": self.parent.state_dict(), "child": self.child.state_dict(),
                "p_opt": self.p_opt.state_dict(), "c_opt": self.c_opt.state_dict(),
                "p_arch": self.p_arch.state_dict(), "c_arch": self.c_arch.state_dict(),
                "g_parent": self.g_parent, "step_count": dict(self.step_count),
                "hvp_cache": self.hvp_cache, "arch_count": self.arch_count}

    def load_state_dict(self, s: dict) -> None:
        self.parent.load_state_dict(s["parent"])
        self.child.load_state_dict(s["child"])
        self.p_opt.load_state_dict(s["p_opt"])
        self.c_opt.load_state_dict(s["c_opt"])
        self.p_arch.load_state_dict(s["p_arch"])
        self.c_arch.load_state_dict(s["c_arch"])
        self.g_parent = s["g_parent"]
        self.step_count = dict(s["step_count"])
        self.hvp_cache, self.arch_count = s.get("hvp_cache"), s.get("arch_count", 0)

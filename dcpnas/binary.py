"""1-bit building blocks (METHOD.md section 2): sign with STE, ApproxSign, and BinaryConv2d.

Sign convention everywhere (training, export, kernels): sign(x) = +1 if x >= 0 else -1.
torch.sign is never used (it gives 0 at 0). One BinaryConv2d serves search, training and export.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0 (-0.0 too), else -1 (same dtype and memory format as x); NaN gives +1. No gradient.
    Float ops only: sign(x) is -1/0/+1, +0.5 moves the 0 to +1. On CPU torch's comparisons and `where`
    (bool tensors) run ~35x slower than a float elementwise op (0.87 ms vs 0.07 ms on a 64x16x14x14 batch,
    1 thread), and the supernet and the trained network apply this to every binarised activation."""
    return torch.sign(x).add_(0.5).sign_()


class SteSign(torch.autograd.Function):
    """sign(x) forward; straight-through gradient 1 on |x| <= 1, 0 elsewhere (eq. 4.35). For weights."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)

    @staticmethod
    def jvp(ctx, t):
        # forward-mode twin of the STE (used by the ggn curvature estimator)
        (x,) = ctx.saved_tensors
        return t * (x.abs() <= 1).to(t.dtype)


class ApproxSign(torch.autograd.Function):
    """sign(x) forward; Bi-Real Net gradient 2+2x on [-1,0), 2-2x on [0,1), 0 elsewhere. For activations."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        # 2 + 2x on [-1, 0) and 2 - 2x on [0, 1) are both 2 - 2|x|; zero outside (-1, 1). Not in place:
        # the exact curvature estimator differentiates this backward again (create_graph)
        return g * (2 - 2 * x.abs()).clamp_min(0)

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * (2 - 2 * x.abs()).clamp_min(0)


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    return SteSign.apply(x)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    return ApproxSign.apply(x)


class BinaryConv2d(nn.Module):
    """out = beta ∘ (sign(a) ⊛ sign(w)) (eq. 4.22), zero padding of the binarised input.

    binary_act: binarise the input (ApproxSign); otherwise the conv sees real activations
    (the `authors` policy for depthwise/1x1 convs, or a real-valued parent).
    binary_weight: binarise the weights (STE) and multiply by the per-output-channel scale beta;
    otherwise (stage 1 of training) the real weights are used and beta is not applied.
    Shapes: x [N, C_in, H, W] -> [N, C_out, H', W'].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        binary_act: bool = True,
        binary_weight: bool = True,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.groups = dilation, groups
        self.binary_act, self.binary_weight = binary_act, binary_weight
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.scale = nn.Parameter(self.weight.detach().abs().mean(dim=(1, 2, 3)).clone())

    def reset_scale(self) -> None:
        """beta <- mean |w| per output channel (its initialisation; used when stage 2 starts)."""
        with torch.no_grad():
            self.scale.copy_(self.weight.abs().mean(dim=(1, 2, 3)).clamp_min(1e-8))

    def effective_weight(self) -> torch.Tensor:
        """The weight the conv applies: beta ∘ sign(w) when binary, else w. [C_out, C_in/g, k, k]."""
        if self.binary_weight:
            return ste_sign(self.weight) * self.scale.view(-1, 1, 1, 1)
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = approx_sign(x) if self.binary_act else x
        return F.conv2d(a, self.effective_weight(), None, self.stride, self.padding, self.dilation, self.groups)

    def reconstruction_loss(self) -> torch.Tensor:
        """L_R = || w - beta ∘ sign(w) ||^2 (eq. 4.23), computed as || |w| - beta ||^2 (the same value, and
        the same gradient except at w = 0 exactly; three kernels instead of six)."""
        return (self.weight.abs() - self.scale.view(-1, 1, 1, 1)).square().sum()

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, s={self.stride}, p={self.padding}, "
            f"d={self.dilation}, g={self.groups}, binary_act={self.binary_act}, binary_weight={self.binary_weight}"
        )


def reconstruction_loss(module: nn.Module) -> torch.Tensor:
    """L_R per weight: sum of || w - beta ∘ sign(w) ||^2 over every BinaryConv2d with binary weights inside
    `module`, divided by the number of those weights (METHOD.md "Scaling": a sum over all weights makes
    mu * L_R ~100x the batch-mean KL and freezes every sign; the mean keeps mu a per-weight pull)."""
    convs = [m for m in module.modules() if isinstance(m, BinaryConv2d) and m.binary_weight]
    if not convs:
        return torch.zeros(())
    return torch.stack([m.reconstruction_loss() for m in convs]).sum() / sum(m.weight.numel() for m in convs)


def set_binary_weights(module: nn.Module, enabled: bool) -> None:
    """Switch every BinaryConv2d between real weights (stage 1) and binary weights (stage 2);
    when enabling, beta is re-initialised from the trained real weights."""
    for m in module.modules():
        if isinstance(m, BinaryConv2d):
            if enabled and not m.binary_weight:
                m.reset_scale()
            m.binary_weight = enabled

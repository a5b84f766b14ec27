"""The candidate ops of a DARTS edge (METHOD.md sections 1-2), real-valued or 1-bit.

One factory `make_op(name, C, stride, binary, policy, affine)` serves the supernet (parent: binary=False,
child: binary=True) and the evaluation network. Block order as in the authors' code:
BN -> conv -> BN -> PReLU, with a residual inside a stride-1 sep/dil conv block.
"""

from __future__ import annotations

import torch
from torch import nn

from dcpnas.binary import BinaryConv2d
from dcpnas.errors import ConfigError


class _PReLUFn(torch.autograd.Function):
    """y = max(x, 0) + w * min(x, 0), w per channel (dim 1): torch's PReLU, in float ops only.

    torch's CPU PReLU backward runs through bool masks (`where`), ~35x slower than a float elementwise op
    here: 1.2 ms of a 64x16x14x14 batch, a fifth of a training step. With h = max(sign(x), 0) (1 on x > 0,
    else 0): dx = g * (h + w (1 - h)), dw = sum over all but dim 1 of g * min(x, 0) -- exact for h in {0, 1},
    the values of torch's kernel. The backward is made of differentiable ops (the exact curvature estimator
    differentiates it again); jvp serves forward-mode AD (the ggn estimator)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        ctx.save_for_forward(x, w)
        return torch.addcmul(x.clamp(min=0), _per_channel(w, x), x.clamp(max=0))

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = g * _slope(x, w)
        gw = (g * x.clamp(max=0)).sum([d for d in range(x.dim()) if d != 1])
        return gx, gw

    @staticmethod
    def jvp(ctx, tx, tw):
        x, w = ctx.saved_tensors
        out = tx * _slope(x, w) if tx is not None else torch.zeros_like(x)
        return out if tw is None else out + _per_channel(tw, x) * x.clamp(max=0)


def _slope(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """dy/dx of PReLU: 1 on x > 0, w elsewhere, as h + w (1 - h) with h = max(sign(x), 0) in {0, 1} (exact)."""
    h = torch.sign(x).clamp(min=0)
    return torch.addcmul(h, _per_channel(w, x), 1 - h)


def _per_channel(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return w.view(1, -1, *([1] * (x.dim() - 2)))


class PReLU(nn.PReLU):
    """nn.PReLU (same parameter, state dict and export) with a faster CPU backward (_PReLUFn)."""

    def forward(self, x):
        if self.num_parameters == 1 or x.dim() < 2:
            return super().forward(x)
        return _PReLUFn.apply(x, self.weight)


class ConvUnit(nn.Module):
    """BN -> conv -> BN -> PReLU. The conv is a BinaryConv2d when `binary` (activations binarised
    unless `real_act`), else a float nn.Conv2d. [N, C_in, H, W] -> [N, C_out, H', W']."""

    def __init__(self, C_in, C_out, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 binary=False, real_act=False, affine=True):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(C_in, affine=affine)
        if binary:
            self.conv = BinaryConv2d(C_in, C_out, kernel_size, stride, padding, dilation, groups,
                                     binary_act=not real_act, binary_weight=True)
        else:
            self.conv = nn.Conv2d(C_in, C_out, kernel_size, stride, padding, dilation, groups, bias=False)
        self.bn_out = nn.BatchNorm2d(C_out, affine=affine)
        self.act = PReLU(C_out)

    def forward(self, x):
        return self.act(self.bn_out(self.conv(self.bn_in(x))))


class SepBlock(nn.Module):
    """Depthwise k x k (dilation d) then pointwise 1x1; residual when shapes allow (stride 1, C_in == C_out).
    `book` policy binarises both convs; `authors` keeps real activations in the depthwise conv."""

    def __init__(self, C_in, C_out, k, stride, dilation, binary, policy, affine):
        super().__init__()
        pad = dilation * (k - 1) // 2
        self.dw = ConvUnit(C_in, C_in, k, stride, pad, dilation, groups=C_in, binary=binary,
                           real_act=(policy == "authors"), affine=affine)
        self.pw = ConvUnit(C_in, C_out, 1, binary=binary, affine=affine)
        self.residual = stride == 1 and C_in == C_out

    def forward(self, x):
        y = self.pw(self.dw(x))
        return y + x if self.residual else y


class SepConv(nn.Module):
    """DARTS sep_conv_kxk: two separable blocks, the first one strided."""

    def __init__(self, C_in, C_out, k, stride, binary, policy, affine):
        super().__init__()
        self.op = nn.Sequential(
            SepBlock(C_in, C_in, k, stride, 1, binary, policy, affine),
            SepBlock(C_in, C_out, k, 1, 1, binary, policy, affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """DARTS dil_conv_kxk: one separable block with dilation 2."""

    def __init__(self, C_in, C_out, k, stride, binary, policy, affine):
        super().__init__()
        self.op = SepBlock(C_in, C_out, k, stride, 2, binary, policy, affine)

    def forward(self, x):
        return self.op(x)


class FactorizedReduce(nn.Module):
    """Halve H and W: two 1x1 stride-2 convs, the second shifted by one pixel, concatenated.
    `book` binarises them, `authors` keeps real activations. Needs even H and W."""

    def __init__(self, C_in, C_out, binary, policy, affine):
        super().__init__()
        if C_out % 2:
            raise ConfigError(f"FactorizedReduce needs an even channel count, got {C_out}")
        real_act = policy == "authors"
        self.conv_1 = ConvUnit(C_in, C_out // 2, 1, 2, binary=binary, real_act=real_act, affine=affine)
        self.conv_2 = ConvUnit(C_in, C_out // 2, 1, 2, binary=binary, real_act=real_act, affine=affine)

    def forward(self, x):
        return torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)


class Pool(nn.Module):
    """3x3 max or average pool (average excludes padding), stride s, padding 1; no weights."""

    def __init__(self, kind: str, stride: int):
        super().__init__()
        self.kind = kind
        if kind == "max":
            self.pool = nn.MaxPool2d(3, stride, 1)
        else:
            self.pool = nn.AvgPool2d(3, stride, 1, count_include_pad=False)

    def forward(self, x):
        return self.pool(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The `none` op: zeros of the output shape (strided when reducing)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def make_op(name: str, C: int, stride: int, binary: bool, policy: str = "book", affine: bool = True) -> nn.Module:
    """Build candidate op `name` with C channels in and out."""
    if name == "none":
        return Zero(stride)
    if name == "skip_connect":
        return Identity() if stride == 1 else FactorizedReduce(C, C, binary, policy, affine)
    if name == "max_pool_3x3":
        return Pool("max", stride)
    if name == "avg_pool_3x3":
        return Pool("avg", stride)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        return SepConv(C, C, int(name[-1]), stride, binary, policy, affine)
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        return DilConv(C, C, int(name[-1]), stride, binary, policy, affine)
    raise ConfigError(f"unknown op {name!r}")

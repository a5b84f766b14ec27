"""Slow, obviously correct numpy references for the binary conv kernels (the tests' ground truth).

Schema (DESIGN.md, Compiler): sign(x) = +1 if x >= 0 else -1; weights uint8
[C_out, ceil(C_in/group/8), kH, kW], packed along input channels LSB first, bit 1 = -1;
zero padding of the binarised input (a padded tap contributes 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcpnas.errors import CompileError


@dataclass(frozen=True)
class BinaryConvAttrs:
    """Attributes of `dcpnas::BinaryConv2d` (pads are top, left, bottom, right)."""

    kernel_shape: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int
    channels_in: int

    def __post_init__(self):
        def ints(v, n, name):
            v = tuple(int(a) for a in v)
            if len(v) != n:
                raise CompileError(f"BinaryConv2d: {name} needs {n} integers, got {v}")
            return v

        object.__setattr__(self, "kernel_shape", ints(self.kernel_shape, 2, "kernel_shape"))
        object.__setattr__(self, "strides", ints(self.strides, 2, "strides"))
        object.__setattr__(self, "pads", ints(self.pads, 4, "pads"))
        object.__setattr__(self, "dilations", ints(self.dilations, 2, "dilations"))
        object.__setattr__(self, "group", int(self.group))
        object.__setattr__(self, "channels_in", int(self.channels_in))
        if min(self.kernel_shape + self.strides + self.dilations) < 1 or min(self.pads) < 0:
            raise CompileError(f"BinaryConv2d: kernel/strides/dilations must be >= 1 and pads >= 0: {self}")
        if self.group < 1 or self.channels_in % self.group:
            raise CompileError(f"BinaryConv2d: channels_in {self.channels_in} is not divisible by group {self.group}")

    @property
    def channels_per_group(self) -> int:
        return self.channels_in // self.group

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Output spatial size (OH, OW) for an input of h x w (PyTorch's formula)."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_shape, self.strides, self.dilations
        pt, pl, pb, pr = self.pads
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise CompileError(f"BinaryConv2d: input {h}x{w} is too small for {self}")
        return oh, ow


def sign_bits(v: np.ndarray) -> np.ndarray:
    """1 where v < 0 (sign -1), else 0 (sign +1; sign(0) = +1). uint8, same shape."""
    return (np.asarray(v) < 0).astype(np.uint8)


def pack_weights(w: np.ndarray) -> np.ndarray:
    """float [C_out, C_in/g, kh, kw] -> uint8 [C_out, ceil(C_in/g/8), kh, kw]: sign bits (1 = -1), LSB first."""
    w = np.asarray(w)
    if w.ndim != 4:
        raise CompileError(f"pack_weights: expected a 4-D [C_out, C_in/g, kh, kw] array, got shape {w.shape}")
    return np.packbits(sign_bits(w), axis=1, bitorder="little")


def unpack_weights(w_bits: np.ndarray, channels_per_group: int) -> np.ndarray:
    """uint8 [C_out, ceil(Cg/8), kh, kw] -> float32 ±1 [C_out, Cg, kh, kw] (bits past Cg are ignored)."""
    w_bits = np.asarray(w_bits)
    if w_bits.dtype != np.uint8 or w_bits.ndim != 4 or w_bits.shape[1] != -(-channels_per_group // 8):
        raise CompileError(
            f"unpack_weights: expected uint8 [C_out, {-(-channels_per_group // 8)}, kh, kw], "
            f"got {w_bits.dtype} {w_bits.shape}"
        )
    bits = np.unpackbits(w_bits, axis=1, bitorder="little")[:, :channels_per_group]
    return (1.0 - 2.0 * bits).astype(np.float32)


def _per_channel(v, n: int, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    if v.shape != (n,):
        raise CompileError(f"binary conv: {name} must have {n} values, got {v.shape[0]}")
    return v


def binary_conv2d_reference(x, w_bits, scale, bias, attrs: BinaryConvAttrs, in_scale=None, in_shift=None,
                            prelu=None) -> np.ndarray:
    """Y = scale * sum_valid sign(x') * sign(w) + bias, then optional PReLU (slope per output channel).

    x: float32 [N, C_in, H, W]; x' = x * in_scale + in_shift per input channel (float32, as the BatchNorm
    before the sign computes it); w_bits: uint8 schema weights; scale, bias, prelu: [C_out].
    Zero padding of sign(x'). Sums in float64; returns float32 [N, C_out, OH, OW].
    """
    x = np.asarray(x, dtype=np.float32)
    n, c, h, w = x.shape
    if c != attrs.channels_in:
        raise CompileError(f"binary conv: input has {c} channels, attributes say {attrs.channels_in}")
    if in_scale is not None:
        x = x * _per_channel(in_scale, c, "in_scale").reshape(1, c, 1, 1)
    if in_shift is not None:
        x = x + _per_channel(in_shift, c, "in_shift").reshape(1, c, 1, 1)
    a = np.where(x >= 0, 1.0, -1.0)
    wt = unpack_weights(w_bits, attrs.channels_per_group).astype(np.float64)
    co, cg, kh, kw = wt.shape
    if (kh, kw) != attrs.kernel_shape or co % attrs.group:
        raise CompileError(f"binary conv: weight shape {w_bits.shape} does not match {attrs}")
    pt, pl, pb, pr = attrs.pads
    (sh, sw), (dh, dw) = attrs.strides, attrs.dilations
    oh, ow = attrs.out_hw(h, w)
    ap = np.pad(a, ((0, 0), (0, 0), (pt, pb), (pl, pr)))  # zeros: padded taps contribute 0
    g, cog = attrs.group, co // attrs.group
    acc = np.zeros((n, co, oh, ow))
    for gi in range(g):
        xs = ap[:, gi * cg:(gi + 1) * cg]
        ws = wt[gi * cog:(gi + 1) * cog]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
                acc[:, gi * cog:(gi + 1) * cog] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
    y = acc * _per_channel(scale, co, "scale").reshape(1, co, 1, 1)
    if bias is not None:
        y = y + _per_channel(bias, co, "bias").reshape(1, co, 1, 1)
    if prelu is not None:
        y = np.where(y >= 0, y, y * _per_channel(prelu, co, "prelu").reshape(1, co, 1, 1))
    return y.astype(np.float32)

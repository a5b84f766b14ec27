"""TE compute definitions of the two binary conv kernels (layouts: see pack.py).

pack:  float32 x [N, C, H, W] (+ optional per-channel affine in_scale/in_shift, the BatchNorm before the
       sign) -> uint32 P [N, G*Qg, Hp, Wp], zero border words.            block "pack"
conv:  P, Wt, corr, ycls, xcls, scale, bias[, slope][, res] -> float32 [N, G, Cog, OH, OW] (= NCHW memory):
       v = kh*kw*Cg - 2 * sum_{taps, words} popcount(P ^ Wt) - corr  (exact integer, block "popc"),
       y = scale * v + bias, then PReLU(slope) if given, then + res... (residual adds, [N, G, Cog, OH, OW])
                                                                         (block "binconv_out")
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import te

from .epilogue import float_epilogue
from .pack import WORD_BITS, words_per_group
from .reference import BinaryConvAttrs


@dataclass(frozen=True)
class ConvGeometry:
    """All static sizes of one binary conv (input N x C x H x W, C_out outputs)."""

    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    attrs: BinaryConvAttrs
    word_bits: int = WORD_BITS  # 32, or 8 for the AVX2 byte-lane kernel
    mma: str = ""  # CUDA b1 tensor-core conv (bmma_cuda.py): "xor" | "and"; "" = the popcount kernels

    @property
    def word_dtype(self) -> str:
        return f"uint{self.word_bits}"

    @property
    def g(self) -> int:
        return self.attrs.group

    @property
    def cg(self) -> int:
        return self.attrs.channels_per_group

    @property
    def cog(self) -> int:
        return self.c_out // self.attrs.group

    @property
    def qg(self) -> int:
        return words_per_group(self.cg, self.word_bits)

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.attrs.out_hw(self.h, self.w)

    @property
    def packed_shape(self) -> tuple[int, int, int, int]:
        pt, pl, pb, pr = self.attrs.pads
        return (self.n, self.g * self.qg, self.h + pt + pb, self.w + pl + pr)

    @property
    def out5_shape(self) -> tuple[int, int, int, int, int]:
        oh, ow = self.out_hw
        return (self.n, self.g, self.cog, oh, ow)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        oh, ow = self.out_hw
        return (self.n, self.c_out, oh, ow)

    @property
    def binary_macs(self) -> int:
        """1-bit multiply-accumulates of the conv (padded taps included, as the kernel computes them)."""
        oh, ow = self.out_hw
        kh, kw = self.attrs.kernel_shape
        return self.n * self.c_out * oh * ow * kh * kw * self.cg


def pack_compute(x: te.Tensor, geo: ConvGeometry, in_scale: te.Tensor | None = None,
                 in_shift: te.Tensor | None = None) -> te.Tensor:
    """Sign + bit-pack along channels with zero border words (bit 1 = x' < 0, x' = x*in_scale+in_shift)."""
    n, gq, hp, wp = geo.packed_shape
    cg, qg = geo.cg, geo.qg
    pt, pl, _, _ = geo.attrs.pads
    wb, dt = geo.word_bits, geo.word_dtype
    b = te.reduce_axis((0, min(wb, cg)), "b")
    one = tvm.tirx.const(1, dt)
    zero = tvm.tirx.const(0, dt)

    def bit(i, gqi, y, xx):
        g, q = gqi // qg, gqi % qg
        c = g * cg + q * wb + b
        v = x[i, c, y - pt, xx - pl]
        if in_scale is not None:
            v = v * in_scale[c]
        if in_shift is not None:
            v = v + in_shift[c]
        inside = tvm.tirx.all(y >= pt, y < pt + geo.h, xx >= pl, xx < pl + geo.w)
        if cg % wb:
            inside = tvm.tirx.all(inside, q * wb + b < cg)
        return tvm.tirx.if_then_else(inside, tvm.tirx.if_then_else(v < 0, one << b.astype(dt), zero), zero)

    return te.compute((n, gq, hp, wp), lambda i, gqi, y, xx: te.sum(bit(i, gqi, y, xx), axis=b), name="pack")


def conv_compute(p: te.Tensor, wt: te.Tensor, corr: te.Tensor, ycls: te.Tensor, xcls: te.Tensor,
                 scale: te.Tensor, bias: te.Tensor, slope: te.Tensor | None, geo: ConvGeometry,
                 res: tuple[te.Tensor, ...] = ()) -> te.Tensor:
    """Exact XNOR-popcount conv with border correction and the fused float epilogue (shapes: module doc)."""
    n, g, cog, oh, ow = geo.out5_shape
    (kh, kw), (sh, sw), (dh, dw) = geo.attrs.kernel_shape, geo.attrs.strides, geo.attrs.dilations
    qg = geo.qg
    if geo.word_bits == 8:
        popc = _popc_bytes(p, wt, geo)
    else:
        ry, rx, rq = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, qg), "rq")
        popc = te.compute(
            (n, g, oh, ow, cog),
            lambda i, gi, y, xx, c: te.sum(
                tvm.tirx.popcount(p[i, gi * qg + rq, y * sh + ry * dh, xx * sw + rx * dw] ^ wt[gi, ry, rx, rq, c]
                                  ).astype("int32"), axis=[ry, rx, rq]),
            name="popc")
    kt = kh * kw * geo.cg

    def epilogue(i, gi, c, y, xx):
        v = kt - 2 * popc[i, gi, y, xx, c] - corr[ycls[y], xcls[xx], gi, c]
        return float_epilogue(v, scale[gi, c], bias[gi, c], None if slope is None else slope[gi, c],
                              [r[i, gi, c, y, xx] for r in res])

    return te.compute((n, g, cog, oh, ow), epilogue, name="binconv_out")


def byte_chunk(qb: int) -> int:
    """Bytes summed in uint8 before widening: a divisor of qb with 8 * chunk <= 255."""
    return max(d for d in range(1, min(qb, 31) + 1) if qb % d == 0)


def _popc_bytes(p: te.Tensor, wt: te.Tensor, geo: ConvGeometry) -> te.Tensor:
    """Byte-word variant (AVX2 has no vector popcount on 32-bit lanes; the byte popcount is 2 vpshufb):
    popcounts of `chunk` bytes are summed in uint8 lanes ("popc8"), then widened to int32 ("popc")."""
    n, g, cog, oh, ow = geo.out5_shape
    (kh, kw), (sh, sw), (dh, dw) = geo.attrs.kernel_shape, geo.attrs.strides, geo.attrs.dilations
    qb = geo.qg
    ch = byte_chunk(qb)
    ri = te.reduce_axis((0, ch), "ri")
    popc8 = te.compute(
        (n, g, oh, ow, cog, kh, kw, qb // ch),
        lambda i, gi, y, xx, c, a, b, o: te.sum(
            tvm.tirx.popcount(p[i, gi * qb + o * ch + ri, y * sh + a * dh, xx * sw + b * dw] ^ wt[gi, a, b, o * ch + ri, c]),
            axis=ri),
        name="popc8")
    ry, rx, ro = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, qb // ch), "ro")
    return te.compute((n, g, oh, ow, cog), lambda i, gi, y, xx, c: te.sum(
        popc8[i, gi, y, xx, c, ry, rx, ro].astype("int32"), axis=[ry, rx, ro]), name="popc")


def input_placeholders(geo: ConvGeometry, affine: bool):
    """The float input x [N, C_in, H, W] and, with `affine`, the BatchNorm-before-sign vectors
    in_scale, in_shift [C_in]; returns (x, in_scale | None, in_shift | None, [the placeholders])."""
    x = te.placeholder((geo.n, geo.c_in, geo.h, geo.w), "float32", "x")
    if not affine:
        return x, None, None, [x]
    s = te.placeholder((geo.c_in,), "float32", "in_scale")
    t = te.placeholder((geo.c_in,), "float32", "in_shift")
    return x, s, t, [x, s, t]


def make_pack_func(geo: ConvGeometry, affine: bool) -> tvm.tirx.PrimFunc:
    """PrimFunc (x[, in_scale, in_shift], P)."""
    x, s, t, args = input_placeholders(geo, affine)
    out = pack_compute(x, geo, s, t)
    return te.create_prim_func(args + [out])


def make_conv_func(geo: ConvGeometry, n_ycls: int, n_xcls: int, prelu: bool,
                   residual: int = 0) -> tvm.tirx.PrimFunc:
    """PrimFunc (P, Wt, corr, ycls, xcls, scale, bias[, slope][, res0, res1...], out5) with `residual` addends."""
    n, g, cog, oh, ow = geo.out5_shape
    kh, kw = geo.attrs.kernel_shape
    p = te.placeholder(geo.packed_shape, geo.word_dtype, "P")
    wt = te.placeholder((g, kh, kw, geo.qg, cog), geo.word_dtype, "Wt")
    corr = te.placeholder((n_ycls, n_xcls, g, cog), "int32", "corr")
    ycls = te.placeholder((oh,), "int32", "ycls")
    xcls = te.placeholder((ow,), "int32", "xcls")
    scale = te.placeholder((g, cog), "float32", "scale")
    bias = te.placeholder((g, cog), "float32", "bias")
    slope = te.placeholder((g, cog), "float32", "slope") if prelu else None
    res = tuple(te.placeholder(geo.out5_shape, "float32", f"res{k}") for k in range(int(residual)))
    out = conv_compute(p, wt, corr, ycls, xcls, scale, bias, slope, geo, res)
    args = [p, wt, corr, ycls, xcls, scale, bias] + ([slope] if prelu else []) + list(res) + [out]
    return te.create_prim_func(args)

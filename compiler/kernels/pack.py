"""Host-side (numpy) preparation of the binary conv's constant inputs, from schema weights.

Internal layout used by the kernels (the NCHW float boundary is kept by emit.py):
  packed activations P  uint32 [N, G*Qg, H+pt+pb, W+pl+pr]: word q of group g holds channels
      g*Cg + 32q + b as bit b (LSB first), bit 1 = sign -1; tail bits and border words are 0.
  weights Wt            uint32 [G, kh, kw, Qg, Cog], same bit order; tail bits 0.
  border correction     int32 corr [NY, NX, G, Cog], ycls int32 [OH], xcls int32 [OW].
A border word of 0 reads as +1 on every channel, so the "all taps" XNOR sum counts a padded tap as
sum_c w_c = Cg - 2*popcount(w_tap); corr[ycls[y], xcls[x]] subtracts exactly those taps, giving
PyTorch's zero padding (a padded tap contributes 0). Qg = ceil(Cg/32), Cg = C_in/G, Cog = C_out/G.
"""

from __future__ import annotations

import numpy as np

from dcpnas.errors import CompileError

from .reference import BinaryConvAttrs, unpack_weights

WORD_BITS = 32


def words_per_group(channels_per_group: int, word_bits: int = WORD_BITS) -> int:
    return -(-channels_per_group // word_bits)


def weights_to_words(w_bits: np.ndarray, attrs: BinaryConvAttrs, word_bits: int = WORD_BITS) -> np.ndarray:
    """Schema uint8 [Co, ceil(Cg/8), kh, kw] -> uint{word_bits} [G, kh, kw, Qg, Cog] (bits past Cg cleared).
    word_bits 32 (default) or 8 (the AVX2 byte-lane kernel)."""
    cg = attrs.channels_per_group
    w_pm = unpack_weights(w_bits, cg)  # validates dtype and shape; +-1 float
    co, _, kh, kw = w_pm.shape
    g, qg = attrs.group, words_per_group(cg, word_bits)
    if co % g:
        raise CompileError(f"binary conv: C_out {co} is not divisible by group {g}")
    bits = np.zeros((co, qg * word_bits, kh, kw), np.uint8)
    bits[:, :cg] = (w_pm < 0)
    b = np.packbits(bits, axis=1, bitorder="little")  # [co, qg*word_bits/8, kh, kw]
    dt = np.dtype(f"uint{word_bits}")
    words = np.ascontiguousarray(b.transpose(0, 2, 3, 1)).view(dt.newbyteorder("<")).astype(dt)  # [co, kh, kw, qg]
    return np.ascontiguousarray(words.reshape(g, co // g, kh, kw, qg).transpose(0, 2, 3, 4, 1))


def _out_of_range(n_out: int, stride: int, dil: int, pad: int, size: int, k: int) -> list[tuple[int, ...]]:
    """For each output index, the tuple of kernel taps that fall into the padding."""
    return [tuple(i for i in range(k) if not 0 <= o * stride + i * dil - pad < size) for o in range(n_out)]


def border_classes(attrs: BinaryConvAttrs, h: int, w: int):
    """-> (row classes, column classes): the distinct sets of kernel rows/columns that fall into padding."""
    oh, ow = attrs.out_hw(h, w)
    (kh, kw), (sh, sw), (dh, dw) = attrs.kernel_shape, attrs.strides, attrs.dilations
    pt, pl, _, _ = attrs.pads
    rows = _out_of_range(oh, sh, dh, pt, h, kh)
    cols = _out_of_range(ow, sw, dw, pl, w, kw)
    return rows, cols


def border_correction(w_bits: np.ndarray, attrs: BinaryConvAttrs, h: int, w: int):
    """-> (corr int32 [NY, NX, G, Cog], ycls int32 [OH], xcls int32 [OW]) for an h x w input."""
    cg = attrs.channels_per_group
    w_pm = unpack_weights(w_bits, cg).astype(np.int64)  # [co, cg, kh, kw]
    co, _, kh, kw = w_pm.shape
    g = attrs.group
    tap = w_pm.sum(axis=1).reshape(g, co // g, kh, kw)  # sum_c w_c per tap = Cg - 2 popcount
    rows, cols = border_classes(attrs, h, w)
    ykeys, xkeys = sorted(set(rows)), sorted(set(cols))
    corr = np.zeros((len(ykeys), len(xkeys), g, co // g), np.int64)
    for a, ry in enumerate(ykeys):
        for b, rx in enumerate(xkeys):
            for i in range(kh):
                for j in range(kw):
                    if i in ry or j in rx:
                        corr[a, b] += tap[:, :, i, j]
    ycls = np.array([ykeys.index(r) for r in rows], np.int32)
    xcls = np.array([xkeys.index(r) for r in cols], np.int32)
    return corr.astype(np.int32), ycls, xcls


def pack_activations_reference(x: np.ndarray, attrs: BinaryConvAttrs, in_scale=None, in_shift=None,
                               word_bits: int = WORD_BITS) -> np.ndarray:
    """numpy version of the packing kernel: float32 [N, C, H, W] -> uint{word_bits} P (layout above)."""
    x = np.asarray(x, np.float32)
    n, c, h, w = x.shape
    if in_scale is not None:
        x = x * np.asarray(in_scale, np.float32).reshape(1, c, 1, 1)
    if in_shift is not None:
        x = x + np.asarray(in_shift, np.float32).reshape(1, c, 1, 1)
    g, cg = attrs.group, attrs.channels_per_group
    qg = words_per_group(cg, word_bits)
    pt, pl, pb, pr = attrs.pads
    bits = np.zeros((n, g, qg * word_bits, h, w), np.uint8)
    bits[:, :, :cg] = (x < 0).reshape(n, g, cg, h, w)
    b = np.packbits(bits, axis=2, bitorder="little")  # [n, g, qg*word_bits/8, h, w]
    dt = np.dtype(f"uint{word_bits}")
    words = np.ascontiguousarray(np.moveaxis(b, 2, -1)).view(dt.newbyteorder("<")).astype(dt)  # [n, g, h, w, qg]
    words = np.moveaxis(words, -1, 2).reshape(n, g * qg, h, w)
    out = np.zeros((n, g * qg, h + pt + pb, w + pl + pr), dt)
    out[:, :, pt:pt + h, pl:pl + w] = words
    return out

"""Shared sizes of the kernels that work on a flat padded plane (depthwise_flat.py, the fp32 depthwise conv of
conv_flat.py, pool_flat.py): one (image, channel) plane per task, stored padded row after row (Hp x Wp), and
every flat position o = r * Wp + col of the rows the windows start in computed with contiguous vectors (a
position in the right border or between strided rows is computed and never read)."""

from __future__ import annotations

from dataclasses import dataclass


def pow2_at_most(n: int, cap: int) -> int:
    """The largest power of two <= min(n, cap) (LLVM splits a 14- or 7-lane vector into several)."""
    return min(cap, 1 << (n.bit_length() - 1))


def row_blocks(n: int, width: int) -> list[int]:
    """Starts of the vectors of `width` lanes that cover [0, n), the last one shifted back to end at n."""
    return [min(j * width, n - width) for j in range(-(-n // width))]


@dataclass(frozen=True)
class FlatPlan:
    """wp: padded width; blocks x vectors x lanes flat positions computed (>= the rows the windows start in,
    vectors per block <= max_vectors: the accumulators of a block stay in registers); buffer: elements of the
    padded plane buffer (all padded rows, and every position a computed window reaches)."""

    wp: int
    blocks: int
    vectors: int
    lanes: int
    buffer: int

    @property
    def computed(self) -> int:
        return self.blocks * self.vectors * self.lanes


def flat_plan(h: int, w: int, out_h: int, kernel, strides, dilations, pads, lanes: int,
              max_vectors: int) -> FlatPlan:
    (kh, kw), (sh, _), (dh, dw), (pt, pl, pb, pr) = kernel, strides, dilations, pads
    wp, hp = w + pl + pr, h + pt + pb
    n_vec = -(-((out_h - 1) * sh + 1) * wp // lanes)
    blocks = -(-n_vec // max_vectors)
    vectors = -(-n_vec // blocks)
    reach = (kh - 1) * dh * wp + (kw - 1) * dw
    buffer = -(-max(hp * wp, blocks * vectors * lanes + reach) // lanes) * lanes
    return FlatPlan(wp, blocks, vectors, lanes, buffer)

"""Binary convs on the tensor cores: an implicit GEMM of PTX `mma.sync.m16n8k256.row.col.s32.b1.b1.s32.{xor,and}.popc`.

GEMM view of the conv (groups of one only): rows m = (n, y, x) output pixels (M = N*OH*OW), columns = output
channels, K = the taps' packed words in (ry, rx, q) order, KW = kh*kw*Qg words, padded to a multiple of 8
(one MMA step = 8 words = 256 bits). A row's word kk is P[n, q, y*sh + ry*dh, x*sw + rx*dw] of the packed
input (the popcount kernels' layout, pack.py: adjacent lanes read adjacent pixels); B's word kk of column c is
Wt[0, ry, rx, q, c]. Padded words are 0 on both sides and add nothing.

- xor (sm_80/86/89, where BMMA.XOR is native): popc = sum popc(a ^ b), v = K - 2 popc, as the popcount kernels.
- and (sm_90: XOR there compiles to two BMMA.AND + six LOP3): with bits a, b (1 = -1),
  sum x*w = K - 2 popc(a) - 2 popc(b) + 4 popc(a & b). popc(b) per filter is folded into the border correction
  at compile time (fold_weight_popcount); popc(a) per row comes from one more MMA per 16-row tile against an
  all-ones B fragment (its accumulator lands in the same lanes and rows as the outputs': no shuffles).
Then v -= corr (zero padding, pack.py) and the epilogue of binary_conv.py (scale, bias, PReLU) is fused.

Work split: a warp computes MT x NT MMA tiles (16*MT pixels x 8*NT channels), fragments loaded from global
memory (L1); a block is WM warps along M. Not tuned on a GPU yet (no shared-memory staging, no double
buffering): correct-but-untuned. The index functions below are shared by the TIR kernel and the numpy model
(`model_conv`), which runs the same fragment assembly through a numpy model of the PTX fragment layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm.script import tirx as T

from .binary_conv import ConvGeometry

MMA_K_WORDS = 8  # 256 bits per MMA step
# rule (unmeasured on a GPU in this session): the tensor-core GEMM needs whole MMA tiles and enough work
# to fill the GPU; below this the popcount kernels (one thread per output) stay, which on an H200 already
# beat cuDNN fp16 at batch 1 (launch-bound, ~10 us). 2**28 1-bit MACs: every 3x3 layer of >= 64 channels at
# batch 16 on 28x28 / 14x14 / 7x7 maps, none of the batch-1 layers of the 6-cell networks.
MIN_ROWS, MIN_COLS, MIN_K_BITS, MIN_MACS = 256, 64, 256, 2**28


def bmma_op(target: Any) -> str:
    """The b1 MMA bit op a CUDA target runs natively: "xor" on sm_80..sm_89, "and" on sm_90, "" where the
    tensor cores have no b1 MMA (before sm_80; sm_100 and later emulate b1 with IMMA)."""
    from .targets import as_target

    t = as_target(target)
    if t.kind.name != "cuda":
        return ""
    arch = str(t.attrs.get("arch", ""))
    try:
        sm = int(arch.removeprefix("sm_").rstrip("af"))
    except ValueError:
        return ""
    if 80 <= sm < 90:
        return "xor"
    if sm == 90:
        return "and"
    return ""


def choose_mma(geo: ConvGeometry, target: Any) -> str:
    """The kernel rule: the b1 MMA conv ("xor"/"and") for dense convs (one group) of at least MIN_MACS 1-bit
    MACs whose GEMM has at least MIN_ROWS rows (batch x output pixels), MIN_COLS output channels and
    MIN_K_BITS bits of K, on a target with a native b1 MMA; "" (the popcount kernels) otherwise. Expected,
    not yet measured, to win there (benchmarks/cuda_check.py measures it)."""
    op = bmma_op(target)
    if not op or geo.g != 1 or geo.word_bits != 32:
        return ""
    oh, ow = geo.out_hw
    kh, kw = geo.attrs.kernel_shape
    if (geo.n * oh * ow < MIN_ROWS or geo.c_out < MIN_COLS or kh * kw * geo.cg < MIN_K_BITS
            or geo.binary_macs < MIN_MACS):
        return ""
    return op


@dataclass(frozen=True)
class BmmaTiles:
    mt: int  # m16 tiles per warp
    nt: int  # n8 tiles per warp
    wm: int  # warps per block (along M)

    @staticmethod
    def for_geometry(geo: ConvGeometry) -> BmmaTiles:
        return BmmaTiles(mt=2, nt=min(4, -(-geo.cog // 8)), wm=4)


def fold_weight_popcount(corr: np.ndarray, wt: np.ndarray) -> np.ndarray:
    """corr [NY, NX, G, Cog] + 2 popc(b) per filter (wt: uint32 [G, kh, kw, Qg, Cog]): the AND form's
    weight term, known at compile time."""
    bits = np.unpackbits(np.ascontiguousarray(wt).view(np.uint8), bitorder="little")
    pb = bits.reshape(wt.shape + (32,)).sum(axis=(1, 2, 3, 5), dtype=np.int64)  # [G, Cog]
    return (corr.astype(np.int64) + 2 * pb[None, None]).astype(np.int32)


# ---------------------------------------------------------------- index functions (TIR and numpy)
class _TirOps:
    min = staticmethod(lambda a, b: tvm.tirx.min(a, b))
    both = staticmethod(lambda a, b: tvm.tirx.all(a, b))
    select = staticmethod(lambda c, a, b: tvm.tirx.if_then_else(c, a, b))


class _NpOps:
    min = staticmethod(np.minimum)
    both = staticmethod(np.logical_and)
    select = staticmethod(np.where)


def _sizes(geo: ConvGeometry):
    oh, ow = geo.out_hw
    kh, kw = geo.attrs.kernel_shape
    kwords = kh * kw * geo.qg
    return geo.n * oh * ow, oh, ow, kw, kwords, -(-kwords // MMA_K_WORDS)


def a_row_offset(geo: ConvGeometry, row, ops):
    """(valid, offset): the flat index in P of GEMM row `row`'s first tap word (clamped in range). P's index
    of word kk of that row is this + a_k_offset(kk): the row and K parts separate, so the row part is
    computed once per kernel and the K part once per step."""
    m, oh, ow, _, _, _ = _sizes(geo)
    _, cq, hp, wp = geo.packed_shape
    (sh, sw) = geo.attrs.strides
    r = ops.min(row, m - 1)
    x, y, n = r % ow, (r // ow) % oh, r // (ow * oh)
    return row < m, (n * cq * hp + y * sh) * wp + x * sw


def a_k_offset(geo: ConvGeometry, kk, ops):
    """(valid, offset): the flat index in P of K word kk (tap ry, rx; word q) relative to a row's offset."""
    _, _, _, kw, kwords, _ = _sizes(geo)
    _, _, hp, wp = geo.packed_shape
    dh, dw = geo.attrs.dilations
    k = ops.min(kk, kwords - 1)
    tap, q = k // geo.qg, k % geo.qg
    return kk < kwords, (q * hp + (tap // kw) * dh) * wp + (tap % kw) * dw


def b_offset(geo: ConvGeometry, col, kk, ops):
    """(valid, offset): the flat index in Wt [1, kh, kw, Qg, Cog] of weight word kk of GEMM column `col`
    (K order (ry, rx, q) is Wt's, so the word is kk * Cog + col)."""
    _, _, _, _, kwords, _ = _sizes(geo)
    return ops.both(col < geo.cog, kk < kwords), ops.min(kk, kwords - 1) * geo.cog + ops.min(col, geo.cog - 1)


def a_frag(row0, lane, step, i):
    """GEMM (row, word) of A register i (0..3) of `lane` in the MMA tile at row0 (PTX fragment layout)."""
    return row0 + lane // 4 + 8 * (i % 2), step * MMA_K_WORDS + lane % 4 + 4 * (i // 2)


def b_frag(col0, lane, step, i):
    """GEMM (column, word) of B register i (0..1) of `lane` in the tile at col0."""
    return col0 + lane // 4, step * MMA_K_WORDS + lane % 4 + 4 * i


def c_frag(row0, col0, lane, i):
    """GEMM (row, column) of accumulator i (0..3) of `lane`."""
    return row0 + lane // 4 + 8 * (i // 2), col0 + (lane % 4) * 2 + i % 2


def tile_origin(tiles: BmmaTiles, bx, by, warp, mt, nt):
    """First GEMM row and column of MMA tile (mt, nt) of `warp` in block (bx, by)."""
    return (bx * tiles.wm + warp) * tiles.mt * 16 + mt * 16, by * tiles.nt * 8 + nt * 8


def grid(geo: ConvGeometry, tiles: BmmaTiles) -> tuple[int, int]:
    m = _sizes(geo)[0]
    return -(-m // (tiles.wm * tiles.mt * 16)), -(-geo.cog // (tiles.nt * 8))


# ---------------------------------------------------------------- the TIR kernel
def make_bmma_conv_func(geo: ConvGeometry, n_ycls: int, n_xcls: int, prelu: bool, op: str,
                        tiles: BmmaTiles | None = None) -> tvm.tirx.PrimFunc:
    """PrimFunc (P, Wt, corr, ycls, xcls, scale, bias[, slope], out5), the signature of
    binary_conv.make_conv_func; with op "and", corr must include fold_weight_popcount's term."""
    if op not in ("xor", "and") or geo.g != 1 or geo.word_bits != 32:
        raise ValueError(f"b1 MMA conv: op xor/and, one group, 32-bit words (got {op!r}, {geo})")
    tiles = tiles or BmmaTiles.for_geometry(geo)
    mt_, nt_, wm_ = tiles.mt, tiles.nt, tiles.wm
    m_rows, oh, ow, _, _, steps = _sizes(geo)
    kbits = geo.attrs.kernel_shape[0] * geo.attrs.kernel_shape[1] * geo.cg
    gx, gy = grid(geo, tiles)
    n_pa = mt_ * 4 if op == "and" else 1
    ops = _TirOps
    _, g, cog, _, _ = geo.out5_shape
    kh, kw = geo.attrs.kernel_shape

    def row_part(bx, by, warp, mt, lane, h):  # h: A registers i with i % 2 == h (rows g, g + 8)
        r, _ = a_frag(tile_origin(tiles, bx, by, warp, mt, 0)[0], lane, 0, h)
        return a_row_offset(geo, r, ops)

    def k_part(lane, s, h):  # h: A registers i with i // 2 == h (words t, t + 4)
        _, kk = a_frag(0, lane, s, 2 * h)
        return a_k_offset(geo, kk, ops)

    def b_load(Wf, bx, by, warp, nt, lane, s, i):
        c, kk = b_frag(tile_origin(tiles, bx, by, warp, 0, nt)[1], lane, s, i)
        valid, off = b_offset(geo, c, kk, ops)
        return ops.select(valid, Wf[off], T.uint32(0))

    def inside(bx, by, warp, mt, nt, lane, i):
        r, c = c_frag(*tile_origin(tiles, bx, by, warp, mt, nt), lane, i)
        return tvm.tirx.all(r < m_rows, c < cog)

    def out_index(bx, by, warp, mt, nt, lane, i):
        r, c = c_frag(*tile_origin(tiles, bx, by, warp, mt, nt), lane, i)
        return r // (ow * oh), 0, c, (r // ow) % oh, r % ow

    def out_value(acc, pa, corr, ycls, xcls, scale, bias, slope, bx, by, warp, mt, nt, lane, i):
        r, c = c_frag(*tile_origin(tiles, bx, by, warp, mt, nt), lane, i)
        a = acc[(mt * nt_ + nt) * 4 + i]
        v = kbits - 2 * a if op == "xor" else kbits - 2 * pa[mt * 4 + i] + 4 * a
        v = v - corr[ycls[(r // ow) % oh], xcls[r % ow], 0, c]
        o = scale[0, c] * v.astype("float32") + bias[0, c]
        return tvm.tirx.Select(o >= tvm.tirx.const(0, "float32"), o, o * slope[0, c]) if prelu else o

    is_and = op == "and"

    @T.prim_func
    def func(P: T.Buffer(geo.packed_shape, "uint32"), Wt: T.Buffer((g, kh, kw, geo.qg, cog), "uint32"),
             corr: T.Buffer((n_ycls, n_xcls, g, cog), "int32"), ycls: T.Buffer((oh,), "int32"),
             xcls: T.Buffer((ow,), "int32"), scale: T.Buffer((g, cog), "float32"), bias: T.Buffer((g, cog), "float32"),
             slope: T.Buffer((g, cog), "float32"), out: T.Buffer(geo.out5_shape, "float32")):
        T.func_attr({"tirx.noalias": True, "tir.is_scheduled": True})
        bx = T.launch_thread("blockIdx.x", gx)
        by = T.launch_thread("blockIdx.y", gy)
        warp = T.launch_thread("threadIdx.y", wm_)
        lane = T.launch_thread("threadIdx.x", 32)
        Pf = T.decl_buffer((int(np.prod(geo.packed_shape)),), "uint32", data=P.data)
        Wf = T.decl_buffer((kh * kw * geo.qg * cog,), "uint32", data=Wt.data)
        af = T.decl_buffer((mt_ * 4,), "uint32", scope="local")
        bf = T.decl_buffer((nt_ * 2,), "uint32", scope="local")
        ones = T.decl_buffer((2,), "uint32", scope="local")
        acc = T.decl_buffer((mt_ * nt_ * 4,), "int32", scope="local")
        pa = T.decl_buffer((n_pa,), "int32", scope="local")
        roff = T.decl_buffer((mt_ * 2,), "int32", scope="local")
        rok = T.decl_buffer((mt_ * 2,), "bool", scope="local")
        koff = T.decl_buffer((2,), "int32", scope="local")
        kok = T.decl_buffer((2,), "bool", scope="local")
        for i in T.unroll(mt_ * nt_ * 4):
            acc[i] = 0
        for i in T.unroll(n_pa):
            pa[i] = 0
        for i in T.unroll(2):
            ones[i] = T.uint32(0xFFFFFFFF)
        for mt in T.unroll(mt_):
            for h in T.unroll(2):
                ok_r, off_r = T.meta_var(row_part(bx, by, warp, mt, lane, h))
                rok[mt * 2 + h] = ok_r
                roff[mt * 2 + h] = off_r
        for s in T.serial(steps):
            for h in T.unroll(2):
                ok_k, off_k = T.meta_var(k_part(lane, s, h))
                kok[h] = ok_k
                koff[h] = off_k
            for mt in T.unroll(mt_):
                for i in T.unroll(4):
                    af[mt * 4 + i] = T.if_then_else(rok[mt * 2 + i % 2] and kok[i // 2],
                                                    Pf[roff[mt * 2 + i % 2] + koff[i // 2]], T.uint32(0))
            for nt in T.unroll(nt_):
                for i in T.unroll(2):
                    bf[nt * 2 + i] = b_load(Wf, bx, by, warp, nt, lane, s, i)
            for mt in T.unroll(mt_):
                for nt in T.unroll(nt_):
                    T.evaluate(T.ptx_legacy.mma("m16n8k256", "row", "col", "int1", "int1", "int32", af.data, mt * 4,
                                                bf.data, nt * 2, acc.data, (mt * nt_ + nt) * 4, False, op,
                                                dtype="int32"))
                if is_and:
                    T.evaluate(T.ptx_legacy.mma("m16n8k256", "row", "col", "int1", "int1", "int32", af.data, mt * 4,
                                                ones.data, 0, pa.data, mt * 4, False, op, dtype="int32"))
        for mt in T.unroll(mt_):
            for nt in T.unroll(nt_):
                for i in T.unroll(4):
                    if inside(bx, by, warp, mt, nt, lane, i):
                        out[out_index(bx, by, warp, mt, nt, lane, i)] = out_value(
                            acc, pa, corr, ycls, xcls, scale, bias, slope, bx, by, warp, mt, nt, lane, i)

    if not prelu:  # drop the unused slope parameter: the signature of make_conv_func without PReLU
        func = tvm.tirx.PrimFunc([p for p in func.params if p.name != "slope"], func.body, func.ret_type, func.attrs)
    return func


# ---------------------------------------------------------------- numpy model (no GPU needed)
def mma_model(af: np.ndarray, bf: np.ndarray, acc: np.ndarray, op: str) -> np.ndarray:
    """One `mma.sync.m16n8k256.row.col.s32.b1.b1.s32.<op>.popc` from the PTX ISA's fragment layout:
    af uint32 [32 lanes, 4], bf [32, 2], acc int32 [32, 4] -> the new accumulators. A register i of lane l holds
    row l//4 + 8*(i%2), bits 32*(l%4) + 128*(i//2) ..+31; B register i holds column l//4, the same bits of K;
    accumulator i holds row l//4 + 8*(i//2), column 2*(l%4) + i%2."""
    a = np.zeros((16, 8), np.uint32)
    b = np.zeros((8, 8), np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(4):
            a[g + 8 * (i % 2), t + 4 * (i // 2)] = af[lane, i]
        for i in range(2):
            b[g, t + 4 * i] = bf[lane, i]
    f = np.bitwise_xor if op == "xor" else np.bitwise_and
    w = f(a[:, None, :], b[None, :, :])  # [16, 8, 8 words]
    d = np.unpackbits(w.view(np.uint8), axis=-1).reshape(16, 8, -1).sum(-1, dtype=np.int64)
    out = acc.astype(np.int64).copy()
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(4):
            out[lane, i] += d[g + 8 * (i // 2), 2 * t + i % 2]
    return out.astype(np.int32)


def model_conv(geo: ConvGeometry, op: str, P, Wt, corr, ycls, xcls, scale, bias, slope=None,
               tiles: BmmaTiles | None = None) -> np.ndarray:
    """numpy model of make_bmma_conv_func, warp by warp, with the kernel's own index functions and
    mma_model: -> float32 out5 [N, 1, Cog, OH, OW]. For the tests (a GPU-free check of the fragment
    assembly, the AND correction and the epilogue against binary_conv2d_reference)."""
    tiles = tiles or BmmaTiles.for_geometry(geo)
    m_rows, oh, ow, _, kwords, steps = _sizes(geo)
    kbits = geo.attrs.kernel_shape[0] * geo.attrs.kernel_shape[1] * geo.cg
    out = np.zeros(geo.out5_shape, np.float32)
    lane = np.arange(32)
    ones = np.full((32, 2), 0xFFFFFFFF, np.uint32)
    gx, gy = grid(geo, tiles)
    pf, wf = np.ascontiguousarray(P).reshape(-1), np.ascontiguousarray(Wt).reshape(-1)
    for bx in range(gx):
        for by in range(gy):
            for warp in range(tiles.wm):
                acc = np.zeros((tiles.mt, tiles.nt, 32, 4), np.int32)
                pa = np.zeros((tiles.mt, 32, 4), np.int32)
                for s in range(steps):
                    af = np.zeros((tiles.mt, 32, 4), np.uint32)
                    bf = np.zeros((tiles.nt, 32, 2), np.uint32)
                    for mt in range(tiles.mt):
                        for i in range(4):
                            r, kk = a_frag(tile_origin(tiles, bx, by, warp, mt, 0)[0], lane, s, i)
                            ok_r, off_r = a_row_offset(geo, r, _NpOps)
                            ok_k, off_k = a_k_offset(geo, kk, _NpOps)
                            af[mt, :, i] = np.where(ok_r & ok_k, pf[off_r + off_k], 0)
                    for nt in range(tiles.nt):
                        for i in range(2):
                            c, kk = b_frag(tile_origin(tiles, bx, by, warp, 0, nt)[1], lane, s, i)
                            valid, off = b_offset(geo, c, kk, _NpOps)
                            bf[nt, :, i] = np.where(valid, wf[off], 0)
                    for mt in range(tiles.mt):
                        for nt in range(tiles.nt):
                            acc[mt, nt] = mma_model(af[mt], bf[nt], acc[mt, nt], op)
                        if op == "and":
                            pa[mt] = mma_model(af[mt], ones, pa[mt], op)
                for mt in range(tiles.mt):
                    for nt in range(tiles.nt):
                        for i in range(4):
                            r, c = c_frag(*tile_origin(tiles, bx, by, warp, mt, nt), lane, i)
                            for ln in np.nonzero((r < m_rows) & (c < geo.cog))[0]:
                                rr, cc = int(r[ln]), int(c[ln])
                                x, y, n = rr % ow, (rr // ow) % oh, rr // (ow * oh)
                                a = int(acc[mt, nt, ln, i])
                                v = kbits - 2 * a if op == "xor" else kbits - 2 * int(pa[mt, ln, i]) + 4 * a
                                v -= int(corr[ycls[y], xcls[x], 0, cc])
                                o = np.float32(scale[0, cc]) * np.float32(v) + np.float32(bias[0, cc])
                                if slope is not None and o < 0:
                                    o = o * np.float32(slope[0, cc])
                                out[n, 0, cc, y, x] = o
    return out

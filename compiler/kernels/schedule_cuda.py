"""CUDA schedules of the binary conv kernels (popcount lowers to __popc).

conv: one thread per output channel of a block of `tc` channels x `xt` pixels of one row (register tile
of xt accumulators; adjacent threads read adjacent weight words, coalesced); falls back to one thread
per output element when C_out per group is not a multiple of 32. pack: one thread per packed word, or
one lane per bit (a warp-shuffle sum) when there are few words.
In the channel form the block's window of packed input words is first staged in shared memory by all
its threads (TVM inserts the __syncthreads).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.s_tir import Schedule

from .binary_conv import ConvGeometry


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def schedule_conv_cuda(func: tvm.tirx.PrimFunc, geo: ConvGeometry, threads: int = 128,
                       blocks: tuple[str, str] = ("popc", "binconv_out"), shared_input: str | None = "P"):
    """Blocks as in schedule_cpu.schedule_conv_cpu (shared with the float conv). shared_input: the name of
    the input buffer whose per-block window (all words x the taps' rows x columns) is staged in shared
    memory by the block's threads together (channel form only)."""
    sch = Schedule(tvm.IRModule({"main": func}))
    pc = sch.get_sblock(blocks[0])
    ep = sch.get_sblock(blocks[1])
    acc = sch.cache_write(pc, 0, "local")
    n, g, y, x, c, ry, rx, rq = sch.get_loops(pc)
    if geo.cog % 32 == 0:
        tc = _largest_divisor(geo.cog, 128) if geo.cog % 64 else 64
        xt = _largest_divisor(geo.out_hw[1], 4)
        co, ci = sch.split(c, [None, tc])
        xo, xi = sch.split(x, [None, xt])
        sch.reorder(n, g, y, co, xo, ci, ry, rx, rq, xi)
        bx = sch.fuse(n, g, y, co, xo)
        sch.bind(bx, "blockIdx.x")
        sch.bind(ci, "threadIdx.x")
        sch.unroll(xi)
        sch.reverse_compute_at(acc, ci)
        reads = [r.source.name for r in sch.get(pc).reads]
        if shared_input in reads:
            sh = sch.cache_read(pc, reads.index(shared_input), "shared")
            sch.compute_at(sh, bx)
            window = sch.get_loops(sh)[1:]
            if not window:  # a one-word window (unit loops elided): nothing to share, read it directly
                return schedule_conv_cuda(func, geo, threads, blocks, shared_input=None)
            fused = sch.fuse(*window)
            _, t = sch.split(fused, [None, tc])
            sch.bind(t, "threadIdx.x")
    else:
        fused = sch.fuse(n, g, y, x, c)
        bx, tx = sch.split(fused, [None, threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.reverse_compute_at(acc, tx)
    sch.reverse_compute_inline(ep)
    sch.decompose_reduction(pc, ry)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def schedule_pack_cuda(func: tvm.tirx.PrimFunc, geo: ConvGeometry, threads: int = 128, lane_words: int = 16384):
    """One thread per packed word (coalesced NCHW reads, the bits in a loop), or, for fewer than
    `lane_words` words (small late layers, where a thread per word leaves most SMs idle), one lane per
    bit: the word is a cross-lane sum (bits are disjoint, so the sum is the OR), lowered to warp shuffles."""
    sch = Schedule(tvm.IRModule({"main": func}))
    pk = sch.get_sblock("pack")
    if int(np.prod(geo.packed_shape)) < lane_words:
        n, gq, y, x, b = sch.get_loops(pk)
        bits = int(sch.get(b).extent)
        fused = sch.fuse(n, gq, y, x)
        bx, ty = sch.split(fused, [None, max(1, threads // bits)])
        sch.bind(bx, "blockIdx.x")
        sch.bind(ty, "threadIdx.y")
        sch.bind(b, "threadIdx.x")
        return sch.mod["main"].with_attr("tir.is_scheduled", True)
    acc = sch.cache_write(pk, 0, "local")
    n, gq, y, x, b = sch.get_loops(pk)
    fused = sch.fuse(n, gq, y, x)
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    sch.reverse_compute_at(acc, tx)
    sch.unroll(b)
    sch.decompose_reduction(pk, b)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)

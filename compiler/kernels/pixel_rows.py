"""The k x k XNOR-popcount conv with output pixels of one row in the vector lanes (x86 AVX-512 VPOPCNTDQ).

The channel-vector form of schedule_cpu.py puts output channels in the lanes: its write-back to NCHW is a
scatter, one store per value, which costs about as much as the popcounts at 56x56x64 (a 3x3 conv with 64
input channels has 18 packed words per output). pointwise.py fixed that for unpadded 1x1 convs by putting
pixels in the lanes; this kernel does it for stride-1 convs of any kernel, padding and dilation: a task is
one output row y of `cn` output channels, its pixels covered by vectors of `lanes` consecutive columns
(the last one shifted back to end at OW: a few columns computed twice, with the same value). Per tap
(ry, rx) and packed word q, one unaligned vector load of the padded packed plane P[n, q, y + ry*dh,
x0 + rx*dw : + lanes] per column block, shared by the cn channels, and one broadcast weight word per
channel:  acc[c, lane] += popcount(P ^ Wt[ry, rx, q, c]).  Stride 1 means every load stays inside the
padded row (x0 + lanes - 1 + (kw-1)*dw <= Wp - 1).

Border correction (the zero border words stand for +1, binary_conv.conv_compute): corr[ycls[y], xcls[x], c]
with xcls loaded as a vector per column block and the class picked by a select chain over the few column
classes (no gather). The epilogue (scale, bias, PReLU, residual adds) then stores whole contiguous vectors
of NCHW output. Same parameters as binary_conv.make_conv_func, res and out NCHW (emit.conv_output_shape);
the numpy reference (reference.binary_conv2d_reference) checks it (tests/test_kernels.py).
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .binary_conv import ConvGeometry
from .epilogue import declare_conv_args, float_epilogue
from .schedule_cpu import CpuParams, tasks_per_chunk
from .targets import cpu_params, has_avx512_popcount

ACC_REGS = 16  # accumulator vectors per task (cn channels x column blocks); zmm0-31 also hold loads and words
MAX_CN = 8  # channels per task


def use_pixel_rows_kernel(geo: ConvGeometry, target) -> bool:
    """True for an ungrouped stride-1 binary conv of 32-bit words with a kernel larger than 1x1 or padding,
    at least one vector of output columns and C_out a multiple of 2, on a CPU target with a vector popcount
    of 32-bit lanes (the unpadded 1x1 convs take pointwise.py)."""
    a = geo.attrs
    ow = geo.out_hw[1]
    return (not geo.mma and geo.word_bits == 32 and geo.g == 1 and a.strides == (1, 1)
            and (a.kernel_shape != (1, 1) or any(a.pads)) and geo.cog % 2 == 0
            and has_avx512_popcount(target) and ow >= cpu_params(target).lanes)


def rows_tile(geo: ConvGeometry, lanes: int) -> tuple[int, int]:
    """-> (column blocks per row, channels per task cn): cn a divisor of C_out with cn * blocks <= ACC_REGS where
    a row has at most ACC_REGS blocks (OW <= 256 at 16 lanes); wider rows get cn = 1 and accumulators that no
    longer fit the registers (correct, slower)."""
    blocks = -(-geo.out_hw[1] // lanes)
    cap = max(1, ACC_REGS // blocks)
    cn = max(d for d in range(1, min(cap, MAX_CN) + 1) if geo.cog % d == 0)
    return blocks, cn


def make_pixel_rows_func(geo: ConvGeometry, n_ycls: int, n_xcls: int, prelu: bool, residual: int,
                         cpu: CpuParams, parallel: bool = True) -> tvm.tirx.PrimFunc:
    """PrimFunc (P, Wt, corr, ycls, xcls, scale, bias[, slope][, res0, res1...], out), scheduled
    (attr tir.is_scheduled); res and out NCHW [N, C_out, OH, OW]."""
    n, _, cog, oh, ow = geo.out5_shape
    (kh, kw), (dh, dw) = geo.attrs.kernel_shape, geo.attrs.dilations
    q, lanes = geo.qg, cpu.lanes
    _, _, hp, wp = geo.packed_shape
    blocks, cn = rows_tile(geo, lanes)
    cob = cog // cn
    tasks = n * cob * oh
    per = tasks_per_chunk(tasks)
    kt = kh * kw * geo.cg
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True, "tir.is_scheduled": True})
            p, wt, corr, ycls, xcls, scale, bias, slope, res, out = declare_conv_args(
                geo, (1, kh, kw, q, cog), (n_ycls, n_xcls, 1, cog), prelu, residual)
            pf = T.decl_buffer((n * q * hp * wp,), "uint32", data=p.data)
            wf = T.decl_buffer((kh * kw * q * cog,), "uint32", data=wt.data)
            of = T.decl_buffer((n * cog * oh * ow,), "float32", data=out.data)
            rf = [T.decl_buffer((n * cog * oh * ow,), "float32", data=r.data) for r in res]
            outer = T.parallel if parallel else T.serial
            with outer(0, tasks // per) as chunk:
                acc = T.alloc_local((cn * blocks * lanes,), "int32")
                with T.serial(0, per) as k:
                    t = chunk * per + k
                    i, c0, y = t // (cob * oh), t % (cob * oh) // oh * cn, t % oh
                    with T.unroll(0, cn * blocks) as a:
                        with T.vectorized(0, lanes) as lane:
                            T.buffer_store(acc, tirx.const(0, "int32"), [a * lanes + lane])
                    with T.serial(0, kh) as ry:
                        with T.serial(0, kw) as rx:
                            with T.serial(0, q) as rq:
                                with T.unroll(0, blocks) as b:
                                    x0 = tirx.min(b * lanes, ow - lanes)
                                    row = ((i * q + rq) * hp + y + ry * dh) * wp + x0 + rx * dw
                                    with T.unroll(0, cn) as ci:
                                        w = wf[((ry * kw + rx) * q + rq) * cog + c0 + ci]
                                        with T.vectorized(0, lanes) as lane:
                                            s = (ci * blocks + b) * lanes + lane
                                            T.buffer_store(acc, acc[s] + tirx.popcount(pf[row + lane] ^ w).astype("int32"),
                                                           [s])
                    yc = ycls[y]
                    with T.unroll(0, blocks) as b:
                        x0 = tirx.min(b * lanes, ow - lanes)
                        with T.unroll(0, cn) as ci:
                            c = c0 + ci
                            with T.vectorized(0, lanes) as lane:
                                xc = xcls[x0 + lane]
                                cv = corr[yc, 0, 0, c]
                                for m in range(1, n_xcls):  # the column class, without a gather
                                    cv = tirx.Select(xc == m, corr[yc, m, 0, c], cv)
                                v = kt - 2 * acc[(ci * blocks + b) * lanes + lane] - cv
                                idx = ((i * cog + c) * oh + y) * ow + x0 + lane
                                o = float_epilogue(v, scale[0, c], bias[0, c], slope[0, c] if prelu else None,
                                                   [r[idx] for r in rf])
                                T.buffer_store(of, o, [idx])
    return ib.get()

"""The 1x1 XNOR-popcount conv with pixels in the vector lanes (x86 with AVX-512 VPOPCNTDQ).

A dense 1x1 conv at stride 1 without padding reads each packed word plane P[n, q] and writes each output
plane out[n, c] as one contiguous run of H*W values (pack.py's layout, NCHW output). The channel-vector form
of schedule_cpu.py puts output channels in the lanes, so that its write-back is a strided scatter, one
store per value (measured on this project's 8 x 32 network shapes: 2.2-3.9x the time of this kernel). Here a
task computes `lanes` consecutive pixels x `cn` output channels: per packed word, one vector load of P
shared by the cn channels and one broadcast weight word per channel; the epilogue (correction, scale, bias,
PReLU, residual adds) stores whole vectors. A plane whose H*W is not a multiple of the lanes ends with a
block shifted back to end at H*W: it recomputes a few pixels of the block before it, with the same values,
so that no lane is masked or scalar.

Tasks run in parallel chunks, the accumulators allocated once per chunk (per task they would be a
TVMBackendAllocWorkspace call each). Same parameters and output as binary_conv.make_conv_func; the numpy
reference (reference.binary_conv2d_reference) checks both.
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

CHANNELS_PER_TASK = 4  # measured best on the 8 x 32 network's shapes (1-2 pixel vectors x 4-8 channels)


def use_pointwise_kernel(geo: ConvGeometry, target) -> bool:
    """True for a dense 1x1 conv, stride 1, no padding, 32-bit words, with at least one vector of pixels
    and C_out a multiple of CHANNELS_PER_TASK, on a CPU target with a vector popcount of 32-bit lanes."""
    a = geo.attrs
    oh, ow = geo.out_hw
    return (not geo.mma and geo.word_bits == 32 and geo.g == 1 and a.kernel_shape == (1, 1)
            and a.strides == (1, 1) and a.dilations == (1, 1) and not any(a.pads)
            and geo.cog % CHANNELS_PER_TASK == 0 and has_avx512_popcount(target)
            and oh * ow >= cpu_params(target).lanes)


def make_pointwise_func(geo: ConvGeometry, n_ycls: int, n_xcls: int, prelu: bool, residual: int,
                        cpu: CpuParams, parallel: bool = True) -> tvm.tirx.PrimFunc:
    """PrimFunc (P, Wt, corr, ycls, xcls, scale, bias[, slope][, res0, res1...], out), scheduled
    (attr tir.is_scheduled): the signature of binary_conv.make_conv_func, but res and out NCHW [N, C_out, OH, OW]
    (the same memory as [N, G, Cog, OH, OW]: the Relax graph needs no reshape around this kernel)."""
    n, g, cog, oh, ow = geo.out5_shape
    hw, q, lanes, cn = oh * ow, geo.qg, cpu.lanes, CHANNELS_PER_TASK
    if n_ycls != 1 or n_xcls != 1:
        raise ValueError("internal: a 1x1 conv without padding has one border class")
    blocks, cob = -(-hw // lanes), cog // cn
    tasks = n * cob * blocks
    per = tasks_per_chunk(tasks)  # the accumulators: registers, no buffer bound
    kt = geo.cg
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True, "tir.is_scheduled": True})
            p, wt, corr, _, _, scale, bias, slope, res, out = declare_conv_args(
                geo, (1, 1, 1, q, cog), (1, 1, 1, cog), prelu, residual)
            pf = T.decl_buffer((n * q * hw,), "uint32", data=p.data)
            wf = T.decl_buffer((q * cog,), "uint32", data=wt.data)
            of = T.decl_buffer((n * cog * hw,), "float32", data=out.data)
            rf = [T.decl_buffer((n * cog * hw,), "float32", data=r.data) for r in res]
            outer = T.parallel if parallel else T.serial
            with outer(0, tasks // per) as chunk:
                acc = T.alloc_local((cn * lanes,), "int32")
                with T.serial(0, per) as k:
                    t = chunk * per + k
                    i, c0 = t // (cob * blocks), t % (cob * blocks) // blocks * cn
                    s0 = tirx.min(t % blocks * lanes, hw - lanes)  # the last block ends at hw
                    with T.unroll(0, cn) as ci:
                        with T.vectorized(0, lanes) as lane:
                            T.buffer_store(acc, tirx.const(0, "int32"), [ci * lanes + lane])
                    with T.serial(0, q) as rq:
                        with T.unroll(0, cn) as ci:
                            w = wf[rq * cog + c0 + ci]
                            with T.vectorized(0, lanes) as lane:
                                a = ci * lanes + lane
                                x = pf[(i * q + rq) * hw + s0 + lane]
                                T.buffer_store(acc, acc[a] + tirx.popcount(x ^ w).astype("int32"), [a])
                    with T.unroll(0, cn) as ci:
                        c = c0 + ci
                        with T.vectorized(0, lanes) as lane:
                            v = kt - 2 * acc[ci * lanes + lane] - corr[0, 0, 0, c]
                            idx = (i * cog + c) * hw + s0 + lane
                            o = float_epilogue(v, scale[0, c], bias[0, c], slope[0, c] if prelu else None,
                                               [r[idx] for r in rf])
                            T.buffer_store(of, o, [idx])
    return ib.get()

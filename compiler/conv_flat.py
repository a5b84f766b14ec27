"""fp32 convs in flat layouts (CPU targets with 16 float lanes: AVX-512): the depthwise conv over a flat padded
plane, and the dense 1x1 conv with pixels in the vector lanes (make_flat_pointwise).

float_schedule.conv2d_nchw computes a depthwise conv per output row with a register tile of the row's
vectors (28 columns: two 14-lane vectors, each split by LLVM into 8 + 4 + 2), from a padded copy of the whole
input made by a separate pass: 2-12 GMAC/s on this project's shapes. Here one task is one (image, channel)
plane, as in kernels/depthwise_flat.py (the binary form) and kernels/flat.py:

  P    float32: x * in_scale + in_shift inside, 0 on the border, the padded plane row after row (a
       per-chunk buffer, zeroed once per chunk: tasks only write inside)
  acc  at every flat position o of the rows the windows start in:
       acc[o] = sum over taps t = (ry, rx) of w_t * P[o + ry*dh*Wp + rx*dw]
       (one expression per vector: a fused multiply-add with the tap's weight bound once per task, the
       accumulators of a block of vectors in registers)
  out  = acc * scale + bias, then PReLU, then + res (conv2d_nchw's epilogue), output (y, x) from flat
       position (y*sh) * Wp + x*sw (stride 2 computes every position of the rows it needs: 4x the MACs,
       still several times faster than the row tiles, see below).

Same PrimFunc parameters as conv2d_nchw (x, w [C,1,kh,kw], [in_scale, in_shift], [scale, bias], [slope], [res],
out). The sums run in the same tap order (ry, rx) with fused multiply-adds; the result is within float
rounding of conv2d_nchw's and of torch's (tests: rtol 1e-5).

The dense 1x1 conv (stride 1, no padding) is a GEMM over the H*W contiguous pixels of each plane; conv2d_nchw
tiles it by output rows (28 columns: two 14-lane vectors; 7 columns: one 7-lane vector) at 23-48 GMAC/s, the
pixels-in-lanes tile reaches 50-74 GMAC/s on the same shapes.

Measured (1 thread, us per call, these kernels vs conv2d_nchw): benchmarks/results/speed11/README.md.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from dcpnas.compiler.kernels.flat import flat_plan, pow2_at_most, row_blocks
from dcpnas.compiler.kernels.schedule_cpu import CpuParams, tasks_per_chunk

LANES = 16
MAX_VECTORS = 8  # accumulator registers per block of flat positions


def _conv_params(x_shape, w_shape, out_shape, in_affine: bool, bias: bool, prelu: bool, residual: bool):
    """Declare conv2d_nchw's PrimFunc parameters inside an IRBuilder prim_func, in its order:
    -> (x, w, in_scale, in_shift, scale, bias, slope, res, out), None for each one left out."""
    c, co = int(x_shape[1]), int(out_shape[1])
    f32 = lambda shape: T.buffer(tuple(int(v) for v in shape), "float32")  # noqa: E731
    x, w = T.arg("x", f32(x_shape)), T.arg("w", f32(w_shape))
    a_s, a_b = (T.arg("in_scale", f32((c,))), T.arg("in_shift", f32((c,)))) if in_affine else (None, None)
    sc, bi = (T.arg("scale", f32((co,))), T.arg("bias", f32((co,)))) if bias else (None, None)
    sl = T.arg("slope", f32((co,))) if prelu else None
    res = T.arg("res", f32(out_shape)) if residual else None
    return x, w, a_s, a_b, sc, bi, sl, res, T.arg("out", f32(out_shape))


def use_flat_depthwise(x_shape, w_shape, group: int, cpu: CpuParams | None) -> bool:
    """True for a depthwise conv (one input and one output channel per group) over planes of >= 16 pixels on
    a CPU target with 16 float lanes."""
    _, c, h, w = (int(v) for v in x_shape)
    co, cg = int(w_shape[0]), int(w_shape[1])
    return cpu is not None and cpu.lanes == LANES and group == c == co and cg == 1 and h * w >= LANES


def make_flat_depthwise(x_shape, w_shape, *, strides, pads, dilations, in_affine=False, bias=False,
                        prelu=False, residual=False, parallel_min: int = 16384) -> tvm.tirx.PrimFunc:
    """PrimFunc with conv2d_nchw's parameters, scheduled (attr tir.is_scheduled)."""
    n, c, h, w = (int(v) for v in x_shape)
    kh, kw = int(w_shape[2]), int(w_shape[3])
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilations, pads
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    plan = flat_plan(h, w, oh, (kh, kw), strides, dilations, pads, LANES, MAX_VECTORS)
    wp, vectors = plan.wp, plan.vectors
    taps = [(ry, rx) for ry in range(kh) for rx in range(kw)]
    offs = [ry * dh * wp + rx * dw for ry, rx in taps]
    vs, ve = pow2_at_most(w, LANES), pow2_at_most(ow, LANES)
    tasks = n * c
    per = tasks_per_chunk(tasks)
    parallel = n * c * oh * ow * len(taps) >= parallel_min and tasks // per > 1
    zero = tirx.const(0.0, "float32")
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True, "tir.is_scheduled": True})
            x, wt, a_s, a_b, sc, bi, sl, res, out = _conv_params(x_shape, (c, 1, kh, kw), (n, c, oh, ow), in_affine,
                                                                 bias, prelu, residual)
            with T.sblock("root"):  # Relax passes analyse PrimFuncs through a root block
                with (T.parallel if parallel else T.serial)(0, tasks // per) as chunk:
                    p = T.alloc_local((plan.buffer,), "float32")
                    acc = T.alloc_local((plan.computed,), "float32")
                    with T.serial(0, plan.buffer // LANES) as k:
                        with T.vectorized(0, LANES) as lane:
                            T.buffer_store(p, zero, [k * LANES + lane])
                    with T.serial(0, per) as k:
                        task = chunk * per + k
                        i, ch = task // c, task % c
                        # scalars bound once: inside the parallel body LLVM cannot tell the buffers apart
                        aff = (T.bind(a_s[ch]), T.bind(a_b[ch])) if in_affine else None
                        with T.serial(0, h) as y:
                            for x0 in row_blocks(w, vs):
                                with T.vectorized(0, vs) as lane:
                                    v = x[i, ch, y, x0 + lane]
                                    if aff:
                                        v = v * aff[0] + aff[1]  # conv2d_nchw's pad: multiply, then add
                                    T.buffer_store(p, v, [(y + pt) * wp + pl + x0 + lane])
                        wk = [T.bind(wt[ch, 0, ry, rx]) for ry, rx in taps]
                        with T.serial(0, plan.blocks) as b:
                            with T.unroll(0, vectors) as v:
                                with T.vectorized(0, LANES) as lane:
                                    a = b * (vectors * LANES) + v * LANES + lane
                                    total = p[a + offs[0]] * wk[0]
                                    for o_t, w_t in zip(offs[1:], wk[1:]):  # one expression: registers
                                        total = total + p[a + o_t] * w_t
                                    T.buffer_store(acc, total, [a])
                        ep = (T.bind(sc[ch]), T.bind(bi[ch])) if bias else None
                        slope = T.bind(sl[ch]) if prelu else None
                        with T.serial(0, oh) as y:
                            for x0 in row_blocks(ow, ve):
                                with T.vectorized(0, ve) as lane:
                                    v = acc[y * (sh * wp) + (x0 + lane) * sw]
                                    if ep:
                                        v = v * ep[0] + ep[1]
                                    if slope is not None:
                                        v = tirx.Select(v >= zero, v, v * slope)
                                    if res is not None:
                                        v = v + res[i, ch, y, x0 + lane]
                                    T.buffer_store(out, v, [i, ch, y, x0 + lane])
    return ib.get()



POINTWISE_TILES = ((8, 3), (6, 4), (4, 4), (4, 2), (2, 4), (1, 4))  # (output channels, pixel vectors) per tile


def use_flat_pointwise(x_shape, w_shape, *, strides, pads, group: int, cpu: CpuParams | None) -> bool:
    """True for a dense 1x1 conv at stride 1 without padding over planes of >= 16 pixels, on a CPU target with
    16 float lanes."""
    _, c, h, w = (int(v) for v in x_shape)
    return (cpu is not None and cpu.lanes == LANES and group == 1 and tuple(int(v) for v in w_shape[2:]) == (1, 1)
            and tuple(strides) == (1, 1) and not any(pads) and h * w >= LANES)


def make_flat_pointwise(x_shape, w_shape, *, in_affine=False, bias=False, prelu=False, residual=False,
                        tile=None, parallel_min: int = 16384) -> tvm.tirx.PrimFunc:
    """The dense 1x1 fp32 conv as a GEMM with pixels in the vector lanes: a task computes a tile of cb output
    channels x nv vectors of 16 consecutive pixels (POINTWISE_TILES: the first whose cb divides C_out), per
    input channel one vector load per pixel vector and one broadcast weight per output channel (cb x nv
    FMAs into registers); the epilogue stores whole vectors of NCHW output, a plane's last vector shifted
    back to end at H*W. conv2d_nchw's parameters; scheduled (attr tir.is_scheduled). tile: (cb, nv) to
    override (C_out % cb == 0)."""
    n, c, h, w = (int(v) for v in x_shape)
    co = int(w_shape[0])
    hw = h * w
    n_vec = -(-hw // LANES)
    cb, nv = tile or next((b, v) for b, v in POINTWISE_TILES if co % b == 0)
    if co % cb:
        raise ValueError(f"internal: tile of {cb} output channels for C_out {co}")
    nv = min(nv, n_vec)
    blocks = -(-n_vec // nv)
    nv = -(-n_vec // blocks)
    tasks = n * (co // cb) * blocks
    per = tasks_per_chunk(tasks)
    parallel = n * co * c * hw >= parallel_min and tasks // per > 1
    zero = tirx.const(0.0, "float32")
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True, "tir.is_scheduled": True})
            x, wt, a_s, a_b, sc, bi, sl, res, out = _conv_params(x_shape, (co, c, 1, 1), (n, co, h, w), in_affine,
                                                                 bias, prelu, residual)
            xf = T.decl_buffer((n * c * hw,), "float32", data=x.data)
            wf = T.decl_buffer((co * c,), "float32", data=wt.data)
            of = T.decl_buffer((n * co * hw,), "float32", data=out.data)
            rf = T.decl_buffer((n * co * hw,), "float32", data=res.data) if residual else None
            with T.sblock("root"):  # Relax passes analyse PrimFuncs through a root block
                with (T.parallel if parallel else T.serial)(0, tasks // per) as chunk:
                    acc = T.alloc_local((cb * nv * LANES,), "float32")
                    with T.serial(0, per) as k:
                        task = chunk * per + k
                        i, c0 = task // (co // cb * blocks), task // blocks % (co // cb) * cb
                        v0 = task % blocks * nv

                        def at(v, lane):
                            return tirx.min((v0 + v) * LANES, hw - LANES) + lane

                        with T.unroll(0, cb * nv) as a:
                            with T.vectorized(0, LANES) as lane:
                                T.buffer_store(acc, zero, [a * LANES + lane])
                        with T.serial(0, c) as ci:
                            with T.unroll(0, cb) as o:
                                with T.unroll(0, nv) as v:
                                    with T.vectorized(0, LANES) as lane:
                                        xv = xf[(i * c + ci) * hw + at(v, lane)]
                                        if in_affine:
                                            xv = xv * a_s[ci] + a_b[ci]
                                        a = (o * nv + v) * LANES + lane
                                        T.buffer_store(acc, acc[a] + xv * wf[(c0 + o) * c + ci], [a])
                        with T.unroll(0, cb) as o:
                            with T.unroll(0, nv) as v:
                                with T.vectorized(0, LANES) as lane:
                                    val = acc[(o * nv + v) * LANES + lane]
                                    if bias:
                                        val = val * sc[c0 + o] + bi[c0 + o]
                                    if prelu:
                                        val = tirx.Select(val >= zero, val, val * sl[c0 + o])
                                    idx = (i * co + c0 + o) * hw + at(v, lane)
                                    if rf is not None:
                                        val = val + rf[idx]
                                    T.buffer_store(of, val, [idx])
    return ib.get()

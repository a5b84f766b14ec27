"""Max and average pools over a flat padded plane, separable (CPU targets with 16 float lanes: AVX-512).

float_schedule.pool2d_nchw reduces the whole KH x KW window per output, in register tiles of rows. Here one
task is one (image, channel) plane, as kernels/depthwise_flat.py:

  P   float32: the padded plane row after row (Hp x Wp; -inf for max, 0 for average on the border), a
      per-chunk buffer filled once per chunk (tasks only write inside the border)
  Hs  float32 at every flat position o of the rows the window reaches: Hs[o] = red_{rx < KW} P[o + rx]
      (contiguous vectors along the flat plane: a row's right border positions are computed, never read)
  out[y, x] = red_{ry < KH} Hs[(y*sh + ry) * Wp + x*sw], / the taps inside the image (average), + res

so a 3x3 window costs 2 + 2 reductions per output instead of 8. The max is exact (the same values compared);
the average sums in another order than pool2d_reference's float64 sums (a few ulp; tests: rtol 1e-6).
Rows are covered by power-of-two vectors, the last one shifted back to end at the row's end.

Measured (1 thread, us per call, this kernel vs pool2d_nchw's tiles, loaded host): 3x3 stride 1 with a
residual, 32ch 28x28 avg 7.8 vs 13.0, max 7.5 vs 9.7; 64ch 14x14 avg 4.6 vs 5.6; but 128ch 7x7 avg 4.4 vs 3.6
and strided pools (64ch 28x28 max stride 2 18.4 vs 13.1): those stay on pool2d_nchw (use_flat_pool).
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from dcpnas.compiler.kernels.flat import pow2_at_most, row_blocks
from dcpnas.compiler.kernels.schedule_cpu import CpuParams, tasks_per_chunk

LANES = 16  # float32 lanes of the targets this kernel is for (AVX-512)


MIN_PIXELS = 196  # input pixels per plane: 14x14 measured faster here, 7x7 slower


def use_flat_pool(x_shape, kernel, strides, cpu: CpuParams | None) -> bool:
    """True on a CPU target with 16 float lanes for a stride-1 pool over planes of >= MIN_PIXELS pixels
    (strided columns are a gather per output vector here: measured slower than pool2d_nchw)."""
    _, _, h, w = (int(v) for v in x_shape)
    return (cpu is not None and cpu.lanes == LANES and h * w >= MIN_PIXELS and tuple(strides) == (1, 1)
            and kernel[0] * kernel[1] > 1)


def make_flat_pool(x_shape, *, kind: str, kernel, strides, pads, count_include_pad: bool, residual: bool,
                   parallel_min: int = 4096) -> tvm.tirx.PrimFunc:
    """PrimFunc (x, [res], out), scheduled (attr tir.is_scheduled): the signature of pool2d_nchw."""
    n, c, h, w = (int(v) for v in x_shape)
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = kernel, strides, pads
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    wp = w + pl + pr
    rows = (oh - 1) * sh + kh  # padded rows the windows reach
    h_len = -(-rows * wp // LANES) * LANES
    p_len = -(-max((h + pt + pb) * wp, h_len + kw - 1) // LANES) * LANES
    vs, ve = pow2_at_most(w, LANES), pow2_at_most(ow, LANES)
    red = tirx.max if kind == "max" else (lambda a, b: a + b)
    fill = tirx.const(float("-inf") if kind == "max" else 0.0, "float32")
    tasks = n * c
    per = tasks_per_chunk(tasks)
    parallel = n * c * oh * ow >= parallel_min and tasks // per > 1
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True, "tir.is_scheduled": True})
            x = T.arg("x", T.buffer((n, c, h, w), "float32"))
            res = T.arg("res", T.buffer((n, c, oh, ow), "float32")) if residual else None
            out = T.arg("out", T.buffer((n, c, oh, ow), "float32"))
            # a root block: Relax passes (RewriteDataflowReshape) analyse one-input PrimFuncs through it
            with T.sblock("root"):
                inv = None
                if kind != "max":  # 1 / taps inside, once per call (a vdivps per output vector costs ~10 cycles)
                    inv = T.alloc_buffer((oh * ow,), "float32")
                    with T.serial(0, oh) as y:
                        for x0 in row_blocks(ow, ve):
                            with T.vectorized(0, ve) as lane:
                                cnt = window_count(y, x0 + lane, h=h, w=w, kernel=kernel, strides=strides, pads=pads,
                                             count_include_pad=count_include_pad)
                                T.buffer_store(inv, tirx.const(1.0, "float32") / cnt, [y * ow + x0 + lane])
                with (T.parallel if parallel else T.serial)(0, tasks // per) as chunk:
                    p = T.alloc_local((p_len,), "float32")
                    hs = T.alloc_local((h_len,), "float32")
                    with T.serial(0, p_len // LANES) as k:
                        with T.vectorized(0, LANES) as lane:
                            T.buffer_store(p, fill, [k * LANES + lane])
                    with T.serial(0, per) as k:
                        task = chunk * per + k
                        i, ch = task // c, task % c
                        with T.serial(0, h) as y:
                            for x0 in row_blocks(w, vs):
                                with T.vectorized(0, vs) as lane:
                                    T.buffer_store(p, x[i, ch, y, x0 + lane], [(y + pt) * wp + pl + x0 + lane])
                        with T.serial(0, h_len // LANES) as k2:
                            with T.vectorized(0, LANES) as lane:
                                o = k2 * LANES + lane
                                v = p[o]
                                for rx in range(1, kw):
                                    v = red(v, p[o + rx])
                                T.buffer_store(hs, v, [o])
                        with T.serial(0, oh) as y:
                            for x0 in row_blocks(ow, ve):
                                with T.vectorized(0, ve) as lane:
                                    col = (x0 + lane) * sw
                                    v = hs[y * sh * wp + col]
                                    for ry in range(1, kh):
                                        v = red(v, hs[(y * sh + ry) * wp + col])
                                    if inv is not None:
                                        v = v * inv[y * ow + x0 + lane]
                                    if res is not None:
                                        v = v + res[i, ch, y, x0 + lane]
                                    T.buffer_store(out, v, [i, ch, y, x0 + lane])
    return ib.get()


def window_count(y, xx, *, h, w, kernel, strides, pads, count_include_pad):
    """float32 number of window taps inside the image at output (y, xx) (kh*kw with count_include_pad): the
    average pool's divisor, here and in float_schedule.pool2d_nchw."""
    (kh, kw), (sh, sw), (pt, pl, _, _) = kernel, strides, pads
    if count_include_pad:
        return tirx.const(float(kh * kw), "float32")
    y0, x0 = y * sh - pt, xx * sw - pl
    hy = tirx.min(y0 + kh, h) - tirx.max(y0, 0)
    wx = tirx.min(x0 + kw, w) - tirx.max(x0, 0)
    return (hy * wx).astype("float32")

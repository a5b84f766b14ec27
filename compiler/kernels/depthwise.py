"""Exact ±1 arithmetic kernel for binary convs with few input channels per group (depthwise above all).

With one channel per group a packed 32-bit word carries one useful bit, and the separate pack pass plus
the popcount conv cost twice the float depthwise conv. Here instead (one PrimFunc, no packing):

  sgn  [N, C, Hp, Wp] float32: +1 / -1 = sign(x*in_scale + in_shift) inside, 0 on the zero border
       (computed per task into a local buffer: the rows of one task's channels, never a tensor in memory)
  acc  [N, Co, OH, OW] = sum_{rc < Cg, taps} sgn[g(co)*Cg + rc] * Wpm[co, rc, ry, rx]  (Wpm: float32 ±1)
  out  = scale * acc + bias, then PReLU, then + res (residual add)              (same epilogue as binconv)

Sums of at most kh*kw*Cg terms of ±1 are exact in float32 (< 2^24), so the result equals the XNOR kernel
and binary_conv2d_reference bit for bit (same epilogue expression). PrimFunc parameters:
(x [N,C,H,W], [in_scale [C], in_shift [C]], Wpm [Co,Cg,kh,kw], scale [Co], bias [Co], [slope [Co]],
[res0, res1... [N,Co,OH,OW]], out [N,Co,OH,OW]) (NCHW out: no reshape call in the Relax graph).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule

from .binary_conv import ConvGeometry, input_placeholders
from .depthwise_flat import make_flat_func, use_flat_kernel
from .reference import unpack_weights
from .schedule_cpu import CpuParams, _largest_divisor, _vectorize, chunk_tasks, row_tile, rows_per_task, vector_plan
from .shapes import geometry
from .shapes import per_channel as _vec
from .targets import as_target, cpu_params, family

# Largest input channels per group of a 1x1 conv routed to this kernel (emit.py). Measured on x86-avx512
# (znver4 target), 1 thread, loaded machine, ms pm1 vs pack+XNOR: depthwise 3x3 8x28x28 0.012 vs 0.040,
# 5x5 dil 2 stride 2 0.019 vs 0.070, 130x7x7 0.015 vs 0.14; 1x1 8->8 28x28 0.005 vs 0.006-0.010,
# 16->16 14x14 0.0048 vs 0.0045, 32->32 7x7 0.0057 vs 0.0020; dense 3x3 with 2 or 4 input channels
# 0.021/0.037 vs 0.017/0.019 (XNOR wins).
SMALL_CG_1X1 = 8


def use_pm1_kernel(geo: ConvGeometry) -> bool:
    """True when the ±1 arithmetic kernel is the faster lowering of this binary conv: one input channel
    per group (depthwise), or a 1x1 conv with at most SMALL_CG_1X1 channels per group."""
    kh, kw = geo.attrs.kernel_shape
    return geo.cg == 1 or (geo.cg <= SMALL_CG_1X1 and kh * kw == 1)


def pm1_weights(w_bits: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """schema uint8 [C_out, ceil(Cg/8), kh, kw] -> float32 ±1 [C_out, Cg, kh, kw]."""
    return np.ascontiguousarray(unpack_weights(np.asarray(w_bits), geo.cg), np.float32)


def make_pm1_func(geo: ConvGeometry, affine: bool, prelu: bool, owp: int | None = None,
                  residual: int = 0, full_width: bool = True) -> tvm.tirx.PrimFunc:
    """The unscheduled PrimFunc (parameters: module doc); blocks "sgn", "pmconv", "pmconv_out".
    "pmconv" runs along W at stride 1 (full resolution) whatever the conv's stride: a strided conv takes
    every sw-th column in the epilogue, so that every load of the sign plane is contiguous (strided loads
    of 16 lanes are 16 scalar loads or a gather, once per tap; this subsampling is once per output).
    full_width=False: "pmconv" at the conv's stride (one thread per output on CUDA, where loads are scalar).
    owp: columns computed per output row (>= OW, or (OW-1)*sw+1 with full_width; the extra ones read zero
    signs and are never stored)."""
    n, co_, (oh, ow) = geo.n, geo.c_out, geo.out_hw
    (kh, kw), (sh, sw), (dh, dw) = geo.attrs.kernel_shape, geo.attrs.strides, geo.attrs.dilations
    csw = 1 if full_width else sw  # column stride of "pmconv"; the epilogue takes every (sw/csw)-th column
    owf = (ow - 1) * (sw // csw) + 1
    owp = owf if owp is None else max(owp, owf)
    owp = -(-owp // (sw // csw)) * (sw // csw)
    pt, pl, pb, pr = geo.attrs.pads
    cg, cog = geo.cg, geo.cog
    x, s, t, args = input_placeholders(geo, affine)
    one, mone, zero = (tvm.tirx.const(v, "float32") for v in (1.0, -1.0, 0.0))

    def sign(i, c, y, xx):
        inside = tvm.tirx.all(y >= pt, y < pt + geo.h, xx >= pl, xx < pl + geo.w)
        # only the load is conditional (a masked vector load); in_scale/in_shift stay scalar broadcasts
        # (inside the condition they became one gather per vector)
        v = tvm.tirx.if_then_else(inside, x[i, c, y - pt, xx - pl], zero)
        if affine:
            v = v * s[c] + t[c]  # as pack_compute and the BatchNorm: multiply, then add
        return tvm.tirx.Select(inside, tvm.tirx.Select(v < 0, mone, one), zero)

    wq = max(geo.w + pl + pr, (owp - 1) * csw + (kw - 1) * dw + 1)
    sgn = te.compute((geo.n, geo.c_in, geo.h + pt + pb, wq), sign, name="sgn")
    wpm = te.placeholder((co_, cg, kh, kw), "float32", "Wpm")
    rc, ry, rx = te.reduce_axis((0, cg), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def tap_sum(i, c, y, col):
        return te.sum(sgn[i, (c // cog) * cg + rc, y * sh + ry * dh, col * csw + rx * dw] * wpm[c, rc, ry, rx],
                      axis=[rc, ry, rx])

    sub = sw // csw
    if sub == 1:
        acc = te.compute((n, co_, oh, owp), tap_sum, name="pmconv")
        taken = lambda i, c, y, xx: acc[i, c, y, xx]  # noqa: E731
    else:  # [.., owp/sub, sub]: same memory as [.., owp]; the epilogue reads phase 0 (an affine access)
        acc = te.compute((n, co_, oh, owp // sub, sub), lambda i, c, y, q, ph: tap_sum(i, c, y, q * sub + ph),
                         name="pmconv")
        taken = lambda i, c, y, xx: acc[i, c, y, xx, 0]  # noqa: E731
    scale = te.placeholder((co_,), "float32", "scale")
    bias = te.placeholder((co_,), "float32", "bias")
    slope = te.placeholder((co_,), "float32", "slope") if prelu else None

    def epilogue(i, c, y, xx):
        o = scale[c] * taken(i, c, y, xx) + bias[c]
        if slope is not None:
            o = tvm.tirx.Select(o >= 0, o, o * slope[c])
        for r in res:
            o = o + r[i, c, y, xx]
        return o

    res = tuple(te.placeholder((n, co_, oh, ow), "float32", f"res{k}") for k in range(int(residual)))
    out = te.compute((n, co_, oh, ow), epilogue, name="pmconv_out")
    args += [wpm, scale, bias] + ([slope] if prelu else []) + list(res) + [out]
    return te.create_prim_func(args)


def schedule_pm1_cpu(func: tvm.tirx.PrimFunc, geo: ConvGeometry, cpu: CpuParams, parallel_min: int = 16384,
                     row_cap: int = 8):
    """x86 / aarch64: tasks of (image, block of cb output channels of one group, block of rows), parallel
    when the conv has >= parallel_min MACs; each task computes the signs it reads (its group's channels x
    its rows) into a local buffer, then register tiles of cb output channels x R output rows (row_tile,
    at most row_cap) x one row of vectors of ji pixels, taps unrolled; the epilogue is fused into the
    tile's write-back."""
    co_, (oh, ow) = geo.c_out, geo.out_hw
    kh, kw = geo.attrs.kernel_shape
    sch = Schedule(tvm.IRModule({"main": func}))
    sg, pc, ep = sch.get_sblock("sgn"), sch.get_sblock("pmconv"), sch.get_sblock("pmconv_out")
    loops = sch.get_loops(pc)
    if len(loops) == 8:  # strided: [.., q, phase] -> one full-resolution column loop
        sch.fuse(loops[3], loops[4])
    owp = int(sch.get(sch.get_loops(pc)[3]).extent)
    ji = vector_plan(owp, cpu.lanes)[0]
    ji = ji if owp % ji == 0 else _largest_divisor(owp, cpu.lanes)
    n_jo = owp // ji
    budget = 16 if cpu.lanes >= 16 else 12
    cb = next((b for b in (8, 4, 2, 1) if geo.cog % b == 0 and b * n_jo <= budget), 1)
    rt = rows_per_task(oh, geo.n * (co_ // cb))
    r = row_tile(rt, cb * n_jo, budget, row_cap)
    n, c, y, x, rc, ry, rx = sch.get_loops(pc)
    coo, coi = sch.split(c, [None, cb])
    yo, yr, yi = sch.split(y, [None, rt // r, r])
    jo, jv = sch.split(x, [n_jo, ji])
    sch.reorder(n, coo, yo, yr, rc, ry, rx, coi, yi, jo, jv)
    outer = sch.fuse(n, coo, yo)
    macs = geo.n * co_ * oh * ow * geo.cg * kh * kw
    # parallel chunks of tasks, each computing the signs of all its tasks first (schedule_cpu.chunk_tasks)
    rows_in = (rt - 1) * geo.attrs.strides[0] + (kh - 1) * geo.attrs.dilations[0] + 1
    sg_width = int(sch.get(sch.get_loops(sg)[-1]).extent)
    par, outer = chunk_tasks(sch, outer, 4 * geo.cg * cb * rows_in * sg_width)
    if macs >= parallel_min and int(sch.get(par).extent) > 1:
        sch.parallel(par)
    sch.reverse_compute_at(ep, yr)
    sch.set_scope(pc, 0, "local")  # the [cb, R, OW] accumulator tile lives in registers
    sch.unroll(coi)
    sch.unroll(yi)
    sch.unroll(jo)
    sch.unroll(ry)
    sch.unroll(rx)
    _vectorize(sch, jv)
    init = sch.decompose_reduction(pc, rc)
    _vectorize(sch, sch.get_loops(init)[-1])
    el = sch.get_loops(ep)
    _vectorize(sch, el[-1])
    sch.compute_at(sg, par)
    sl = sch.get_loops(sg)
    wp = int(sch.get(sl[-1]).extent)
    _, v = sch.split(sl[-1], [None, _largest_divisor(wp, 4 * cpu.lanes)])
    _vectorize(sch, v)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def schedule_pm1_cuda(func: tvm.tirx.PrimFunc, geo: ConvGeometry, threads: int = 128):
    """CUDA: one thread per output element, the sign computed inline in the loads."""
    sch = Schedule(tvm.IRModule({"main": func}))
    sch.compute_inline(sch.get_sblock("sgn"))
    pc, ep = sch.get_sblock("pmconv"), sch.get_sblock("pmconv_out")
    acc = sch.cache_write(pc, 0, "local")
    n, c, y, x, rc, ry, rx = sch.get_loops(pc)
    fused = sch.fuse(n, c, y, x)
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    sch.unroll(ry)
    sch.unroll(rx)
    sch.reverse_compute_at(acc, tx)
    sch.reverse_compute_inline(ep)
    sch.decompose_reduction(pc, rc)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def pm1_func(geo: ConvGeometry, target: Any, *, affine: bool, prelu: bool, schedule: bool = True,
             residual: int = 0):
    """The ±1 conv PrimFunc, scheduled for `target` (attr tir.is_scheduled) unless schedule=False."""
    if family(target) == "cuda":
        f = make_pm1_func(geo, affine, prelu, residual=residual, full_width=False)
        if not schedule:
            return f
        with as_target(target):
            return schedule_pm1_cuda(f, geo)
    if schedule and use_flat_kernel(geo, target):  # int8 sums over the flat sign plane (depthwise_flat.py)
        return make_flat_func(geo, affine, prelu, residual)
    return float_lanes_func(geo, target, affine=affine, prelu=prelu, schedule=schedule, residual=residual)


def float_lanes_func(geo: ConvGeometry, target: Any, *, affine: bool, prelu: bool, schedule: bool = True,
                     residual: int = 0):
    """This module's CPU form (float32 lanes, register tiles), whatever use_flat_kernel says."""
    cpu = cpu_params(target)
    # padded rows pay off when the sign plane has a border anyway; a 1x1 conv measured 2x slower with them
    kh, kw = geo.attrs.kernel_shape
    owf = (geo.out_hw[1] - 1) * geo.attrs.strides[1] + 1
    owp = vector_plan(owf, cpu.lanes)[1] if kh * kw > 1 or any(geo.attrs.pads) else None
    f = make_pm1_func(geo, affine, prelu, owp, residual)
    return schedule_pm1_cpu(f, geo, cpu) if schedule else f


class Pm1ConvModule:
    """One compiled ±1 conv (function "pm1conv") for fixed shapes and weights, for tests and timing.

    x_shape: (N, C_in, H, W); w_bits: schema uint8 weights; scale/bias/prelu: [C_out];
    in_affine: the kernel takes in_scale/in_shift [C_in].
    """

    def __init__(self, x_shape, w_bits, scale, bias, attrs, target: Any, *, prelu=None, in_affine: bool = False,
                 schedule: bool = True):
        self.geo = geometry(x_shape, w_bits, attrs, None)
        self.target = as_target(target)
        self.in_affine = in_affine
        f = pm1_func(self.geo, target, affine=in_affine, prelu=prelu is not None, schedule=schedule)
        self.ir_module = tvm.IRModule({"pm1conv": f.with_attr("global_symbol", "pm1conv")})
        geo = self.geo
        self.consts = [pm1_weights(w_bits, geo), _vec(scale, geo.c_out, "scale"), _vec(bias, geo.c_out, "bias", 0.0)]
        if prelu is not None:
            self.consts.append(_vec(prelu, geo.c_out, "prelu"))
        with self.target:
            self.executable = tvm.compile(self.ir_module, target=self.target)
        self._rt = None

    def export(self, path, cross_compiler: str | None = None) -> str:
        """Write the compiled module as a shared library (e.g. cross_compiler="aarch64-linux-gnu-gcc")."""
        from .targets import export_library

        return export_library(self.executable, path, cross_compiler, "one kernel")

    def device(self):
        return tvm.cuda(0) if self.target.kind.name == "cuda" else tvm.cpu()

    def arrays(self, x: np.ndarray, in_scale=None, in_shift=None) -> list[np.ndarray]:
        """numpy arguments of pm1conv (output zero-filled)."""
        a = [np.ascontiguousarray(x, np.float32)]
        if self.in_affine:
            a += [np.asarray(in_scale, np.float32).reshape(-1), np.asarray(in_shift, np.float32).reshape(-1)]
        return a + self.consts + [np.zeros(self.geo.out_shape, np.float32)]

    def _args(self, x, in_scale, in_shift):
        if self._rt is None:
            self._rt = self.executable.jit()
        return [tvm.runtime.tensor(a, self.device()) for a in self.arrays(x, in_scale, in_shift)]

    def run(self, x: np.ndarray, in_scale=None, in_shift=None) -> np.ndarray:
        """Run on this machine (CPU, or its GPU for a CUDA target): float32 NCHW in, float32 [N, C_out, OH, OW] out."""
        args = self._args(x, in_scale, in_shift)
        self._rt["pm1conv"](*args)
        return args[-1].numpy()

    def time_ms(self, x: np.ndarray, number: int = 50, repeat: int = 7, in_scale=None, in_shift=None,
                stat: str = "median") -> float:
        """ms per call on the local CPU: median (or min, stat="min") over `repeat` runs of `number` calls."""
        args = self._args(x, in_scale, in_shift)
        ev = self._rt.time_evaluator("pm1conv", self.device(), number=number, repeat=repeat, min_repeat_ms=20)
        res = ev(*args).results
        return float(np.min(res) if stat == "min" else np.median(res)) * 1e3

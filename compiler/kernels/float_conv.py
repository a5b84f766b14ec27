"""Hand-scheduled fp32 conv2d for TVM 0.27 (NCHW in and out), for the float parts of a network and as the
benchmarks' TVM fp32 baseline. TVM 0.27's default Relax pipeline leaves convs unscheduled (~10x slower).

Same structure as the binary conv: a register tile of output pixels x output channels (vector FMAs on a
broadcast input value), zero padding materialised by a small parallel "pad" block, bias fused into the
NCHW write-back. Weights are re-laid out as [G, Cog/cb, kh, kw, Cg, cb] with cb the tile's channel block,
so that one block's weights are contiguous, and blocks of output channels are the outer parallel loop
(a block's weights stay in cache across all rows: 3x faster at 7x7x512). Reference: torch conv2d.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, te
from tvm.s_tir import Schedule

from dcpnas.errors import CompileError

from .binary_conv import ConvGeometry
from .reference import BinaryConvAttrs as ConvAttrs
from .schedule_cpu import _vectorize, conv_tile, schedule_conv_cpu
from .schedule_cuda import schedule_conv_cuda
from .targets import as_target, cpu_params, family


def plan(geo: ConvGeometry, target: Any) -> tuple[int, tuple | None]:
    """-> (cb, CPU tile or None): the weight channel block and the register tile used for `target`."""
    if family(target) == "cuda":
        return geo.cog, None
    tile = conv_tile(geo, cpu_params(target))
    return (tile[1] * tile[2] if tile[0] == "channel" else 1), tile


def float_weights(w: np.ndarray, geo: ConvGeometry, cb: int) -> np.ndarray:
    """float [Co, Cg, kh, kw] -> float32 [G, Cog/cb, kh, kw, Cg, cb]."""
    w = np.asarray(w, np.float32)
    kh, kw = geo.attrs.kernel_shape
    if w.shape != (geo.c_out, geo.cg, kh, kw):
        raise CompileError(f"float conv: weight shape {w.shape} != {(geo.c_out, geo.cg, kh, kw)}")
    return np.ascontiguousarray(w.reshape(geo.g, geo.cog // cb, cb, geo.cg, kh, kw).transpose(0, 1, 4, 5, 3, 2))


def make_float_conv_func(geo: ConvGeometry, cb: int) -> tvm.tirx.PrimFunc:
    """PrimFunc (x [N,C,H,W], Wf [G,Cog/cb,kh,kw,Cg,cb], bias [G,Cog], out5 [N,G,Cog,OH,OW])."""
    n, g, cog, oh, ow = geo.out5_shape
    (kh, kw), (sh, sw), (dh, dw) = geo.attrs.kernel_shape, geo.attrs.strides, geo.attrs.dilations
    pt, pl, pb, pr = geo.attrs.pads
    cg = geo.cg
    x = te.placeholder((geo.n, geo.c_in, geo.h, geo.w), "float32", "x")
    wf = te.placeholder((g, cog // cb, kh, kw, cg, cb), "float32", "Wf")
    bias = te.placeholder((g, cog), "float32", "bias")
    if any(geo.attrs.pads):
        xp = te.compute((geo.n, geo.c_in, geo.h + pt + pb, geo.w + pl + pr), lambda i, c, y, xx: tvm.tirx.if_then_else(
            tvm.tirx.all(y >= pt, y < pt + geo.h, xx >= pl, xx < pl + geo.w), x[i, c, y - pt, xx - pl],
            tvm.tirx.const(0.0, "float32")), name="pad")
    else:
        xp = x
    ry, rx, rc = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, cg), "rc")
    acc = te.compute((n, g, oh, ow, cog), lambda i, gi, y, xx, c: te.sum(
        xp[i, gi * cg + rc, y * sh + ry * dh, xx * sw + rx * dw] * wf[gi, c // cb, ry, rx, rc, c % cb], axis=[ry, rx, rc]),
        name="fconv")
    out = te.compute((n, g, cog, oh, ow), lambda i, gi, c, y, xx: acc[i, gi, y, xx, c] + bias[gi, c],
                     name="fconv_out")
    return te.create_prim_func([x, wf, bias, out])


def schedule_float_conv(func: tvm.tirx.PrimFunc, geo: ConvGeometry, target: Any) -> tvm.tirx.PrimFunc:
    """Schedule make_float_conv_func(geo, plan(geo, target)[0])'s PrimFunc for a CPU or CUDA target."""
    fam = family(target)
    pads = any(geo.attrs.pads)
    if fam == "cuda":
        with as_target(target):
            f = schedule_conv_cuda(func, geo, blocks=("fconv", "fconv_out"))
            if pads:
                sch = Schedule(tvm.IRModule({"main": f}))
                sch.compute_inline(sch.get_sblock("pad"))
                f = sch.mod["main"]
            return f
    f = schedule_conv_cpu(func, geo, cpu_params(target), blocks=("fconv", "fconv_out"), tile=plan(geo, target)[1],
                          co_outer=True)
    if pads:
        sch = Schedule(tvm.IRModule({"main": f}))
        loops = sch.get_loops(sch.get_sblock("pad"))
        sch.parallel(sch.fuse(*loops[:3]))
        _vectorize(sch, loops[3]) if geo.w + geo.attrs.pads[1] + geo.attrs.pads[3] <= 64 else None
        f = sch.mod["main"]
    return f.with_attr("tir.is_scheduled", True)


def float_conv_geometry(x_shape, w_shape, attrs: ConvAttrs) -> ConvGeometry:
    n, c, h, w = (int(s) for s in x_shape)
    if c != attrs.channels_in or len(w_shape) != 4 or w_shape[0] % attrs.group:
        raise CompileError(f"float conv: input {tuple(x_shape)} / weight {tuple(w_shape)} do not fit {attrs}")
    return ConvGeometry(n, c, h, w, int(w_shape[0]), attrs)


def emit_float_conv2d(bb: relax.BlockBuilder, x: relax.Expr, w: np.ndarray, bias: np.ndarray | None,
                      attrs: ConvAttrs, target: Any) -> relax.Expr:
    """Emit a scheduled fp32 conv (call_tir): x float32 [N, C, H, W] (static) -> float32 [N, Co, OH, OW].
    w: float [Co, C/group, kh, kw]; bias: [Co] or None; attrs: the conv's attributes (channels_in = C)."""
    shape = [int(s) for s in x.ty.shape]
    geo = float_conv_geometry(shape, np.shape(w), attrs)
    cb = plan(geo, target)[0]
    f = schedule_float_conv(make_float_conv_func(geo, cb), geo, target)
    gv = bb.add_func(f.without_attr("global_symbol"), "dcpnas_float_conv")
    b = np.zeros(geo.c_out, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(-1)
    y5 = bb.emit(relax.call_tir(gv, [x, relax.const(float_weights(w, geo, cb)), relax.const(b.reshape(geo.g, geo.cog))],
                                relax.TensorType(geo.out5_shape, "float32")))
    return bb.emit(relax.op.reshape(y5, geo.out_shape))


class FloatConvModule:
    """A compiled fp32 conv for fixed shapes (function "fconv"), for tests and benchmarks (local CPU)."""

    def __init__(self, x_shape, w: np.ndarray, bias, attrs: ConvAttrs, target: Any, schedule: bool = True):
        self.geo = float_conv_geometry(x_shape, np.shape(w), attrs)
        cb = plan(self.geo, target)[0]
        f = make_float_conv_func(self.geo, cb)
        if schedule:
            f = schedule_float_conv(f, self.geo, target)
        self.target = as_target(target)
        with self.target:
            self.executable = tvm.compile(tvm.IRModule({"fconv": f.with_attr("global_symbol", "fconv")}),
                                          target=self.target)
        b = np.zeros(self.geo.c_out, np.float32) if bias is None else np.asarray(bias, np.float32)
        self.consts = [float_weights(w, self.geo, cb), b.reshape(self.geo.g, self.geo.cog)]
        self._rt = None

    def _args(self, x):
        dev = tvm.cpu()
        if self._rt is None:
            self._rt = self.executable.jit()
        return [tvm.runtime.tensor(np.ascontiguousarray(x, np.float32), dev)] + [
            tvm.runtime.tensor(c, dev) for c in self.consts] + [
            tvm.runtime.tensor(np.zeros(self.geo.out5_shape, np.float32), dev)]

    def run(self, x: np.ndarray) -> np.ndarray:
        args = self._args(x)
        self._rt["fconv"](*args)
        return args[-1].numpy().reshape(self.geo.out_shape)

    def time_ms(self, x: np.ndarray, number: int = 20, repeat: int = 7, stat: str = "median") -> float:
        """ms per call: median (or min, stat="min") over `repeat` runs of `number` calls."""
        args = self._args(x)
        ev = self._rt.time_evaluator("fconv", tvm.cpu(), number=number, repeat=repeat, min_repeat_ms=20)
        res = ev(*args).results
        return float(np.min(res) if stat == "min" else np.median(res)) * 1e3

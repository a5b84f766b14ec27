"""What the fused binary conv kernels share after the popcount: the float epilogue of one output element
and (for the hand-written TIR kernels, pointwise.py and pixel_rows.py) the argument list.

Epilogue: scale[c] * v + bias[c] (v = the +-1 dot product, corrected at the borders), PReLU by slope[c]
where the conv absorbed one, then the residual adds in graph order ((o + r0) + r1 rounds as the unfused
adds do). binary_conv.conv_compute (te) and both TIR kernels build it here, so the three agree by
construction.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import tirx as T


def float_epilogue(v, scale, bias, slope=None, residuals=()):
    """The output element from the int32 dot product v: scale, bias, slope and residuals are the TIR
    values of that element (scalars or vectors of one dtype, float32); slope None: no PReLU."""
    o = scale * v.astype("float32") + bias
    if slope is not None:
        o = tirx.Select(o >= tirx.const(0.0, "float32"), o, o * slope)
    for r in residuals:
        o = o + r
    return o


def declare_conv_args(geo, wt_shape, corr_shape, prelu: bool, residual: int):
    """Inside a T.prim_func(): the arguments (P, Wt, corr, ycls, xcls, scale, bias[, slope][, res0...], out)
    of binary_conv.make_conv_func's signature, with res and out NCHW [N, C_out, OH, OW]. Returns
    (p, wt, corr, ycls, xcls, scale, bias, slope | None, [res...], out)."""
    cog = geo.out5_shape[2]
    _, _, _, oh, ow = geo.out5_shape
    p = T.arg("P", T.buffer(geo.packed_shape, "uint32"))
    wt = T.arg("Wt", T.buffer(wt_shape, "uint32"))
    corr = T.arg("corr", T.buffer(corr_shape, "int32"))
    ycls = T.arg("ycls", T.buffer((oh,), "int32"))
    xcls = T.arg("xcls", T.buffer((ow,), "int32"))
    scale = T.arg("scale", T.buffer((1, cog), "float32"))
    bias = T.arg("bias", T.buffer((1, cog), "float32"))
    slope = T.arg("slope", T.buffer((1, cog), "float32")) if prelu else None
    res = [T.arg(f"res{k}", T.buffer(geo.out_shape, "float32")) for k in range(residual)]
    out = T.arg("out", T.buffer(geo.out_shape, "float32"))
    return p, wt, corr, ycls, xcls, scale, bias, slope, res, out

"""Scheduled binary conv PrimFuncs for a target, and their emission into a Relax module (NCHW boundary)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tvm import relax

from dcpnas.errors import CompileError

from .binary_conv import ConvGeometry, make_conv_func, make_pack_func
from .bmma_cuda import fold_weight_popcount, make_bmma_conv_func
from .depthwise import pm1_func, pm1_weights, use_pm1_kernel
from .depthwise_flat import make_packed_func, packed_shape, sign_table, use_packed_kernel
from .pack import border_classes, border_correction, weights_to_words
from .pack_flat import LANES, make_pack_flat, use_pack_flat
from .pixel_rows import make_pixel_rows_func, use_pixel_rows_kernel
from .pointwise import make_pointwise_func, use_pointwise_kernel
from .reference import BinaryConvAttrs
from .schedule_cpu import schedule_conv_bytes, schedule_conv_cpu, schedule_pack_cpu
from .schedule_cuda import schedule_conv_cuda, schedule_pack_cuda
from .shapes import geometry  # noqa: F401  (public here too)
from .shapes import per_channel as _vec
from .targets import as_target, cpu_params, family, has_avx512_popcount


def kernel_funcs(geo: ConvGeometry, target: Any, *, affine: bool, prelu: bool, schedule: bool = True,
                 records: dict | None = None, residual: int = 0):
    """-> (pack PrimFunc, conv PrimFunc), scheduled for `target` (attr tir.is_scheduled) unless schedule=False.

    pack: (x, [in_scale, in_shift,] P); conv: (P, Wt, corr, ycls, xcls, scale, bias, [slope,] [res,] out), out and
    res of conv_output_shape (NCHW for the pixels-in-lanes kernels, else [N, G, Cog, OH, OW]; with
    schedule=False always the latter: the TE function).
    residual (CPU only): the number of addends res the conv adds in its epilogue.
    records: tuned tiles (tuning.load_records); None: the committed records of this target, if any.
    """
    rows, cols = border_classes(geo.attrs, geo.h, geo.w)
    pack = make_pack_func(geo, affine)
    conv = make_conv_func(geo, len(set(rows)), len(set(cols)), prelu, residual)
    if not schedule:
        return pack, conv
    fam = family(target)
    if fam == "cuda" and residual:
        raise CompileError("internal: the CUDA binary conv has no fused residual add")
    if fam == "cuda":
        with as_target(target):
            if geo.mma:  # the b1 tensor-core conv: hand-written TIR, same signature
                return schedule_pack_cuda(pack, geo), make_bmma_conv_func(geo, len(set(rows)), len(set(cols)),
                                                                          prelu, geo.mma)
            return schedule_pack_cuda(pack, geo), schedule_conv_cuda(conv, geo)
    from .records import load_records, lookup_tile

    cpu = cpu_params(target)
    pack = cpu_pack_func(geo, target, affine, pack)
    if geo.word_bits == 8:
        return pack, schedule_conv_bytes(conv, geo, xt_cap=cpu.bytes_xt)
    if conv_output_shape(geo, target) == geo.out_shape:  # pixels in the lanes (pointwise.py, pixel_rows.py)
        make = make_pointwise_func if use_pointwise_kernel(geo, target) else make_pixel_rows_func
        return pack, make(geo, len(set(rows)), len(set(cols)), prelu, residual, cpu)
    tile = lookup_tile(load_records(target) if records is None else records, geo)
    return pack, schedule_conv_cpu(conv, geo, cpu, tile=tile)


def conv_output_shape(geo: ConvGeometry, target: Any) -> tuple[int, ...]:
    """The shape of kernel_funcs' conv output and residual inputs: NCHW for the pixels-in-lanes kernels
    (pointwise.py, pixel_rows.py: x86 32-bit words), [N, G, Cog, OH, OW] for the others (the same memory)."""
    nchw = family(target) != "cuda" and (use_pointwise_kernel(geo, target) or use_pixel_rows_kernel(geo, target))
    return geo.out_shape if nchw else geo.out5_shape


def cpu_pack_func(geo: ConvGeometry, target: Any, affine: bool, te_pack=None):
    """The scheduled sign+pack PrimFunc of a CPU target: pack_flat.py where it applies, else the TE pack
    (te_pack: make_pack_func's PrimFunc where the caller has built it already)."""
    if use_pack_flat(geo, target):
        return make_pack_flat(geo, affine)
    return schedule_pack_cpu(te_pack or make_pack_func(geo, affine), geo, cpu_params(target))


def conv_constants(geo: ConvGeometry, w_bits, scale, bias, prelu=None) -> list[np.ndarray]:
    """The conv PrimFunc's constant inputs in order: Wt, corr, ycls, xcls, scale, bias[, slope]."""
    g, cog = geo.g, geo.cog
    wt = weights_to_words(np.asarray(w_bits), geo.attrs, geo.word_bits)
    corr, ycls, xcls = border_correction(np.asarray(w_bits), geo.attrs, geo.h, geo.w)
    if geo.mma == "and":  # the AND form's weight term 2 popc(b), known now (bmma_cuda.py)
        corr = fold_weight_popcount(corr, wt)
    consts = [wt, corr, ycls, xcls, _vec(scale, geo.c_out, "scale").reshape(g, cog),
              _vec(bias, geo.c_out, "bias", 0.0).reshape(g, cog)]
    if prelu is not None:
        consts.append(_vec(prelu, geo.c_out, "prelu").reshape(g, cog))
    return consts


@dataclass(frozen=True)
class Packed:
    """A binary conv's input signed and packed by its producer (emit_pm1_packed): the words, and the
    shape of the float32 [N, C, H, W] tensor they stand for (never in memory)."""

    words: relax.Expr
    shape: tuple[int, int, int, int]


def packed_epilogue_geometry(geo: ConvGeometry, next_w_bits: np.ndarray, next_attrs: BinaryConvAttrs,
                             target: Any) -> ConvGeometry | None:
    """The geometry of the binary conv that alone consumes depthwise conv `geo`'s output, when `geo` can
    write that conv's packed input itself (depthwise_flat.make_packed_func: depthwise_flat.use_packed_kernel),
    feeding an ungrouped unpadded XNOR conv of 32-bit words; else None."""
    if not use_packed_kernel(geo, target):
        return None
    nxt = geometry(list(geo.out_shape), next_w_bits, next_attrs, target)
    ok = _dense_xnor(nxt) and not any(nxt.attrs.pads) and nxt.packed_shape == packed_shape(geo)
    return nxt if ok else None


def _dense_xnor(geo: ConvGeometry) -> bool:
    """An ungrouped conv on the XNOR-popcount kernels of 32-bit words (not the ±1 kernel, not CUDA's MMA):
    the convs whose packed input a producer may write, or whose pack may read parts or gather."""
    return geo.g == 1 and geo.word_bits == 32 and not geo.mma and not use_pm1_kernel(geo)


def packs_from_parts(geo: ConvGeometry, target: Any) -> bool:
    """True where the conv's pack can read its input as the parts of a channel Concat (pack_flat.py's
    parts): an ungrouped XNOR conv whose pack is pack_flat."""
    return _dense_xnor(geo) and use_pack_flat(geo, target)


def reads_parts(shape, w_bits: np.ndarray, attrs: BinaryConvAttrs, target: Any,
                offset: tuple[int, int] = (0, 0)) -> bool:
    """True where binary conv `attrs` on a channel Concat of `shape` (read from offset (r0, c0)) can take
    the Concat's parts instead (emit_binary_conv2d with a list): its pack is pack_flat, plain
    (packs_from_parts) or gathering (subsampled_geometry)."""
    return (subsampled_geometry(shape, w_bits, attrs, target, offset) is not None
            or packs_from_parts(geometry(shape, w_bits, attrs, target), target))


def subsampled_geometry(shape, w_bits: np.ndarray, attrs: BinaryConvAttrs, target: Any,
                        offset: tuple[int, int] = (0, 0)) -> ConvGeometry | None:
    """A dense unpadded 1x1 binary conv over x[:, :, r0:, c0:] (x of `shape`, offset (r0, c0)) with stride s
    reads only pixels (r0 + s*i, c0 + s*j): it is a stride-1 conv over those pixels, whose pack gathers
    them (pack_flat's gather) so that no Slice runs and 1/s^2 of x is signed. The geometry of that stride-1
    conv where this applies (stride or offset not trivial; an ungrouped XNOR conv of 32-bit words on x86
    AVX-512, at least one vector of output pixels), else None."""
    a = attrs
    sh, sw = a.strides
    if (a.kernel_shape != (1, 1) or any(a.pads) or a.group != 1 or ((sh, sw) == (1, 1) and tuple(offset) == (0, 0))
            or target is None or family(target) != "x86" or not has_avx512_popcount(target)):
        return None
    n, c, h, w = (int(v) for v in shape)
    r0, c0 = (int(v) for v in offset)
    if not (0 <= r0 < h and 0 <= c0 < w):
        return None
    oh, ow = (h - r0 - 1) // sh + 1, (w - c0 - 1) // sw + 1
    geo = geometry([n, c, oh, ow], w_bits, replace(a, strides=(1, 1), dilations=(1, 1)), target)
    ok = _dense_xnor(geo) and oh * ow >= LANES
    return geo if ok else None


def emit_pm1_packed(bb: relax.BlockBuilder, x: relax.Expr, w_bits: np.ndarray, scale: np.ndarray,
                    bias: np.ndarray | None, attrs: BinaryConvAttrs, target: Any, *, in_scale=None,
                    in_shift=None, prelu=None, pack_scale=None, pack_shift=None) -> Packed:
    """Emit a depthwise binary conv (emit_binary_conv2d's arguments, no residual) whose epilogue signs
    and packs its output for the next binary conv (pack_scale/pack_shift: that conv's affine before the
    sign, both or neither): one call_tir; the caller checked packed_epilogue_geometry."""
    geo = geometry(_static_shape(x), w_bits, attrs, target)
    affine = in_scale is not None
    f = make_packed_func(geo, affine)
    gv = bb.add_func(f.without_attr("global_symbol"), "dcpnas_binary_pm1pack")
    args = [x]
    if affine:
        args += [relax.const(_vec(in_scale, geo.c_in, "in_scale")), relax.const(_vec(in_shift, geo.c_in, "in_shift"))]
    kh, kw = geo.attrs.kernel_shape
    table = sign_table(_vec(scale, geo.c_out, "scale"), _vec(bias, geo.c_out, "bias", 0.0),
                       None if prelu is None else _vec(prelu, geo.c_out, "prelu"),
                       None if pack_scale is None else _vec(pack_scale, geo.c_out, "pack_scale"),
                       None if pack_shift is None else _vec(pack_shift, geo.c_out, "pack_shift"), kh * kw)
    args += [relax.const(pm1_weights(w_bits, geo))] + [relax.const(v) for v in table]
    words = bb.emit(relax.call_tir(gv, args, relax.TensorType(packed_shape(geo), "uint32")))
    return Packed(words, tuple(geo.out_shape))


def _static_shape(x: relax.Expr) -> list[int]:
    shape = x.ty.shape if hasattr(x, "ty") else x.struct_info.shape
    try:
        return [int(s) for s in shape]
    except Exception:
        raise CompileError(f"binary conv: input shape must be static, got {shape}") from None


def emit_binary_conv2d(bb: relax.BlockBuilder, x: relax.Expr | Packed, w_bits: np.ndarray, scale: np.ndarray,
                       bias: np.ndarray | None, attrs: BinaryConvAttrs, target: Any, *, in_scale=None,
                       in_shift=None, prelu=None, residual=(), offset: tuple[int, int] = (0, 0)) -> relax.Expr:
    """Emit sign+pack and the XNOR-popcount conv (fused epilogue) as call_tir; float32 NCHW in and out.
    Convs with one input channel per group (depthwise) or small 1x1 convs (depthwise.use_pm1_kernel)
    become instead one exact ±1 arithmetic kernel with the sign fused into its loads (depthwise.py).

    x: a float32 [N, C_in, H, W] Relax expression of static shape, or its Packed words (emit_pm1_packed:
    no pack call; in_scale/in_shift were the producer's), or a list of float32 [N, C_k, H, W] expressions
    whose channel concatenation it is (where packs_from_parts: the pack reads them, no Concat runs);
    w_bits: schema uint8 weights;
    scale, bias, prelu (PReLU slopes): [C_out]; in_scale, in_shift: [C_in] affine applied before the sign
    (the folded BatchNorm), both or neither; residual: float32 [N, C_out, OH, OW] expressions added in
    the epilogue in order (after the PReLU; CPU targets); offset (r0, c0): the conv reads x[:, :, r0:, c0:]
    (a Slice the importer did not run), where subsampled_geometry applies. A strided 1x1 conv packs only the
    pixels it reads (subsampled_geometry). Returns the [N, C_out, OH, OW] float32 expression.
    """
    packed = x if isinstance(x, Packed) else None
    parts = list(x) if isinstance(x, (list, tuple)) else None
    if parts:
        shapes = [_static_shape(v) for v in parts]
        shape = [shapes[0][0], sum(v[1] for v in shapes)] + shapes[0][2:]
    x_shape = list(packed.shape) if packed else shape if parts else _static_shape(x)
    sub = None if packed else subsampled_geometry(x_shape, w_bits, attrs, target, offset)
    if sub is None and tuple(offset) != (0, 0):
        raise CompileError(f"internal: offset {tuple(offset)} for a conv that cannot gather its input")
    geo = sub or geometry(x_shape, w_bits, attrs, target)
    if parts and (not reads_parts(x_shape, w_bits, attrs, target, offset)
                  or any(v[:1] + v[2:] != shape[:1] + shape[2:] for v in shapes)):
        raise CompileError("internal: a concatenated input for a conv whose pack cannot read the parts")
    if packed is not None and (in_scale is not None or use_pm1_kernel(geo) or geo.packed_shape != _words_shape(packed)):
        raise CompileError("internal: packed input for a conv that does not take these words")
    residual = [residual] if isinstance(residual, relax.Expr) else list(residual or ())
    for r in residual:
        if [int(s) for s in r.ty.shape] != list(geo.out_shape):
            raise CompileError(f"binary conv: residual of shape {list(r.ty.shape)}, output {list(geo.out_shape)}")
    if (in_scale is None) != (in_shift is None):
        in_scale = _vec(in_scale, geo.c_in, "in_scale", 1.0)
        in_shift = _vec(in_shift, geo.c_in, "in_shift", 0.0)
    affine = in_scale is not None
    if use_pm1_kernel(geo):
        return _emit_pm1(bb, x, geo, w_bits, scale, bias, target, in_scale, in_shift, prelu, residual)
    pack_f, conv_f = kernel_funcs(geo, target, affine=affine, prelu=prelu is not None, residual=len(residual))
    if parts or sub:
        gather = None if sub is None else (*x_shape[2:], *offset, *attrs.strides)
        pack_f = make_pack_flat(geo, affine, parts=tuple(v[1] for v in shapes) if parts else None, gather=gather)
    # no global_symbol: the Relax build names each PrimFunc after its (unique) GlobalVar
    gv_pack = None if packed else bb.add_func(pack_f.without_attr("global_symbol"), "dcpnas_binary_pack")
    gv_conv = bb.add_func(conv_f.without_attr("global_symbol"), "dcpnas_binary_conv")
    pack_args = parts or [x]
    if affine:
        pack_args += [relax.const(_vec(in_scale, geo.c_in, "in_scale")), relax.const(_vec(in_shift, geo.c_in, "in_shift"))]
    p = packed.words if packed else bb.emit(relax.call_tir(gv_pack, pack_args, relax.TensorType(geo.packed_shape,
                                                                                              geo.word_dtype)))
    consts = [relax.const(c) for c in conv_constants(geo, w_bits, scale, bias, prelu)]
    shape = conv_output_shape(geo, target)
    for r in residual:  # NCHW and [N, G, Cog, OH, OW] share one memory layout: a view where needed
        consts.append(r if shape == geo.out_shape else bb.emit(relax.op.reshape(r, shape)))
    y = bb.emit(relax.call_tir(gv_conv, [p] + consts, relax.TensorType(shape, "float32")))
    return y if shape == geo.out_shape else bb.emit(relax.op.reshape(y, geo.out_shape))


def _emit_pm1(bb, x, geo: ConvGeometry, w_bits, scale, bias, target, in_scale, in_shift, prelu,
              residual=()) -> relax.Expr:
    """The ±1 arithmetic lowering (depthwise.py): one call_tir, no packing pass."""
    affine = in_scale is not None
    f = pm1_func(geo, target, affine=affine, prelu=prelu is not None, residual=len(residual))
    gv = bb.add_func(f.without_attr("global_symbol"), "dcpnas_binary_pm1conv")
    args = [x]
    if affine:
        args += [relax.const(_vec(in_scale, geo.c_in, "in_scale")), relax.const(_vec(in_shift, geo.c_in, "in_shift"))]
    args += [relax.const(pm1_weights(w_bits, geo)), relax.const(_vec(scale, geo.c_out, "scale")),
             relax.const(_vec(bias, geo.c_out, "bias", 0.0))]
    if prelu is not None:
        args.append(relax.const(_vec(prelu, geo.c_out, "prelu")))
    args.extend(residual)
    return bb.emit(relax.call_tir(gv, args, relax.TensorType(geo.out_shape, "float32")))


def _words_shape(p: Packed) -> tuple[int, ...]:
    return tuple(int(v) for v in p.words.ty.shape)

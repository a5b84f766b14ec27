"""Sign + bit-pack of an unpadded plane with the words of a block of pixels kept in registers (x86 AVX-512).

The packed words of a conv without padding are P[n, q, H, W] = one contiguous run of H*W words per word
plane q (pack.py's layout). The TE pack (schedule_cpu.schedule_pack_cpu) accumulates a word's 32 bits in a
local tile that LLVM keeps in memory: a load and a store per bit and vector (and rows of 28 or 56 lanes,
split unevenly). Here a task is (image, group, up to VECTORS vectors of 16 pixels): per word, the 32 bits
Select(x[c] * in_scale[c] + in_shift[c] < 0, 1 << b, 0) are OR-ed in one expression per vector of 16 pixels,
so the word stays in a register until its single store. A plane whose H*W is not a multiple of 16 ends with a
vector shifted back to end at H*W, and vectors past the end repeat that last one (a few words written twice,
with the same value); planes of fewer than 16 pixels keep the TE pack. Bit for bit equal to pack_compute (same multiply, then add, then compare), tested
against reference.pack_activations_reference.

Measured (1 thread, us per call, this kernel vs the TE pack, 1x1 convs): 32ch 28x28 1.3 vs 2.0, 96ch 28x28
3.9 vs 6.3, 128ch 28x28 (stride 2 conv) 5.2 vs 7.7, 64ch 14x14 0.9 vs 1.2, 256ch 14x14 4.4 vs 5.0; 512ch 7x7
2.5 vs 2.2 (use_pack_flat keeps 7x7 planes on the TE pack).
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from .binary_conv import ConvGeometry
from .schedule_cpu import tasks_per_chunk
from .targets import family, has_avx512_popcount

LANES = 16
VECTORS = 4  # vectors of pixels per task at most: independent OR chains


def use_pack_flat(geo: ConvGeometry, target) -> bool:
    """True for the 32-bit-word pack of a conv without padding, on x86 with AVX-512, over planes of whole
    vectors or of >= 128 pixels (a 7x7 plane is 4 vectors for 49 pixels: measured 0.87x of the TE pack)."""
    hw = geo.h * geo.w
    return (geo.word_bits == 32 and not any(geo.attrs.pads) and hw >= LANES and (hw % LANES == 0 or hw >= 128)
            and family(target) == "x86" and has_avx512_popcount(target))


def make_pack_flat(geo: ConvGeometry, affine: bool, parallel_min: int = 16384,
                   parts: tuple[int, ...] | None = None,
                   gather: tuple[int, int, int, int, int, int] | None = None) -> tvm.tirx.PrimFunc:
    """PrimFunc (x, [in_scale, in_shift], P), scheduled (attr tir.is_scheduled): make_pack_func's signature.
    parts (ungrouped convs): the channel counts of the tensors whose channel concatenation x is; the PrimFunc
    then takes them instead of x, (x0, x1, ..., [in_scale, in_shift], P), and the Concat is never run.
    gather (H, W, r0, c0, sh, sw): x (or each part) is [N, C, H, W] and pixel (i, j) of geo's plane is x's
    pixel (r0 + i * sh, c0 + j * sw): the pack of a strided 1x1 conv, or of a Slice of x, reads only the
    pixels the conv uses (emit.subsampled_geometry)."""
    n, gq, h, w = geo.packed_shape
    g, cg, qg, c = geo.g, geo.cg, geo.qg, geo.c_in
    if parts is not None and (g != 1 or sum(parts) != c or min(parts) < 1):
        raise ValueError(f"internal: parts {parts} of {c} channels in {g} groups")
    offsets = [sum(parts[:k]) for k in range(len(parts))] if parts else [0]
    hw = h * w
    n_vec = -(-hw // LANES)  # vectors of pixels, the last one shifted back to end at hw
    blocks = -(-n_vec // VECTORS)
    vectors = -(-n_vec // blocks)  # per task: as even as the blocks allow
    tasks = n * g * blocks
    per = tasks_per_chunk(tasks)
    parallel = n * c * hw >= parallel_min and tasks // per > 1
    one, zero = tirx.const(1, "uint32"), tirx.const(0, "uint32")
    hs, ws, r0, c0, sh, sw = gather or (h, w, 0, 0, 1, 1)  # x's plane, and where geo's pixels lie in it
    if r0 + (h - 1) * sh >= hs or c0 + (w - 1) * sw >= ws:
        raise ValueError(f"internal: gather {gather} does not cover a {h}x{w} plane")
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True, "tir.is_scheduled": True})
            xs = [T.arg(f"x{k}" if parts else "x", T.buffer((n, ck, hs, ws), "float32"))
                  for k, ck in enumerate(parts or [c])]
            s = T.arg("in_scale", T.buffer((c,), "float32")) if affine else None
            t = T.arg("in_shift", T.buffer((c,), "float32")) if affine else None
            p = T.arg("pack", T.buffer((n, gq, h, w), "uint32"))
            xfs = [T.decl_buffer((n * xk.shape[1] * hs * ws,), "float32", data=xk.data) for xk in xs]
            pf = T.decl_buffer((n * gq * hw,), "uint32", data=p.data)
            with T.sblock("root"):  # Relax passes analyse PrimFuncs through a root block
                with (T.parallel if parallel else T.serial)(0, tasks // per) as chunk:
                    with T.serial(0, per) as k:
                        task = chunk * per + k
                        i, gi = task // (g * blocks), task // blocks % g
                        v0 = task % blocks * vectors
                        for q in range(qg):
                            def word(load, lanes):  # the OR of the 32 (or fewer) sign bits of word plane q
                                def vec(e):
                                    return e if lanes == 1 else tirx.Broadcast(e, lanes)
                                bits = None
                                for b in range(min(32, cg - 32 * q)):
                                    ch = gi * cg + 32 * q + b
                                    if parts:  # ungrouped: the channel is a number, and so is its part
                                        ch = 32 * q + b
                                        k = max(j for j, o in enumerate(offsets) if o <= ch)
                                        xv = load(xfs[k], (i * parts[k] + ch - offsets[k]) * hs * ws)
                                    else:
                                        xv = load(xfs[0], (i * c + ch) * hs * ws)
                                    if affine:
                                        xv = xv * vec(s[ch]) + vec(t[ch])  # as pack_compute: multiply, then add
                                    bit = tirx.Select(xv < vec(tirx.const(0.0, "float32")), vec(one << b), vec(zero))
                                    bits = bit if bits is None else bits | bit
                                return bits
                            with T.unroll(0, vectors) as v:
                                at = tirx.min((v0 + v) * LANES, hw - LANES)
                                out = (i * gq + gi * qg + q) * hw + at
                                if gather is None:
                                    with T.vectorized(0, LANES) as lane:
                                        T.buffer_store(pf, word(lambda buf, plane: buf[plane + at + lane], 1), [out + lane])
                                else:
                                    px = tirx.Ramp(at, 1, LANES)  # output pixels -> offsets in x's plane
                                    idx = (r0 + px // w * sh) * ws + c0 + px % w * sw
                                    T.buffer_store(pf, word(lambda buf, plane: _gather(buf, plane, idx), LANES),
                                                   [tirx.Ramp(out, 1, LANES)])
    return ib.get()


def _gather(buf, offset, idx):
    """float32 x LANES: buf[offset + idx[l]] per lane l (idx int32 x LANES), one AVX-512 gather (TVM's LLVM
    codegen would load each lane on its own)."""
    return T.call_llvm_pure_intrin(f"float32x{LANES}", "llvm.x86.avx512.mask.gather.dps.512",
                                   tirx.Broadcast(tirx.const(0.0, "float32"), LANES), T.address_of(buf[offset]), idx,
                                   tirx.Broadcast(tirx.const(True, "bool"), LANES), tirx.const(4, "int32"))

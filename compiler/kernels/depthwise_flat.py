"""The depthwise ±1 conv as int8 sums over a flat padded sign plane (x86 with AVX-512 BW: 64 byte lanes).

depthwise.py computes a depthwise binary conv in float32 (±1 signs times ±1 weights, 16 lanes, one fused
multiply-add per tap and pixel); its taps run load-bound. Here one task is one (image, channel) plane, with
4x the lanes per instruction and no multiply:

  u   int8 [2, U]: u[0] = +1 / -1 = sign(x*in_scale + in_shift), 0 on the zero border, the padded plane
      stored row after row (Hp x Wp); u[1] = -u[0]. A per-chunk buffer, zeroed once per chunk (tasks only
      write inside the border).
  acc int8 at every flat position o = r * Wp + col of the padded plane:
      acc[o] = sum over taps t = (ry, rx) of u[w_t < 0][o + ry*dh*Wp + rx*dw]   (= sum of u * w_t, exact)
  so a tap is one unaligned 64-byte load from the half its weight picks and one byte add per 64 positions,
  the sum of all taps one expression (accumulators in registers). A position whose column lies in the
  right border, or whose row lies between strided rows, is computed and never read. |acc| <= taps <= 127.
  out = scale * acc + bias, then PReLU, then + res: the epilogue expression of depthwise.py and the XNOR
  kernel on the same exact integer, so all three agree bit for bit. Output (y, x) reads flat position
  (y*sh) * Wp + x*sw.

Measured on the Intel Xeon (AVX-512, 1 thread, us per call, this kernel vs depthwise.py's float lanes):
32ch 28x28 5x5 7.9 vs 21.7, 3x3 5.0 vs 13.6; 128ch 14x14 5x5 stride 2 10.2 vs 23.5; 64ch 14x14 3x3 4.1 vs
5.4; 128ch 7x7 5x5 dil 2 6.3 vs 8.9; 64ch 8x8 3x3 2.4 vs 2.7; but 128ch 7x7 3x3 4.8 vs 4.4, 256ch 4x4 3x3
6.8 vs 4.5 (per-plane costs: the sign pass and narrow epilogue vectors): planes with fewer than MIN_WORK
taps x input pixels stay on depthwise.py.

Packed form (make_packed_func, emitted by emit.emit_pm1_packed where the conv's output is the input of one
unpadded ungrouped XNOR conv alone: the depthwise -> pointwise pair of a separable conv): the output is
never a float. The value the next conv signs, ((scale * a + bias), PReLU, * pack_scale + pack_shift) < 0,
is a function of the integer tap sum a in [-taps, taps] alone, so it is tabulated at compile time per
channel as an interval (sign_table: lo <= a <= hi, or its complement where a negative PReLU slope makes the
value negative at both ends) and decided on the byte sums themselves, 64 positions per compare. Each
channel's bit is OR-ed into one of four byte planes over the flat positions (byte k of the word: channels
8k..8k+7); a task is (image, word of 32 channels), or with fewer than MIN_WORD_TASKS such tasks (image,
word, half) so that two threads share a word; it ends by gathering each output position's bytes into its
word P [N, ceil(C/32), OH, OW] uint32 (pack.py's layout of the next conv's input; a half task stores its
16-bit half). Measured (1 thread, us, packed vs flat + pack_flat, same bits): 32ch 28x28 3x3 4.4 vs 8.2,
5x5 7.5 vs 10.8, 64ch 14x14 3x3 3.2 vs 5.7, 64ch 28x28 stride 2 8.1 vs 16.0, 128ch 7x7 3x3 3.4 vs 7.2
(depthwise.py's float lanes + pack: 4.9), 256ch 4x4 3x3 5.6 vs 4.7 (float lanes + pack): use_packed_kernel.

Same PrimFunc parameters as depthwise.make_pm1_func: (x, [in_scale, in_shift], Wpm [C,1,kh,kw] float32 ±1,
scale, bias, [slope], [res0, res1...], out), so that emit.py and the tests drive both alike. Rows of the
sign pass and of the epilogue are covered by power-of-two vectors, the last one shifted back to end at the
row's end (a few values written twice, with the same value).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from dcpnas.errors import CompileError

from .binary_conv import ConvGeometry
from .flat import FlatPlan, flat_plan, pow2_at_most, row_blocks
from .schedule_cpu import tasks_per_chunk
from .targets import family, has_avx512_popcount

BYTE_LANES = 64  # one zmm register of int8
MAX_VECTORS = 8  # accumulator registers per block of flat positions
MAX_TAPS = 127  # byte sums stay exact: |acc| <= taps
MIN_WORK = 512  # taps x input pixels per plane (module doc: 7x7 3x3 measured slower here, 8x8 3x3 faster)
# the packed epilogue vs depthwise.py's float lanes + the pack (1 thread, us): 128ch 7x7 3x3 3.4 vs 4.9,
# 256ch 4x4 3x3 5.6 vs 4.7
PACKED_MIN_WORK = 400
MIN_WORD_TASKS = 4  # the packed epilogue splits words in halves below this many (image, word) tasks


def use_flat_kernel(geo: ConvGeometry, target) -> bool:
    """True for a depthwise binary conv (one input and one output channel per group) with at most MAX_TAPS
    taps and at least MIN_WORK taps x input pixels per plane, on an x86 target with AVX-512 (the VPOPCNTDQ
    models, all of which have AVX-512 BW)."""
    kh, kw = geo.attrs.kernel_shape
    return (not geo.mma and geo.cg == 1 and geo.cog == 1 and kh * kw <= MAX_TAPS and kh * kw * geo.h * geo.w >= MIN_WORK
            and family(target) == "x86" and has_avx512_popcount(target))


def flat_sizes(geo: ConvGeometry) -> FlatPlan:
    """The flat plan of this conv in 64 byte lanes."""
    a = geo.attrs
    return flat_plan(geo.h, geo.w, geo.out_hw[0], a.kernel_shape, a.strides, a.dilations, a.pads, BYTE_LANES,
                     MAX_VECTORS)


def use_packed_kernel(geo: ConvGeometry, target) -> bool:
    """True where make_packed_func is the faster form of a depthwise conv whose output only the next XNOR
    conv reads: the flat kernel's convs and planes down to PACKED_MIN_WORK taps x input pixels."""
    kh, kw = geo.attrs.kernel_shape
    return (not geo.mma and geo.cg == 1 and geo.cog == 1 and kh * kw <= MAX_TAPS
            and kh * kw * geo.h * geo.w >= PACKED_MIN_WORK and family(target) == "x86" and has_avx512_popcount(target))


def packed_shape(geo: ConvGeometry) -> tuple[int, int, int, int]:
    """The words P [N, ceil(C/32), OH, OW] uint32 of the packed epilogue: bit b of word q is output channel
    32q + b (the layout of an unpadded ungrouped binary conv's input, pack.py)."""
    oh, ow = geo.out_hw
    return (geo.n, -(-geo.c_out // 32), oh, ow)


def make_flat_func(geo: ConvGeometry, affine: bool, prelu: bool, residual: int = 0,
                   parallel_min: int = 16384) -> tvm.tirx.PrimFunc:
    """The scheduled PrimFunc (attr tir.is_scheduled); parameters: module doc."""
    if not (geo.cg == 1 and geo.cog == 1):
        raise ValueError("internal: the flat kernel is for depthwise convs")
    n, c = geo.n, geo.c_in
    (kh, kw), (sh, sw) = geo.attrs.kernel_shape, geo.attrs.strides
    oh, ow = geo.out_hw
    plan = flat_sizes(geo)
    wp, computed, u_bytes = plan.wp, plan.computed, plan.buffer
    ve = pow2_at_most(ow, 16)  # float vectors of the epilogue
    tasks = n * c
    per = tasks_per_chunk(tasks)
    parallel = n * c * oh * ow * kh * kw >= parallel_min and tasks // per > 1
    i8 = lambda v: tirx.const(v, "int8")  # noqa: E731
    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True, "tir.is_scheduled": True})
            x, s, t, wpm = _input_args(geo, affine)
            scale = T.arg("scale", T.buffer((c,), "float32"))
            bias = T.arg("bias", T.buffer((c,), "float32"))
            slope = T.arg("slope", T.buffer((c,), "float32")) if prelu else None
            res = [T.arg(f"res{k}", T.buffer((n, c, oh, ow), "float32")) for k in range(residual)]
            out = T.arg("out", T.buffer((n, c, oh, ow), "float32"))
            with (T.parallel if parallel else T.serial)(0, tasks // per) as chunk:
                u = T.alloc_local((2 * u_bytes,), "int8")  # [signs | negated signs]
                acc = T.alloc_local((computed,), "int8")
                with T.serial(0, 2 * u_bytes // BYTE_LANES) as k:
                    with T.vectorized(0, BYTE_LANES) as lane:
                        T.buffer_store(u, i8(0), [k * BYTE_LANES + lane])
                with T.serial(0, per) as k:
                    task = chunk * per + k
                    i, ch = task // c, task % c
                    _sign_plane(geo, plan, u, x, i, ch, s, t)
                    _tap_sums(geo, plan, u, wpm, ch, lambda a, total: T.buffer_store(acc, total, [a]))
                    sc, bs = T.bind(scale[ch]), T.bind(bias[ch])
                    sl = T.bind(slope[ch]) if slope is not None else None
                    with T.serial(0, oh) as y:
                        for x0 in row_blocks(ow, ve):
                            with T.vectorized(0, ve) as lane:
                                q = acc[y * (sh * wp) + (x0 + lane) * sw]
                                o = sc * q.astype("float32") + bs
                                if sl is not None:
                                    o = tirx.Select(o >= f32(0.0), o, o * sl)
                                for r in res:  # in graph order, as the other kernels
                                    o = o + r[i, ch, y, x0 + lane]
                                T.buffer_store(out, o, [i, ch, y, x0 + lane])
    return ib.get()


def _input_args(geo: ConvGeometry, affine: bool):
    """Declare the leading PrimFunc parameters both forms share: (x, [in_scale, in_shift], Wpm); the affine
    ones None without affine."""
    (kh, kw), c = geo.attrs.kernel_shape, geo.c_in
    x = T.arg("x", T.buffer((geo.n, c, geo.h, geo.w), "float32"))
    s = T.arg("in_scale", T.buffer((c,), "float32")) if affine else None
    t = T.arg("in_shift", T.buffer((c,), "float32")) if affine else None
    return x, s, t, T.arg("Wpm", T.buffer((c, 1, kh, kw), "float32"))


def _sign_plane(geo: ConvGeometry, plan: FlatPlan, u, x, i, ch, s, t) -> None:
    """Emit the sign pass of plane (i, ch) into u = [signs | negated signs] (flat padded rows, the border
    left at 0): +1 / -1 = sign(x * in_scale + in_shift) (s, t: the affine buffers, or None)."""
    i8 = lambda v: tirx.const(v, "int8")  # noqa: E731
    pt, pl = geo.attrs.pads[:2]
    wp, u_bytes = plan.wp, plan.buffer
    vs = pow2_at_most(geo.w, 16)  # float vectors
    span = geo.h * wp  # bytes of the rows that hold signs
    vn = pow2_at_most(span, BYTE_LANES)
    # scalars bound once: inside the parallel body LLVM cannot tell the buffers apart and would reload them
    # after every store
    aff = (T.bind(s[ch]), T.bind(t[ch])) if s is not None else None
    with T.serial(0, geo.h) as y:  # the sign plane, inside the border
        for x0 in row_blocks(geo.w, vs):
            with T.vectorized(0, vs) as lane:
                v = x[i, ch, y, x0 + lane]
                if aff:
                    v = v * aff[0] + aff[1]  # as pack_compute and the BatchNorm: multiply, then add
                T.buffer_store(u, tirx.Select(v < tirx.const(0.0, "float32"), i8(-1), i8(1)),
                               [(y + pt) * wp + pl + x0 + lane])
    with T.serial(0, len(row_blocks(span, vn))) as k:  # the negated half: the rows with signs, flat
        with T.vectorized(0, vn) as lane:
            at = pt * wp + tirx.min(k * vn, span - vn) + lane
            T.buffer_store(u, i8(0) - u[at], [u_bytes + at])


def _tap_sums(geo: ConvGeometry, plan: FlatPlan, u, wpm, ch, use) -> None:
    """Emit the tap sums of channel ch at every computed flat position a, calling use(a, total) inside the
    64-lane loop: tap t reads the negated half where its weight is -1 (u * w = the chosen half), and the
    sum of all taps is one expression (accumulators in registers)."""
    (kh, kw), (dh, dw) = geo.attrs.kernel_shape, geo.attrs.dilations
    taps = [(ry, rx) for ry in range(kh) for rx in range(kw)]
    half = [T.bind(tirx.Select(wpm[ch, 0, ry, rx] < tirx.const(0.0, "float32"), plan.buffer, 0)) for ry, rx in taps]
    offs = [ry * dh * plan.wp + rx * dw for ry, rx in taps]
    with T.serial(0, plan.blocks) as b:
        with T.unroll(0, plan.vectors) as v:
            with T.vectorized(0, BYTE_LANES) as lane:
                a = b * (plan.vectors * BYTE_LANES) + v * BYTE_LANES + lane
                total = u[half[0] + a + offs[0]]
                for h_t, o_t in zip(half[1:], offs[1:]):
                    total = total + u[h_t + a + o_t]
                use(a, total)

def sign_table(scale, bias, slope, pack_scale, pack_shift, taps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packed epilogue's decision per channel as int8 [C] (lo, hi, flip): the next conv's input bit is
    set (negative) for tap sum a iff (lo <= a <= hi) != flip. Evaluated for every a in [-taps, taps] as the
    float epilogue computes it in float32 (scale * a + bias, PReLU (slope or None), * pack_scale +
    pack_shift (or None), < 0); with a negative PReLU slope the set is an interval's complement."""
    a = np.arange(-taps, taps + 1, dtype=np.float32)[None, :]
    col = lambda v: np.asarray(v, np.float32).reshape(-1, 1)  # noqa: E731
    o = col(scale) * a + col(bias)
    if slope is not None:
        o = np.where(o >= 0, o, o * col(slope))
    if pack_scale is not None:
        o = o * col(pack_scale) + col(pack_shift)
    neg = o < 0
    c = neg.shape[0]
    lo, hi, flip = np.full(c, 127, np.int8), np.full(c, -128, np.int8), np.zeros(c, np.int8)
    for ch in range(c):
        idx = np.flatnonzero(neg[ch])
        if idx.size and np.any(np.diff(idx) != 1):  # negative at both ends: the positive run is one interval
            idx, flip[ch] = np.flatnonzero(~neg[ch]), 1
            if np.any(np.diff(idx) != 1):
                raise CompileError(f"internal: the sign of channel {ch}'s epilogue changes more than twice")
        if idx.size:
            lo[ch], hi[ch] = idx[0] - taps, idx[-1] - taps
    return lo, hi, flip


def make_packed_func(geo: ConvGeometry, affine: bool, parallel_min: int = 16384) -> tvm.tirx.PrimFunc:
    """The packed epilogue (module doc), scheduled; parameters (x, [in_scale, in_shift], Wpm, lo, hi, flip, P)
    with lo/hi/flip int8 [C] from sign_table. One task = (image, word, part), its channels in sequence; per
    channel the tap sums of 64 flat positions are compared with lo/hi in byte lanes and the channel's bit
    is OR-ed into one of four byte planes (byte k of the word: channels 8k..8k+7), kept in a local buffer;
    the task ends by gathering each output position's bytes into its word (or half word)."""
    if not (geo.cg == 1 and geo.cog == 1):
        raise ValueError("internal: the flat kernel is for depthwise convs")
    n, c = geo.n, geo.c_in
    (kh, kw), (sh, sw) = geo.attrs.kernel_shape, geo.attrs.strides
    oh, ow = geo.out_hw
    _, words, _, _ = packed_shape(geo)
    plan = flat_sizes(geo)
    wp, computed, u_bytes = plan.wp, plan.computed, plan.buffer
    ve = pow2_at_most(ow, 16)
    ohw = oh * ow
    parts = 2 if n * words < MIN_WORD_TASKS else 1  # half words: two threads get work from one word plane
    bits = 32 // parts
    planes = bits // 8  # byte planes per task
    tasks = n * words * parts
    per = tasks_per_chunk(tasks)
    parallel = n * c * oh * ow * kh * kw >= parallel_min and tasks // per > 1
    i8 = lambda v: tirx.const(v, "int8")  # noqa: E731
    u8 = lambda v: tirx.const(v, "uint8")  # noqa: E731
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True, "tir.is_scheduled": True})
            x, s, t, wpm = _input_args(geo, affine)
            lo = T.arg("lo", T.buffer((c,), "int8"))
            hi = T.arg("hi", T.buffer((c,), "int8"))
            flip = T.arg("flip", T.buffer((c,), "int8"))
            p = T.arg("P", T.buffer((n, words, oh, ow), "uint32"))
            pf = T.decl_buffer((n * words * ohw,), "uint32", data=p.data)
            ph = T.decl_buffer((n * words * ohw * 2,), "uint16", data=p.data)  # little-endian half words
            with T.sblock("root"):
                with (T.parallel if parallel else T.serial)(0, tasks // per) as chunk:
                    u = T.alloc_local((2 * u_bytes,), "int8")
                    wb = T.alloc_local((planes * computed,), "uint8")  # byte planes over the flat positions
                    with T.serial(0, 2 * u_bytes // BYTE_LANES) as k:
                        with T.vectorized(0, BYTE_LANES) as lane:
                            T.buffer_store(u, i8(0), [k * BYTE_LANES + lane])
                    with T.serial(0, per) as k:
                        task = chunk * per + k
                        i, q, part = task // (words * parts), task // parts % words, task % parts
                        first = q * 32 + part * bits
                        with T.serial(0, planes * computed // BYTE_LANES) as k2:
                            with T.vectorized(0, BYTE_LANES) as lane:
                                T.buffer_store(wb, u8(0), [k2 * BYTE_LANES + lane])
                        with T.serial(0, tirx.max(tirx.min(c - first, bits), 0)) as kb:
                            ch = first + kb
                            _sign_plane(geo, plan, u, x, i, ch, s, t)
                            c_lo, c_hi, c_flip = T.bind(lo[ch]), T.bind(hi[ch]), T.bind(flip[ch])
                            plane = T.bind(kb // 8 * computed)
                            mask = T.bind((u8(1) << (kb % 8).astype("uint8")))

                            def decide(a, total):  # this channel's bit where the sum is in its interval
                                neg = tirx.Select(tirx.all(total >= c_lo, total <= c_hi), i8(1), i8(0)) != c_flip
                                T.buffer_store(wb, wb[plane + a] | tirx.Select(neg, mask, u8(0)), [plane + a])
                            _tap_sums(geo, plan, u, wpm, ch, decide)
                        base = (i * words + q) * ohw
                        with T.serial(0, oh) as y:
                            for x0 in row_blocks(ow, ve):
                                with T.vectorized(0, ve) as lane:
                                    o = y * (sh * wp) + (x0 + lane) * sw
                                    dt = "uint32" if parts == 1 else "uint16"
                                    word = None
                                    for kp in range(planes):
                                        byte = wb[kp * computed + o].astype(dt)
                                        byte = byte << tirx.const(8 * kp, dt) if kp else byte
                                        word = byte if word is None else word | byte
                                    at = base + y * ow + x0 + lane
                                    if parts == 1:
                                        T.buffer_store(pf, word, [at])
                                    else:
                                        T.buffer_store(ph, word, [at * 2 + part])
    return ib.get()

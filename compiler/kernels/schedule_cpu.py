"""Hand schedules (tvm.s_tir.Schedule) of the binary conv kernels for CPUs (x86 and aarch64 share them).

conv, "channel-vector" form (C_out per group a multiple of the vector width): each task computes one
output row of `xt` pixels x `fv*fn` output channels in registers (xt*fn vector accumulators), looping
over taps and packed words; the epilogue (correction, scale, bias, PReLU) is fused into the write-back.
conv, "pixel-vector" form (small C_out per group, e.g. depthwise): vectorised along output columns.
pack: parallel over rows, vectorised along the image width, the 32 bits unrolled.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.s_tir import Schedule

from .binary_conv import ConvGeometry


@dataclass(frozen=True)
class CpuParams:
    """The CPU schedule parameters of a target (kernels and the float ops of float_schedule alike):
    lanes: 32-bit lanes of one vector register; regs: accumulator registers a tile may use;
    min_parallel: elements below which an elementwise loop stays serial."""

    lanes: int
    regs: int
    max_xt: int = 14
    bytes_xt: int = 2  # pixels per tile of the byte-word kernel (32 output channels each)
    min_parallel: int = 4096


def _largest_divisor(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def _vectorize(sch: Schedule, loop) -> None:
    """Vectorise a loop unless it has a single iteration (TVM refuses some of those)."""
    ext = sch.get(loop).extent
    if not (isinstance(ext, tvm.tirx.IntImm) and int(ext) == 1):
        sch.vectorize(loop)


def vector_plan(ow: int, lanes: int) -> tuple[int, int]:
    """-> (ji, owp): vector width along output columns and the row width computed (owp >= ow, a multiple
    of ji): whole power-of-two vectors, since LLVM splits a 14- or 7-lane vector into 3 instructions."""
    ji = min(lanes, 1 << max(0, (ow - 1).bit_length()))
    return ji, -(-ow // ji) * ji


def rows_per_task(oh: int, blocks: int, min_tasks: int = 8) -> int:
    """Output rows per parallel task: the whole plane when `blocks` (images x channel blocks) already
    gives min_tasks, else fewer rows."""
    return max(d for d in range(1, oh + 1) if oh % d == 0 and (blocks * (oh // d) >= min_tasks or d == 1))


def row_tile(rows: int, vectors: int, budget: int, cap: int = 8) -> int:
    """Output rows computed together (a divisor of `rows`): as many as `budget` accumulator registers
    allow at `vectors` per row, up to `cap`. Rows computed together share the loads of the sign rows
    they overlap in (a kh-tap conv loads R+kh-1 rows for R outputs instead of R*kh)."""
    return max(d for d in range(1, min(rows, cap) + 1) if rows % d == 0 and d * vectors <= budget)


MIN_CHUNKS = 8  # parallel chunks of tasks (load balance on up to 8 threads)
CHUNK_BUFFER_BYTES = 32768  # the per-chunk buffer (signs, padded rows) stays in L1/L2


def tasks_per_chunk(tasks: int, task_bytes: int = 0, min_chunks: int = MIN_CHUNKS,
                    max_bytes: int = CHUNK_BUFFER_BYTES) -> int:
    """The largest divisor of `tasks` that leaves at least min_chunks chunks and keeps a chunk's buffer
    (task_bytes per task) within max_bytes; 1 where none does."""
    return max((d for d in range(2, tasks + 1) if tasks % d == 0
                and tasks // d >= min_chunks and d * task_bytes <= max_bytes), default=1)


def chunk_tasks(sch: Schedule, tasks_loop, task_bytes: int, min_chunks: int = MIN_CHUNKS,
                max_bytes: int = CHUNK_BUFFER_BYTES):
    """Split a loop of parallel tasks into chunks of several tasks -> (chunk loop, task loop): a buffer that each
    task computes first (signs, padded rows) is then computed per chunk, before its tasks. Inside the parallel
    loop such a buffer is a TVMBackendAllocWorkspace + Free per iteration (measured: 23% of a 128-channel 7x7
    +-1 conv); per chunk, a few per call. Chunks: at least min_chunks, each buffer at most max_bytes
    (task_bytes per task). Returns (tasks_loop, tasks_loop) where no split fits."""
    tasks = int(sch.get(tasks_loop).extent)
    per = tasks_per_chunk(tasks, task_bytes, min_chunks, max_bytes)
    if per == 1:
        return tasks_loop, tasks_loop
    return tuple(sch.split(tasks_loop, [tasks // per, per]))


def conv_tile(geo: ConvGeometry, cpu: CpuParams) -> tuple[str, int, int, int]:
    """Pick (form, fv, fn, xt): vector width, vectors per tile along channels, pixels per tile."""
    cog, ow = geo.cog, geo.out_hw[1]
    for fv in (cpu.lanes, cpu.lanes // 2, cpu.lanes // 4):
        if fv >= 4 and cog % fv == 0:
            nvec = cog // fv
            fn = next(f for f in (4, 2, 1) if nvec % f == 0 and f * 2 <= cpu.regs)
            fn = min(fn, 2) if cpu.lanes >= 16 else fn
            xt = _largest_divisor(ow, min(cpu.max_xt, max(1, cpu.regs // fn)))
            return "channel", fv, fn, xt
    return "pixel", _largest_divisor(ow, 4 * cpu.lanes), 1, 1


def schedule_conv_cpu(func: tvm.tirx.PrimFunc, geo: ConvGeometry, cpu: CpuParams, parallel: bool = True,
                      tile: tuple | None = None):
    """Schedule the binary conv PrimFunc, whose reduction block "popc" is [n, g, y, x, c] (reduce ry, rx, rq) and
    whose epilogue block "binconv_out" writes [n, g, c, y, x]; returns it scheduled (attr tir.is_scheduled).
    tile: (form, fv, fn, xt) from a tuning record (tuning.py); default: conv_tile's choice."""
    sch = Schedule(tvm.IRModule({"main": func}))
    pc = sch.get_sblock("popc")
    ep = sch.get_sblock("binconv_out")
    form, fv, fn, xt = tuple(tile) if tile else conv_tile(geo, cpu)
    acc = sch.cache_write(pc, 0, "local")
    n, g, y, x, c, ry, rx, rq = sch.get_loops(pc)
    if form == "channel":
        xo, xi = sch.split(x, [None, xt])
        co, ci = sch.split(c, [None, fv * fn])
        sch.reorder(n, g, y, co, xo, ry, rx, rq, xi, ci)
        outer = sch.fuse(n, g, y, co)
        if parallel:
            sch.parallel(outer)
        sch.reverse_compute_at(acc, xo)
        sch.reverse_compute_inline(ep)
        sch.unroll(xi)
        cio, cii = sch.split(ci, [fn, fv])
        sch.unroll(cio)
        _vectorize(sch, cii)
        init = sch.decompose_reduction(pc, ry)
        _vectorize(sch, sch.get_loops(init)[-1])
        # store along c (strided in NCHW); storing along x with the tile read transposed measured slower
        wl = sch.get_loops(acc)  # ..., x (xt), c (fv*fn)
        wo, wi = sch.split(wl[-1], [None, fv])
        _vectorize(sch, wi)
    else:
        xo, xi = sch.split(x, [None, fv])
        sch.reorder(n, g, c, y, xo, ry, rx, rq, xi)
        outer = sch.fuse(n, g, c, y)
        if parallel:
            sch.parallel(outer)
        sch.reverse_compute_at(acc, xo)
        sch.reverse_compute_inline(ep)
        _vectorize(sch, xi)
        init = sch.decompose_reduction(pc, ry)
        _vectorize(sch, sch.get_loops(init)[-1])
        wl = sch.get_loops(acc)
        _vectorize(sch, wl[-1])
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def schedule_pack_cpu(func: tvm.tirx.PrimFunc, geo: ConvGeometry, cpu: CpuParams, parallel: bool = True):
    """Schedule the pack PrimFunc: bits unrolled, pixels vectorised. Without padding a word's plane is one
    contiguous run of H*W pixels: tasks are (image, word, chunk of whole rows, at most 4 vectors of pixels where
    a row fits), not single rows (at 7x7 or 14x14 a row is one part-filled vector, and a task per row costs more than its work).
    With padding: tasks are rows, the width vectorised."""
    sch = Schedule(tvm.IRModule({"main": func}))
    pk = sch.get_sblock("pack")
    acc = sch.cache_write(pk, 0, "local")
    n, gq, y, x, b = sch.get_loops(pk)
    if not any(geo.attrs.pads) and geo.h * geo.w > 1:
        # whole rows per chunk (the local tile is written back as a rectangle): 7x7 -> 49 pixels, 14x14 -> 28
        vw = geo.w * max(1, _largest_divisor(geo.h, max(1, 4 * cpu.lanes // geo.w)))
        p = sch.fuse(y, x)
        po, xi = sch.split(p, [None, vw])
        sch.reorder(n, gq, po, b, xi)
        outer = sch.fuse(n, gq, po)
        xo = outer
    else:
        wp = geo.packed_shape[3]
        vw = _largest_divisor(wp, 4 * cpu.lanes)
        xo, xi = sch.split(x, [None, vw])
        sch.reorder(n, gq, y, xo, b, xi)
        outer = sch.fuse(n, gq, y)
    if parallel and int(sch.get(outer).extent) > 1:
        sch.parallel(outer)
    sch.reverse_compute_at(acc, xo)
    sch.unroll(b)
    _vectorize(sch, xi)
    init = sch.decompose_reduction(pk, b)
    _vectorize(sch, sch.get_loops(init)[-1])
    _vectorize(sch, sch.get_loops(acc)[-1])
    return sch.mod["main"].with_attr("tir.is_scheduled", True)


def schedule_conv_bytes(func: tvm.tirx.PrimFunc, geo: ConvGeometry, parallel: bool = True, xt_cap: int = 2):
    """AVX2 schedule of the byte-word conv (geo.word_bits == 8, C_out per group a multiple of 16): a tile of
    `xt` pixels x fv (32 or 16) output channels; per tap and byte chunk, popcounts accumulate in one uint8
    vector per pixel ("popc8", vpshufb popcount + vpaddb), then widen into int32 accumulators."""
    sch = Schedule(tvm.IRModule({"main": func}))
    pc, p8, ep = sch.get_sblock("popc"), sch.get_sblock("popc8"), sch.get_sblock("binconv_out")
    fv = 32 if geo.cog % 32 == 0 else 16
    xt = _largest_divisor(geo.out_hw[1], xt_cap if fv == 32 else 2 * xt_cap)
    acc = sch.cache_write(pc, 0, "local")
    sch.set_scope(p8, 0, "local")
    n, g, y, x, c, ry, rx, ro = sch.get_loops(pc)
    xo, xi = sch.split(x, [None, xt])
    co, ci = sch.split(c, [None, fv])
    sch.reorder(n, g, y, co, xo, ry, rx, ro, xi, ci)
    outer = sch.fuse(n, g, y, co)
    if parallel:
        sch.parallel(outer)
    sch.compute_at(p8, ro)
    l8 = sch.get_loops(p8)  # outer, xo, ry, rx, ro, then p8's own: xx (xt; gone when xt == 1), c (fv), ri
    c8, ri = l8[-2], l8[-1]
    if len(l8) == 8:
        sch.reorder(ri, l8[-3], c8)
        sch.unroll(l8[-3])
    else:
        sch.reorder(ri, c8)
    _vectorize(sch, c8)
    init8 = sch.decompose_reduction(p8, ri)
    _vectorize(sch, sch.get_loops(init8)[-1])
    sch.reverse_compute_at(acc, xo)
    sch.reverse_compute_inline(ep)
    sch.unroll(xi)
    _vectorize(sch, ci)
    init = sch.decompose_reduction(pc, ry)
    _vectorize(sch, sch.get_loops(init)[-1])
    wl = sch.get_loops(acc)
    _, wi = sch.split(wl[-1], [None, 8])
    _vectorize(sch, wi)
    return sch.mod["main"].with_attr("tir.is_scheduled", True)

"""Float ops of the network as TE computes (NCHW, static shapes) with hand CPU schedules (tvm.s_tir.Schedule).

Every function returns a PrimFunc whose parameters are (inputs..., output). With `cpu` (a CpuParams) the
PrimFunc is scheduled (parallel + vectorised) and carries `tir.is_scheduled`; with cpu=None it is left
for the GPU pipeline (dlight) to schedule. The ONNX Runtime tests in tests/test_import.py are the
references of these computes (one test per op converter).

conv2d_nchw fuses a per-input-channel affine before zero padding (a BatchNorm ahead of the conv) and a
per-output-channel epilogue (scale, bias = folded BatchNorm after the conv, PReLU, residual add).
"""

from __future__ import annotations

import tvm
from tvm import te, tirx
from tvm.s_tir import Schedule

from dcpnas.compiler.conv_flat import make_flat_depthwise, make_flat_pointwise, use_flat_depthwise, use_flat_pointwise
from dcpnas.compiler.kernels.schedule_cpu import CpuParams, _largest_divisor, chunk_tasks, row_tile, rows_per_task, vector_plan
from dcpnas.compiler.pool_flat import make_flat_pool, use_flat_pool, window_count


def _finish(func: tirx.PrimFunc, name: str, scheduled: bool) -> tirx.PrimFunc:
    func = func.with_attr("global_symbol", name)
    return func.with_attr("tir.is_scheduled", True) if scheduled else func


def _elementwise(sch: Schedule, block, cpu: CpuParams, parallel_min: int | None = None):
    """Spatial block: the last two loops (H, W of NCHW) fused and vectorised by a divisor of their extent
    (per-channel operands then stay scalar broadcasts), the outer loops fused and parallel when large."""
    loops = sch.get_loops(block)
    inner = sch.fuse(*loops[-2:]) if len(loops) >= 2 else loops[-1]
    extent = int(sch.get(inner).extent)
    lanes = max(d for d in range(1, min(extent, cpu.lanes) + 1) if extent % d == 0)
    if lanes > 1:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
    if len(loops) > 2:
        outer = sch.fuse(*loops[:-2])
        total = extent * int(sch.get(outer).extent)
        if total >= (parallel_min or cpu.min_parallel) and int(sch.get(outer).extent) > 1:
            sch.parallel(outer)


def conv2d_nchw(x_shape, w_shape, *, strides, pads, dilations, group, name, cpu: CpuParams | None,
                in_affine=False, bias=False, prelu=False, residual=False) -> tirx.PrimFunc:
    """PrimFunc(x[N,C,H,W], w[Co,C/g,kh,kw], [in_scale[C], in_shift[C]], [scale[Co], bias[Co]], [slope[Co]],
    [res[N,Co,OH,OW]], out[N,Co,OH,OW]): out = ep(conv(pad0(x*in_scale+in_shift), w)), ep(v) = prelu(v*scale+bias)+res.
    pads = (top, left, bottom, right)."""
    if use_flat_depthwise(x_shape, w_shape, group, cpu):  # depthwise: over the flat padded plane
        return _finish(make_flat_depthwise(x_shape, w_shape, strides=strides, pads=pads, dilations=dilations,
                                           in_affine=in_affine, bias=bias, prelu=prelu, residual=residual), name, True)
    if use_flat_pointwise(x_shape, w_shape, strides=strides, pads=pads, group=group, cpu=cpu):  # pixels in lanes
        return _finish(make_flat_pointwise(x_shape, w_shape, in_affine=in_affine, bias=bias, prelu=prelu,
                                           residual=residual), name, True)
    N, C, H, W = (int(v) for v in x_shape)
    Co, Cg, KH, KW = (int(v) for v in w_shape)
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilations, pads
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    cog = Co // group
    x = te.placeholder((N, C, H, W), "float32", "x")
    w = te.placeholder((Co, Cg, KH, KW), "float32", "w")
    params = [x, w]
    if in_affine:
        a_s, a_b = te.placeholder((C,), "float32", "in_scale"), te.placeholder((C,), "float32", "in_shift")
        params += [a_s, a_b]
    # strided (dilation 1, kernel > 1x1) on a CPU: the padded input is split into its phases, planes
    # ph[n, c, py, px, a, b] = padded[n, c, a*sh + py, b*sw + px], so that the conv's vector loads along the
    # output row are contiguous (stride 2 read every other pixel: gathers, ~7-13 GMAC/s vs ~95 at stride 1).
    # A strided 1x1 conv reads each pixel once: the extra pass of a phase copy costs more than it saves.
    phased = cpu is not None and (sh, sw) != (1, 1) and (dh, dw) == (1, 1) and (KH, KW) != (1, 1)
    padded = in_affine or pt or pl or pb or pr or phased

    def pad_value(n, c, i, j):
        v = x[n, c, i - pt, j - pl]
        if in_affine:
            v = v * a_s[c] + a_b[c]
        inside = tirx.all(i >= pt, i < H + pt, j >= pl, j < W + pl)
        return tirx.if_then_else(inside, v, tirx.const(0.0, "float32"))
    rc, ry, rx = te.reduce_axis((0, Cg), "rc"), te.reduce_axis((0, KH), "ry"), te.reduce_axis((0, KW), "rx")
    if phased:
        hq, wq = OH + (KH - 1) // sh, OW + (KW - 1) // sw  # only the phases a tap reads: min(stride, kernel)
        src = te.compute((N, C, min(sh, KH), min(sw, KW), hq, wq),
                         lambda n, c, py, px, a, b: pad_value(n, c, a * sh + py, b * sw + px), name="pad")
        acc = te.compute(
            (N, Co, OH, OW),
            lambda n, co, i, j: te.sum(
                src[n, (co // cog) * Cg + rc, ry % sh, rx % sw, i + ry // sh, j + rx // sw] * w[co, rc, ry, rx],
                axis=[rc, ry, rx]),
            name="conv")
    else:
        src = te.compute((N, C, H + pt + pb, W + pl + pr), pad_value, name="pad") if padded else x
        acc = te.compute(
            (N, Co, OH, OW),
            lambda n, co, i, j: te.sum(
                src[n, (co // cog) * Cg + rc, i * sh + ry * dh, j * sw + rx * dw] * w[co, rc, ry, rx],
                axis=[rc, ry, rx]),
            name="conv")
    extra = []
    if bias:
        sc, bi = te.placeholder((Co,), "float32", "scale"), te.placeholder((Co,), "float32", "bias")
        extra += [sc, bi]
    if prelu:
        sl = te.placeholder((Co,), "float32", "slope")
        extra.append(sl)
    if residual:
        res = te.placeholder((N, Co, OH, OW), "float32", "res")
        extra.append(res)

    def ep(n, co, i, j):
        v = acc[n, co, i, j]
        if bias:
            v = v * sc[co] + bi[co]
        if prelu:
            v = tirx.Select(v >= 0, v, v * sl[co])
        if residual:
            v = v + res[n, co, i, j]
        return v
    out = te.compute((N, Co, OH, OW), ep, name="out")
    func = te.create_prim_func(params + extra + [out])
    if cpu is None:
        return _finish(func, name, False)
    sch = Schedule(tvm.IRModule({"main": func}))
    conv, ob = sch.get_sblock("conv"), sch.get_sblock("out")
    # register tile: cb output channels x OW pixels as n_jo vectors of ji lanes (ji divides OW)
    ji = max(d for d in range(1, min(OW, cpu.lanes) + 1) if OW % d == 0)
    n_jo = OW // ji
    budget = 16 if cpu.lanes >= 16 else 12
    cb = 1
    if cog > 1:  # depthwise (cog == 1) shares nothing across output channels
        cb = next((b for b in (8, 4, 2, 1) if cog % b == 0 and b * n_jo <= budget), 1)
    n, co, i, j, r_c, r_y, r_x = sch.get_loops(conv)
    coo, coi = sch.split(co, [None, cb])
    jo, jv = sch.split(j, [n_jo, ji])
    sch.reorder(n, coo, i, r_c, r_y, r_x, coi, jo, jv)
    outer = sch.fuse(n, coo, i)
    if N * Co * OH * OW * Cg * KH * KW >= 4 * cpu.min_parallel:
        sch.parallel(outer)
    sch.reverse_compute_at(ob, outer)
    sch.set_scope(conv, 0, "local")  # the [cb, OW] accumulator tile lives in registers
    sch.unroll(coi)
    sch.unroll(jo)
    sch.unroll(r_y)
    sch.unroll(r_x)
    sch.vectorize(jv)
    init = sch.decompose_reduction(conv, r_c)
    sch.vectorize(sch.get_loops(init)[-1])
    ol = sch.get_loops(ob)
    sch.vectorize(ol[-1])
    if padded:
        pb_ = sch.get_sblock("pad")
        *lead, pi, pj = sch.get_loops(pb_)
        fused = sch.fuse(*lead)
        if N * C * H * W >= cpu.min_parallel:
            sch.parallel(fused)
        sch.vectorize(pj)
    return _finish(sch.mod["main"], name, True)


def pool2d_nchw(x_shape, *, kind, kernel, strides, pads, count_include_pad, name, cpu,
                residual: bool = False) -> tirx.PrimFunc:
    """Max or average pool, NCHW. Average divides by the number of taps inside the image unless
    count_include_pad (then by kh*kw). Max pads with -inf. residual: PrimFunc (x, res, out) adding
    res [N, C, OH, OW] to the pooled value (an Add after the pool, fused).

    With `cpu` the window is reduced at stride 1 along W (block "pool" is [N, C, OH, OWP] or, strided,
    [N, C, OH, OWP/sw, sw], the same memory) and the output takes every sw-th column: every vector load
    of the padded plane is contiguous (as the ±1 conv, kernels/depthwise.py)."""
    if use_flat_pool(x_shape, kernel, strides, cpu):  # separable, over the flat padded plane
        return _finish(make_flat_pool(x_shape, kind=kind, kernel=kernel, strides=strides, pads=pads,
                                      count_include_pad=count_include_pad, residual=residual), name, True)
    N, C, H, W = (int(v) for v in x_shape)
    (KH, KW), (sh, sw), (pt, pl, pb, pr) = kernel, strides, pads
    OH, OW = (H + pt + pb - KH) // sh + 1, (W + pl + pr - KW) // sw + 1
    x = te.placeholder((N, C, H, W), "float32", "x")
    fill = tirx.const(float("-inf") if kind == "max" else 0.0, "float32")
    sub = sw if cpu is not None else 1  # columns of "pool" per output column
    csw = sw // sub                      # column stride of "pool"
    owp = (OW - 1) * sub + 1
    if cpu is not None:
        owp = vector_plan(owp, cpu.lanes)[1] if sub > 1 or KW > 1 else owp
        owp = -(-owp // sub) * sub
    wq = max(W + pl + pr, (owp - 1) * csw + KW)
    src = te.compute((N, C, H + pt + pb, wq), lambda n, c, i, j: tirx.if_then_else(
        tirx.all(i >= pt, i < H + pt, j >= pl, j < W + pl), x[n, c, i - pt, j - pl], fill), name="pad")
    ry, rx = te.reduce_axis((0, KH), "ry"), te.reduce_axis((0, KW), "rx")
    red = te.max if kind == "max" else te.sum

    def window(n, c, i, col):
        return red(src[n, c, i * sh + ry, col * csw + rx], axis=[ry, rx])

    if sub == 1:
        acc = te.compute((N, C, OH, owp), window, name="pool")
        taken = lambda n, c, i, j: acc[n, c, i, j]  # noqa: E731
    else:
        acc = te.compute((N, C, OH, owp // sub, sub), lambda n, c, i, q, ph: window(n, c, i, q * sub + ph), name="pool")
        taken = lambda n, c, i, j: acc[n, c, i, j, 0]  # noqa: E731
    res = te.placeholder((N, C, OH, OW), "float32", "res") if residual else None
    if kind == "max":
        out = te.compute((N, C, OH, OW), lambda n, c, i, j: taken(n, c, i, j) + res[n, c, i, j] if residual
                         else taken(n, c, i, j), name="out")
    else:
        def cnt(i, j):
            return window_count(i, j, h=H, w=W, kernel=kernel, strides=strides, pads=pads,
                                count_include_pad=count_include_pad)
        out = te.compute((N, C, OH, OW), lambda n, c, i, j: taken(n, c, i, j) / cnt(i, j) + res[n, c, i, j]
                         if residual else taken(n, c, i, j) / cnt(i, j), name="out")
    func = te.create_prim_func([x] + ([res] if residual else []) + [out])
    if cpu is None:
        return _finish(func, name, False)
    sch = Schedule(tvm.IRModule({"main": func}))
    pool, ob, pad = sch.get_sblock("pool"), sch.get_sblock("out"), sch.get_sblock("pad")
    loops = sch.get_loops(pool)
    if len(loops) == 7:  # strided: [.., q, phase] -> one full-resolution column loop
        sch.fuse(loops[3], loops[4])
    n, c, i, j, r_y, r_x = sch.get_loops(pool)
    # tasks: (image, channel, block of rows), each with its padded rows in a buffer of its own; register
    # tiles of R output rows x the row's vectors (rows of a tile share the loads of the rows they overlap in)
    ji = vector_plan(owp, cpu.lanes)[0]
    ji = ji if owp % ji == 0 else _largest_divisor(owp, cpu.lanes)
    n_jo = owp // ji
    rt = rows_per_task(OH, N * C)
    # no row tiles (row_cap 1): measured at the pools of DDPNAS_MCN_2 8x32, tiles of up to 8 rows were no faster
    # (0.71x vs 0.66x of the old kernel in one run, noise +-0.05) and slower at 7x7
    r = row_tile(rt, n_jo, 16 if cpu.lanes >= 16 else 12, 1)
    io, ir, ii = sch.split(i, [None, rt // r, r])
    jo, jv = sch.split(j, [n_jo, ji])
    sch.reorder(n, c, io, ir, r_y, r_x, ii, jo, jv)
    outer = sch.fuse(n, c, io)
    # parallel chunks of tasks, each padding the rows of all its tasks first (kernels.schedule_cpu.chunk_tasks)
    pad_w = int(sch.get(sch.get_loops(pad)[-1]).extent)
    par, outer = chunk_tasks(sch, outer, 4 * ((rt - 1) * sh + KH) * pad_w)
    if N * C * OH * OW >= cpu.min_parallel and int(sch.get(par).extent) > 1:
        sch.parallel(par)
    sch.reverse_compute_at(ob, ir)
    sch.set_scope(pool, 0, "local")
    sch.unroll(ii)
    sch.unroll(jo)
    sch.unroll(r_y)
    sch.unroll(r_x)
    if ji > 1:
        sch.vectorize(jv)
    init = sch.decompose_reduction(pool, r_y)
    il = sch.get_loops(init)[-1]
    if int(sch.get(il).extent) > 1:
        sch.vectorize(il)
    ol = sch.get_loops(ob)[-1]
    if int(sch.get(ol).extent) > 1:
        sch.vectorize(ol)
    sch.compute_at(pad, par)
    pl_ = sch.get_loops(pad)[-1]
    wp = int(sch.get(pl_).extent)
    _, v = sch.split(pl_, [None, max(d for d in range(1, min(wp, 4 * cpu.lanes) + 1) if wp % d == 0)])
    if int(sch.get(v).extent) > 1:
        sch.vectorize(v)
    return _finish(sch.mod["main"], name, True)


def pool2d_reference(x, *, kind, kernel, strides, pads, count_include_pad=False, res=None):
    """Slow numpy reference of pool2d_nchw (float64 sums, float32 result): max over the taps inside the
    image (padding never wins), or their sum / (taps inside, or kh*kw with count_include_pad); + res."""
    import numpy as np

    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    (KH, KW), (sh, sw), (pt, pl, pb, pr) = kernel, strides, pads
    OH, OW = (H + pt + pb - KH) // sh + 1, (W + pl + pr - KW) // sw + 1
    out = np.zeros((N, C, OH, OW))
    for i in range(OH):
        for j in range(OW):
            y0, x0 = i * sh - pt, j * sw - pl
            win = x[:, :, max(y0, 0):min(y0 + KH, H), max(x0, 0):min(x0 + KW, W)]
            if kind == "max":
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                out[:, :, i, j] = win.sum(axis=(2, 3)) / (KH * KW if count_include_pad else win.shape[2] * win.shape[3])
    if res is not None:
        out = out + np.asarray(res, np.float64)
    return out.astype(np.float32)


def elementwise(shapes, fn, out_shape, *, name, cpu) -> tirx.PrimFunc:
    """PrimFunc(inputs of `shapes`..., out): out[idx] = fn(inputs, idx) (float32)."""
    ins = [te.placeholder(tuple(int(v) for v in s), "float32", f"in{k}") for k, s in enumerate(shapes)]
    out = te.compute(tuple(int(v) for v in out_shape), lambda *idx: fn(ins, idx), name="out")
    func = te.create_prim_func(ins + [out])
    if cpu is None:
        return _finish(func, name, False)
    sch = Schedule(tvm.IRModule({"main": func}))
    _elementwise(sch, sch.get_sblock("out"), cpu)
    return _finish(sch.mod["main"], name, True)


def concat_channels(shapes, *, name, cpu) -> tirx.PrimFunc:
    """Concatenate NCHW tensors along channels."""
    offs, total = [], 0
    for s in shapes:
        offs.append(total)
        total += int(s[1])
    N, _, H, W = (int(v) for v in shapes[0])

    def fn(ins, idx):
        n, c, i, j = idx
        v = ins[-1][n, c - offs[-1], i, j]
        for k in range(len(ins) - 2, -1, -1):
            v = tirx.if_then_else(c < offs[k + 1], ins[k][n, c - offs[k], i, j], v)
        return v
    return elementwise(shapes, fn, (N, total, H, W), name=name, cpu=cpu)


def global_avg_pool(x_shape, *, name, cpu) -> tirx.PrimFunc:
    """[N, C, H, W] -> [N, C, 1, 1] mean."""
    N, C, H, W = (int(v) for v in x_shape)
    x = te.placeholder((N, C, H, W), "float32", "x")
    ry, rx = te.reduce_axis((0, H), "ry"), te.reduce_axis((0, W), "rx")
    s = te.compute((N, C), lambda n, c: te.sum(x[n, c, ry, rx], axis=[ry, rx]), name="sum")
    out = te.compute((N, C, 1, 1), lambda n, c, a, b: s[n, c] * tirx.const(1.0 / (H * W), "float32"), name="out")
    func = te.create_prim_func([x, out])
    if cpu is None:
        return _finish(func, name, False)
    sch = Schedule(tvm.IRModule({"main": func}))
    blk = sch.get_sblock("sum")
    n, c, r_y, r_x = sch.get_loops(blk)
    outer = sch.fuse(n, c)
    if N * C * H * W >= cpu.min_parallel:
        sch.parallel(outer)
    sch.reverse_compute_at(sch.get_sblock("out"), outer)
    sch.unroll(r_x)
    return _finish(sch.mod["main"], name, True)


def gemm(x_shape, w_shape, *, trans_b, has_bias, name, cpu) -> tirx.PrimFunc:
    """out[N, M] = x[N, K] @ (w^T if trans_b else w) + bias[M]."""
    N, K = (int(v) for v in x_shape)
    M = int(w_shape[0] if trans_b else w_shape[1])
    x = te.placeholder((N, K), "float32", "x")
    w = te.placeholder(tuple(int(v) for v in w_shape), "float32", "w")
    k = te.reduce_axis((0, K), "k")
    acc = te.compute((N, M), lambda i, j: te.sum(x[i, k] * (w[j, k] if trans_b else w[k, j]), axis=k), name="mm")
    params = [x, w]
    if has_bias:
        b = te.placeholder((M,), "float32", "b")
        params.append(b)
        out = te.compute((N, M), lambda i, j: acc[i, j] + b[j], name="out")
    else:
        out = te.compute((N, M), lambda i, j: acc[i, j], name="out")
    func = te.create_prim_func(params + [out])
    if cpu is None:
        return _finish(func, name, False)
    sch = Schedule(tvm.IRModule({"main": func}))
    mm = sch.get_sblock("mm")
    i, j, kk = sch.get_loops(mm)
    if K % cpu.lanes == 0:
        # vectorised partial sums along K, then a horizontal add
        ko, ki = sch.split(kk, [None, cpu.lanes])
        rf = sch.rfactor(ki, 0)
        sch.vectorize(sch.get_loops(rf)[-1])
        sch.decompose_reduction(rf, sch.get_loops(rf)[2])
    return _finish(sch.mod["main"], name, True)

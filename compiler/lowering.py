"""Per-node lowering of the ONNX importer: each (fused) node becomes call_tir of a PrimFunc from
float_schedule (float ops) or dcpnas.compiler.kernels (binary convs). Used by onnx_import only."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from tvm import relax, tirx

from dcpnas.compiler import float_schedule as fs
from dcpnas.compiler.kernels.schedule_cpu import CpuParams
from dcpnas.compiler.kernels.shapes import geometry
from dcpnas.compiler.graph import Layer, bn_affine
from dcpnas.compiler.graph import attrs as _attrs
from dcpnas.compiler.graph import func_name as _func_name
from dcpnas.compiler.onnx_checks import check_concat, check_gemm, check_rank, check_slice
from dcpnas.errors import CompileError


def _shape(e) -> tuple[int, ...]:
    return tuple(int(v) for v in e.ty.shape)


def cpu_sched(target: Any) -> CpuParams | None:
    """Vector lanes of a CPU target dict; None for CUDA (dlight schedules there)."""
    from dcpnas.compiler.kernels import family
    from dcpnas.compiler.kernels.targets import cpu_params

    fam = family(target)
    if fam == "cuda":
        return None
    return cpu_params(target)


class Lowering:
    def __init__(self, target: Any, consts: dict, *, schedule: bool = True):
        self.target, self.consts = target, consts
        self.cpu = cpu_sched(target) if schedule else None
        self.layers: list[Layer] = []
        self.packed: dict[str, Any] = {}  # tensor name -> its kernels.emit.Packed words (never in env)
        # tensor name -> (parts, emit): a channel Concat emitted only when something reads it as a tensor
        # (binary convs whose pack reads the parts do not: kernels.emit.reads_parts)
        self.deferred: dict[str, tuple[list, Any]] = {}
        # tensor name -> (source name, (r0, c0), emit): a Slice source[:, :, r0:, c0:] emitted only when
        # something reads it as a tensor (a strided 1x1 binary conv gathers from the source instead:
        # kernels.emit.subsampled_geometry)
        self.windows: dict[str, tuple[str, tuple[int, int], Any]] = {}

    # ---- helpers
    def _c(self, name):
        if name not in self.consts or self.consts[name] is None:
            raise CompileError(f"input {name!r} must be a constant initializer")
        return self.consts[name]

    def value(self, env, name):
        """The Relax expression of tensor `name` (a deferred Concat is emitted now)."""
        if name in env:
            return env[name]
        if name in self.deferred:
            env[name] = self.deferred.pop(name)[1]()
            return env[name]
        if name in self.windows:
            env[name] = self.windows.pop(name)[2]()
            return env[name]
        if name in self.consts and self.consts[name] is not None:
            return relax.const(np.ascontiguousarray(self.consts[name]))
        raise CompileError(f"tensor {name!r} is used before it is produced")

    def shape(self, env, name) -> tuple[int, ...]:
        """The shape of tensor `name`, without emitting a deferred Concat or Slice."""
        if name in self.deferred:
            s = [_shape(v) for v in self.deferred[name][0]]
            return (s[0][0], sum(v[1] for v in s), *s[0][2:])
        if name in self.windows:
            n, c, h, w = self.shape(env, self.windows[name][0])
            r0, c0 = self.windows[name][1]
            return (n, c, h - r0, w - c0)
        return _shape(self.value(env, name))

    def _call(self, bb, layer: Layer, func, args, out_shape, dtype="float32"):
        name = _func_name(layer.name)
        gv = bb.add_func(func, name)
        out = bb.emit(relax.call_tir(gv, args, relax.TensorType(tuple(out_shape), dtype)))
        layer.funcs.append({"name": gv.name_hint,
                            "args": [[list(_shape(a)), str(a.ty.dtype)] for a in args]
                            + [[list(out_shape), dtype]]})
        return out

    def _layer(self, node, op, extra=()) -> Layer:
        lay = Layer(node.name or node.output[0], op, [node.name] + [m.name for m in extra if m is not None])
        self.layers.append(lay)
        return lay

    # ---- convolutions (with fused BN / PReLU / residual)
    def _geometry(self, conv):
        a = _attrs(conv)
        k = tuple(a.get("kernel_shape", self._c(conv.input[1]).shape[2:]))
        strides, dil = tuple(a.get("strides", (1, 1))), tuple(a.get("dilations", (1, 1)))
        pads, group = tuple(a.get("pads", (0, 0, 0, 0))), int(a.get("group", 1))
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or len(k) != 2:
            raise CompileError(f"{conv.name}: only 2-D convs with explicit pads are supported")
        return a, k, strides, dil, pads, group

    def _binary_attrs(self, conv):
        from dcpnas.compiler.kernels import BinaryConvAttrs

        a, k, strides, dil, pads, group = self._geometry(conv)
        return BinaryConvAttrs(k, strides, pads, dil, group, int(a["channels_in"]))

    def _in_affine(self, pre, c_in):
        """The affine before a conv (a BN, or the export's threshold Sub) as [C_in] vectors; (None, None)."""
        if pre is None:
            return None, None
        in_s, in_b = bn_affine(self.consts, pre)
        if in_s.size == 1:
            in_s, in_b = np.full(c_in, in_s[0], np.float32), np.full(c_in, in_b[0], np.float32)
        return in_s, in_b

    def conv(self, bb, env, conv, pre, post, act, res, gain=None, feeds=None):
        """feeds: (conv2, pre2) when this binary conv's output (after its epilogue) is the input of binary
        conv conv2 alone (through pre2, conv2's threshold or BN, or None): where the kernels allow it
        (kernels.emit.packed_epilogue_geometry) this conv writes conv2's packed input instead."""
        a, k, strides, dil, pads, group = self._geometry(conv)
        x_name = (pre or conv).input[0]
        packed = self.packed.pop(x_name, None)  # the producer signed and packed x (its affine applied)
        w = self._c(conv.input[1])
        x_name, offset = self._gather(env, x_name, conv, w) if not packed else (x_name, (0, 0))
        parts = self._concat_parts(env, x_name, conv, w, offset)
        x = packed or parts or self.value(env, x_name)
        in_s, in_b = (None, None) if packed else self._in_affine(pre, _shape(x)[1] if not parts else
                                                                 sum(_shape(v)[1] for v in parts))
        co = w.shape[0]
        scale = np.ones(co, np.float32)
        bias = np.zeros(co, np.float32)
        if conv.op_type == "BinaryConv2d":
            scale = self._c(conv.input[2]).astype(np.float32).reshape(-1)
            if len(conv.input) > 3 and conv.input[3]:
                bias = self._c(conv.input[3]).astype(np.float32).reshape(-1)
        elif len(conv.input) > 2 and conv.input[2]:
            bias = self._c(conv.input[2]).astype(np.float32).reshape(-1)
        if post is not None:
            pa, pb = bn_affine(self.consts, post)
            scale, bias = scale * pa, bias * pa + pb
        slope = None
        if act is not None:
            slope = self._c(act.input[1]).astype(np.float32).reshape(-1)
            slope = np.broadcast_to(slope, (co,)).astype(np.float32) if slope.size in (1, co) else None
            if slope is None:
                raise CompileError(f"{act.name}: PRelu slope must be per channel")
        res = tuple(res or ())
        lay = self._layer(conv, conv.op_type, [pre, gain, post, act, *res])
        lay.input_parts = len(parts) if parts else 1
        lay.input_offset = list(offset)
        last = (act or post or conv).output[0]
        residual = []  # the other addend of each fused Add, in graph order
        for add in res:
            residual.append(self.value(env, add.input[1] if add.input[0] == last else add.input[0]))
            last = add.output[0]
        if conv.op_type == "BinaryConv2d":
            from dcpnas.compiler.kernels.emit import emit_binary_conv2d, emit_pm1_packed, packed_epilogue_geometry

            attrs = self._binary_attrs(conv)
            if feeds is not None and not residual and not packed and self.cpu is not None:
                conv2, pre2 = feeds
                if packed_epilogue_geometry(geometry(_shape(x), w, attrs, self.target), self._c(conv2.input[1]),
                                            self._binary_attrs(conv2), self.target) is not None:
                    ps, pb = self._in_affine(pre2, co)
                    p = emit_pm1_packed(bb, x, w, scale, bias, attrs, self.target, in_scale=in_s, in_shift=in_b,
                                        prelu=slope, pack_scale=ps, pack_shift=pb)
                    lay.funcs.extend(_calls_back(bb, p.words, [x]))
                    self.packed[last] = p
                    return {}
            y = emit_binary_conv2d(bb, x, w, scale, bias, attrs, self.target, in_scale=in_s, in_shift=in_b,
                                   prelu=slope, residual=residual, offset=offset)
            lay.funcs.extend(_calls_back(bb, y, ([packed.words] if packed else parts or [x]) + residual))
            return {last: y}
        args = [x, relax.const(w.astype(np.float32))]
        if in_s is not None:
            args += [relax.const(in_s), relax.const(in_b)]
        fuse_bias = post is not None or conv.op_type != "Conv" or (len(conv.input) > 2 and bool(conv.input[2]))
        if fuse_bias:
            args += [relax.const(scale), relax.const(bias)]
        if slope is not None:
            args.append(relax.const(slope))
        if residual:
            args.append(residual[0])
        f = fs.conv2d_nchw(_shape(x), w.shape, strides=strides, pads=pads, dilations=dil, group=group,
                           name=_func_name(lay.name), cpu=self.cpu, in_affine=in_s is not None, bias=fuse_bias,
                           prelu=slope is not None, residual=bool(residual))
        n, _, h, wd = _shape(x)
        oh = (h + pads[0] + pads[2] - dil[0] * (k[0] - 1) - 1) // strides[0] + 1
        ow = (wd + pads[1] + pads[3] - dil[1] * (k[1] - 1) - 1) // strides[1] + 1
        return {last: self._call(bb, lay, f, args, (n, co, oh, ow))}

    def _gather(self, env, name, conv, w) -> tuple[str, tuple[int, int]]:
        """(source, (r0, c0)) when binary conv `conv` reads deferred Slice `name` = source[:, :, r0:, c0:] by
        gathering from the source (kernels.emit.subsampled_geometry), else (name, (0, 0))."""
        if name not in self.windows or conv.op_type != "BinaryConv2d" or self.cpu is None:
            return name, (0, 0)
        from dcpnas.compiler.kernels.emit import subsampled_geometry

        src, offset, _ = self.windows[name]
        ok = subsampled_geometry(self.shape(env, src), w, self._binary_attrs(conv), self.target, offset)
        return (src, offset) if ok is not None else (name, (0, 0))

    def _concat_parts(self, env, name, conv, w, offset) -> list | None:
        """The parts of a deferred Concat `name` when binary conv `conv` packs from them, else None."""
        if name not in self.deferred or conv.op_type != "BinaryConv2d" or self.cpu is None:
            return None
        from dcpnas.compiler.kernels.emit import reads_parts

        reads = reads_parts(self.shape(env, name), w, self._binary_attrs(conv), self.target, offset)
        return self.deferred[name][0] if reads else None

    # ---- every other op
    def node(self, bb, env, n, residual=None):
        """Lower node n; residual: an Add fused after a pool (pool + add in one kernel)."""
        op, a = n.op_type, _attrs(n)
        if op == "Identity":
            return {n.output[0]: self.value(env, n.input[0])}
        if op == "Flatten":
            x = self.value(env, n.input[0])
            s = _shape(x)
            ax = int(a.get("axis", 1)) % len(s)
            shape = (int(np.prod(s[:ax])), int(np.prod(s[ax:])))
            return {n.output[0]: bb.emit(relax.op.reshape(x, shape))}
        lay = self._layer(n, op, [residual])
        name = _func_name(lay.name)
        if op == "BatchNormalization":
            x = self.value(env, n.input[0])
            sa, sb = bn_affine(self.consts, n)
            s = _shape(x)
            f = fs.elementwise([s, (s[1],), (s[1],)], lambda t, i: t[0][i] * t[1][i[1]] + t[2][i[1]], s,
                               name=name, cpu=self.cpu)
            return {n.output[0]: self._call(bb, lay, f, [x, relax.const(sa), relax.const(sb)], s)}
        if op in ("Add", "Sub", "Mul", "PRelu"):
            return {n.output[0]: self._binary(bb, env, n, lay, name)}
        if op == "Relu":
            x = self.value(env, n.input[0])
            s = _shape(x)
            f = fs.elementwise([s], lambda t, i: tirx.max(t[0][i], tirx.const(0.0, "float32")), s,
                               name=name, cpu=self.cpu)
            return {n.output[0]: self._call(bb, lay, f, [x], s)}
        if op == "Concat":
            xs = [self.value(env, i) for i in n.input]
            shapes = [_shape(v) for v in xs]
            check_concat(n, shapes, int(a.get("axis", 1)))
            if int(a.get("axis", 1)) % 4 != 1 or any(len(s) != 4 for s in shapes):
                raise CompileError(f"{n.name}: only channel concatenation of NCHW tensors is supported")
            f = fs.concat_channels(shapes, name=name, cpu=self.cpu)
            out = (shapes[0][0], sum(s[1] for s in shapes), shapes[0][2], shapes[0][3])
            self.deferred[n.output[0]] = (xs, lambda: self._call(bb, lay, f, xs, out))
            return {}
        if op in ("MaxPool", "AveragePool"):
            if residual is None:
                return {n.output[0]: self._pool(bb, env, n, a, lay, name)}
            other = residual.input[1] if residual.input[0] == n.output[0] else residual.input[0]
            return {residual.output[0]: self._pool(bb, env, n, a, lay, name, self.value(env, other))}
        if op == "GlobalAveragePool":
            x = self.value(env, n.input[0])
            s = _shape(x)
            check_rank(n, s)
            f = fs.global_avg_pool(s, name=name, cpu=self.cpu)
            return {n.output[0]: self._call(bb, lay, f, [x], (s[0], s[1], 1, 1))}
        if op == "Slice":
            s = self.shape(env, n.input[0])
            begin, step, out = self._slice_geometry(n, s)

            def emit():
                f = fs.elementwise([s], lambda t, i: t[0][tuple(b + v * p for b, v, p in zip(begin, i, step))],
                                   out, name=name, cpu=self.cpu)
                return self._call(bb, lay, f, [self.value(env, n.input[0])], tuple(out))
            if len(s) == 4 and step == [1] * 4 and out == [s[0], s[1], s[2] - begin[2], s[3] - begin[3]]:
                # drops leading rows/columns only: a window that a strided 1x1 binary conv can gather from
                self.windows[n.output[0]] = (n.input[0], (begin[2], begin[3]), emit)
                return {}
            return {n.output[0]: emit()}
        if op == "Gemm":
            x = self.value(env, n.input[0])
            w = self._c(n.input[1]).astype(np.float32)
            if float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0 or a.get("transA", 0):
                raise CompileError(f"{n.name}: Gemm with alpha/beta != 1 or transA is not supported")
            tb = bool(a.get("transB", 0))
            check_gemm(n, _shape(x), w.shape, tb)
            has_b = len(n.input) > 2 and bool(n.input[2])
            args = [x, relax.const(w)] + ([relax.const(self._c(n.input[2]).astype(np.float32).reshape(-1))]
                                          if has_b else [])
            f = fs.gemm(_shape(x), w.shape, trans_b=tb, has_bias=has_b, name=name, cpu=self.cpu)
            m = w.shape[0] if tb else w.shape[1]
            return {n.output[0]: self._call(bb, lay, f, args, (_shape(x)[0], m))}
        raise CompileError(f"{n.name}: op {op} has no lowering")  # check_supported keeps this unreachable

    def _binary(self, bb, env, n, lay, name):
        xa, xb = self.value(env, n.input[0]), self.value(env, n.input[1])
        sa, sb = _shape(xa), _shape(xb)
        try:
            out = tuple(np.broadcast_shapes(sa, sb))
        except ValueError:
            raise CompileError(f"{n.name}: shapes {sa} and {sb} do not broadcast") from None

        def idx(shape, i):
            i = i[len(i) - len(shape):]
            return tuple(0 if d == 1 else v for d, v in zip(shape, i))

        def fn(t, i):
            u, v = t[0][idx(sa, i)], t[1][idx(sb, i)]
            if n.op_type == "Add":
                return u + v
            if n.op_type == "Mul":
                return u * v
            if n.op_type == "Sub":
                return u - v
            return tirx.Select(u >= 0, u, u * v)
        f = fs.elementwise([sa, sb], fn, out, name=name, cpu=self.cpu)
        return self._call(bb, lay, f, [xa, xb], out)

    def _pool(self, bb, env, n, a, lay, name, residual=None):
        x = self.value(env, n.input[0])
        check_rank(n, _shape(x))
        if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", (1, 1))) \
                or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise CompileError(f"{n.name}: pooling with ceil_mode, dilations or auto_pad is not supported")
        k = tuple(a["kernel_shape"])
        st = tuple(a.get("strides", (1, 1)))
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        kind = "max" if n.op_type == "MaxPool" else "avg"
        N, C, H, W = _shape(x)
        out = (N, C, (H + pads[0] + pads[2] - k[0]) // st[0] + 1, (W + pads[1] + pads[3] - k[1]) // st[1] + 1)
        if residual is not None and _shape(residual) != out:
            raise CompileError(f"{n.name}: the Add after this pool needs an addend of shape {list(out)}, "
                               f"got {list(_shape(residual))}")
        f = fs.pool2d_nchw(_shape(x), kind=kind, kernel=k, strides=st, pads=pads,
                           count_include_pad=bool(a.get("count_include_pad", 0)), name=name, cpu=self.cpu,
                           residual=residual is not None)
        return self._call(bb, lay, f, [x] + ([residual] if residual is not None else []), out)

    def _slice_geometry(self, n, s) -> tuple[list[int], list[int], list[int]]:
        """Slice n of an input of shape s as (begin, step, output shape) per axis."""
        starts, ends = self._c(n.input[1]), self._c(n.input[2])
        axes = self._c(n.input[3]) if len(n.input) > 3 and n.input[3] else np.arange(len(starts))
        steps = self._c(n.input[4]) if len(n.input) > 4 and n.input[4] else np.ones(len(starts), np.int64)
        begin, step, out = [0] * len(s), [1] * len(s), list(s)
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            ax = int(ax) % len(s)
            if sp <= 0:
                raise CompileError(f"{n.name}: Slice with non-positive steps is not supported")
            r = range(s[ax])[slice(int(max(min(st, 2**62), -2**62)), int(max(min(en, 2**62), -2**62)), int(sp))]
            begin[ax], step[ax], out[ax] = r.start, r.step, len(r)
        check_slice(n, out)
        return begin, step, out


def _calls_back(bb, out, stop: list) -> list[dict]:
    """The call_tir bindings that produced `out` from the expressions `stop` (walking bindings backwards),
    in call order."""
    calls, todo, seen = [], [out], set()
    while todo:
        v = todo.pop()
        if not isinstance(v, relax.Var) or any(v.same_as(s) for s in stop) or v.name in seen:
            continue
        seen.add(v.name)
        val = bb.lookup_binding(v)
        if val is None:
            continue
        if isinstance(val, relax.Call) and val.op.name == "relax.call_tir":
            gv, args = val.args[0], list(val.args[1].fields)
            calls.append({"name": gv.name_hint,
                          "args": [[list(_shape(x)), str(x.ty.dtype)] for x in args]
                          + [[list(_shape(v)), str(v.ty.dtype)]]})
            todo.extend(args)
        elif isinstance(val, relax.Call):
            todo.extend(val.args)
    return calls[::-1]

"""ONNX (standard ops + the `dcpnas` domain) -> TVM Relax IRModule of scheduled PrimFuncs (call_tir).

The importer is the project's own (TVM's ONNX frontend dispatches on op_type only and has no custom-op
hook); it uses only public TVM APIs (relax.BlockBuilder, te, call_tir), so no private TVM function is
patched. Supported: SUPPORTED_OPS below; anything else raises one CompileError naming every unsupported
node. Before emission, chains BatchNormalization -> (Conv | dcpnas::BinaryConv2d) -> BatchNormalization
-> PRelu are fused: the first BN becomes the conv's input affine (for the binary conv: the affine before
the sign), the second BN and the PReLU its epilogue. A residual Add after a float conv joins its epilogue.
Binary convs go through dcpnas.compiler.kernels.emit_binary_conv2d. PrimFunc names derive from the ONNX
node names; `Imported.layers` maps every node (group) to its PrimFuncs and argument shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from dcpnas.compiler.graph import Layer, bn_affine  # noqa: F401  (also public here)
from dcpnas.compiler.graph import attrs as _attrs
from dcpnas.errors import CompileError

SUPPORTED_OPS = ("Add", "AveragePool", "BatchNormalization", "Concat", "Constant", "Conv", "Flatten", "Gemm",
                 "GlobalAveragePool", "Identity", "MaxPool", "Mul", "PRelu", "Relu", "Slice", "Sub")
DCPNAS_OPS = ("BinaryConv2d",)


@dataclass
class Imported:
    mod: Any  # tvm.IRModule with "main"
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    layers: list[Layer]


def check_supported(model: onnx.ModelProto) -> None:
    """CompileError listing every node whose (domain, op_type) the importer does not support."""
    bad = []
    for i, n in enumerate(model.graph.node):
        dom = n.domain or ""
        ok = (dom in ("", "ai.onnx") and n.op_type in SUPPORTED_OPS) or (dom == "dcpnas" and n.op_type in DCPNAS_OPS)
        if not ok:
            bad.append(f"{(dom + '::') if dom else ''}{n.op_type} (node {n.name or '#' + str(i)})")
    if bad:
        raise CompileError(f"{len(bad)} unsupported ONNX op(s): " + ", ".join(bad))
    for o in model.opset_import:
        if o.domain == "dcpnas" and o.version != 1:
            raise CompileError(f"dcpnas domain version {o.version} is not supported (this compiler reads version 1)")


class _Fuser:
    """Finds BN -> conv -> BN -> PRelu (-> Add) chains whose intermediates have one consumer."""

    def __init__(self, graph, consts, binary_residual: bool = False):
        self.consts = consts
        self.binary_residual = binary_residual  # binary conv kernels with a residual epilogue (CPU)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in graph.output}
        self.order = {id(n): k for k, n in enumerate(graph.node)}
        self.taken: set[int] = set()  # Adds already fused into a kernel

    def only_consumer(self, tensor):
        c = self.consumers.get(tensor, [])
        return c[0] if len(c) == 1 and tensor not in self.outputs else None

    def const_inputs(self, node, first=1):
        return all(i in self.consts for i in node.input[first:] if i)

    def gain_before(self, conv):
        """The export's Mul(Sub(x, t), gain > 0) before a binary conv: (Sub, Mul), else (None, None).
        A positive per-channel gain never changes the sign the conv takes, so the kernel skips it."""
        mul = self.producer.get(conv.input[0])
        if conv.op_type != "BinaryConv2d" or mul is None or mul.op_type != "Mul" or len(mul.input) != 2 \
                or mul.input[1] not in self.consts or self.only_consumer(mul.output[0]) is not conv:
            return None, None
        gain = self.consts[mul.input[1]]
        sub = self.producer.get(mul.input[0])
        if gain is None or gain.ndim > 3 or any(d != 1 for d in gain.shape[1:]) or not np.all(gain > 0) \
                or not np.all(np.isfinite(gain)) or sub is None or sub.op_type != "Sub" \
                or self.only_consumer(sub.output[0]) is not mul:
            return None, None
        return sub, mul

    def plan(self, conv):
        sub, gain = self.gain_before(conv)
        pre = sub or self.producer.get(conv.input[0])
        # a BN, or (binary convs) the export's sign threshold Sub(x, t), becomes the conv's input affine
        pre_ok = pre is not None and (pre.op_type == "BatchNormalization" or (
            pre.op_type == "Sub" and conv.op_type == "BinaryConv2d" and len(pre.input) == 2))
        if not (pre_ok and self.const_inputs(pre) and self.only_consumer(pre.output[0]) is (gain or conv)):
            pre = gain = None
        post, act, res = None, None, None
        nxt = self.only_consumer(conv.output[0])
        if nxt is not None and nxt.op_type == "BatchNormalization" and self.const_inputs(nxt):
            post, nxt = nxt, self.only_consumer(nxt.output[0])
        if nxt is not None and nxt.op_type == "PRelu" and self.const_inputs(nxt):
            act, nxt = nxt, self.only_consumer(nxt.output[0])
        last = (act or post or conv).output[0]
        # residual adds: one after a float conv, up to two after a binary conv (CPU kernels)
        res = []
        for _ in range(1 if conv.op_type == "Conv" else 2 if self.binary_residual else 0):
            add = self.add_after(last, conv)
            if add is None:
                break
            res.append(add)
            last = add.output[0]
        return pre, post, act, tuple(res) or None, gain

    def add_after(self, last: str, node):
        """The Add that alone consumes `last` when its other addend exists before `node` is emitted
        (emission follows graph order) and no other plan took it; else None."""
        nxt = self.only_consumer(last)
        if nxt is None or nxt.op_type != "Add" or len(nxt.input) != 2 or id(nxt) in self.taken:
            return None
        other = nxt.input[1] if nxt.input[0] == last else nxt.input[0]
        src = self.producer.get(other)
        if other in self.consts or other == last or (src is not None and self.order[id(src)] >= self.order[id(node)]):
            return None
        self.taken.add(id(nxt))
        return nxt


def import_onnx(model: onnx.ModelProto, target: Any, *, schedule: bool = True) -> Imported:
    """Lower `model` to a Relax IRModule for the TVM target dict `target`.

    Input: one float32 NCHW graph input of static shape. schedule=False leaves float PrimFuncs unscheduled
    (the CUDA pipeline schedules them with dlight; tests compare both)."""
    from tvm import relax

    from dcpnas.compiler import lowering, onnx_checks

    check_supported(model)
    model = onnx_checks.prepare(model)  # a checked copy: unnamed nodes named, field forms normalised
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"]) if "value" in _attrs(n) else None
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1 or len(g.output) != 1:
        raise CompileError(f"expected one graph input and one output, got {len(inputs)} and {len(g.output)}")
    inp = inputs[0]
    dims = inp.type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") for d in dims):
        raise CompileError(f"input {inp.name!r} needs a static shape (export with a fixed batch size)")
    in_shape = tuple(int(d.dim_value) for d in dims)
    if inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise CompileError(f"input {inp.name!r} must be float32")
    low = lowering.Lowering(target, consts, schedule=schedule)
    from dcpnas.compiler.kernels import family

    fuser = _Fuser(g, consts, binary_residual=family(target) != "cuda")
    absorbed: set[int] = set()
    plans = {}
    for n in g.node:
        if n.op_type in ("Conv", "BinaryConv2d"):
            plan = fuser.plan(n)
            plans[id(n)] = plan
            absorbed.update(id(m) for m in plan[:3] + plan[4:] if m is not None)
            absorbed.update(id(m) for m in plan[3] or ())
        elif n.op_type in ("MaxPool", "AveragePool") and fuser.binary_residual:
            add = fuser.add_after(n.output[0], n)  # pool + add in one kernel
            if add is not None:
                plans[id(n)] = add
                absorbed.add(id(add))
    feeds = _binary_feeds(g, fuser, plans)
    bb = relax.BlockBuilder()
    x = relax.Var(inp.name, relax.TensorType(in_shape, "float32"))
    env = {inp.name: x}
    with bb.function("main", [x]):
        with bb.dataflow():
            for n in g.node:
                if id(n) in absorbed or n.op_type == "Constant":
                    continue
                plan = plans.get(id(n))
                if plan is not None and n.op_type in ("MaxPool", "AveragePool"):
                    outs = low.node(bb, env, n, residual=plan)
                elif plan is not None:
                    outs = low.conv(bb, env, n, *plan, feeds=feeds.get(id(n)))
                else:
                    outs = low.node(bb, env, n)
                env.update(outs)
            out = bb.emit_output(low.value(env, g.output[0].name))
        bb.emit_func_output(out)
    mod = bb.get()
    out_shape = tuple(int(v) for v in out.ty.shape)
    return Imported(mod, inp.name, in_shape, g.output[0].name, out_shape, low.layers)


def _binary_feeds(graph, fuser: _Fuser, plans: dict) -> dict:
    """{id(binary conv): (conv2, pre2)} where the conv's fused output (no residual add) is consumed by
    binary conv conv2 alone, directly or through conv2's fused input affine pre2 (Lowering.conv's feeds)."""
    by_pre = {id(p[0]): m for m in graph.node if m.op_type == "BinaryConv2d" and (p := plans.get(id(m))) and p[0]}
    feeds = {}
    for n in graph.node:
        plan = plans.get(id(n))
        if n.op_type != "BinaryConv2d" or plan is None or plan[3]:
            continue
        pre, post, act, _, _ = plan
        nxt = fuser.only_consumer((act or post or n).output[0])
        if nxt is None:
            continue
        if id(nxt) in by_pre:
            feeds[id(n)] = (by_pre[id(nxt)], nxt)
        elif nxt.op_type == "BinaryConv2d" and plans.get(id(nxt)) and plans[id(nxt)][0] is None:
            feeds[id(n)] = (nxt, None)
    return feeds

"""Checks of ONNX graphs from the field, before and during import: every case the importer cannot
lower correctly gets one CompileError line naming the node, instead of a traceback or wrong numbers.

    prepare(model) -> model     before import: names unnamed nodes, checks attributes, and rewrites the
                                legal forms the lowering would read differently (scalar Gemm biases) on a
                                copy; the caller's model is never changed
    check_rank / check_concat / check_slice / check_gemm   at node entry, once input shapes are known
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from dcpnas.errors import CompileError


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """A checked copy of `model` ready for import (see module docstring)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, n in enumerate(g.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"  # error messages and PrimFunc names need one
    inits = {t.name: t for t in g.initializer}
    opset = _opset(m)
    for n in g.node:
        a = _attrs(n)
        if n.domain == "dcpnas" and n.op_type == "BinaryConv2d" and "channels_in" not in a:
            raise CompileError(f"{n.name}: dcpnas::BinaryConv2d needs the attribute channels_in (re-export the model "
                               f"with dcpnas.compiler.export)")
        if n.op_type in ("MaxPool", "AveragePool"):
            k = a.get("kernel_shape", ())
            if len(k) != 2:
                raise CompileError(f"{n.name}: {n.op_type} with a {len(k)}-D kernel; only 2-D (NCHW) pooling is supported")
            if len([o for o in n.output if o]) > 1:
                raise CompileError(f"{n.name}: MaxPool with an Indices output is not supported")
        if n.op_type == "PRelu" and len(n.input) > 1 and n.input[1] in inits:
            slope = numpy_helper.to_array(inits[n.input[1]])
            if slope.ndim == 1 and slope.size > 1:
                if opset >= 7:  # ONNX >= 7 broadcasts a [C] slope over the last axis, not over channels
                    raise CompileError(f"{n.name}: PRelu slope of shape {list(slope.shape)} broadcasts over the width "
                                       f"(ONNX opset {opset}); give a per-channel slope the shape [C, 1, 1]")
                # opset 6 reads a [C] slope per channel, but ONNX Runtime (the parity reference) no longer runs
                # PRelu-6 and onnx.version_converter keeps the [C] shape, which then means the width
                raise CompileError(f"{n.name}: opset-{opset} PRelu with a per-channel slope of shape "
                                   f"{list(slope.shape)}: ONNX Runtime cannot run it for parity; re-export at opset "
                                   f">= 7 with the slope shaped [C, 1, 1]")
        if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2]:
            _gemm_bias(n, a, inits)
    return m


def _gemm_bias(n, a, inits) -> None:
    """The lowering adds a bias of shape [N]: accept [N], [1, N] and scalars (expanded), refuse the rest."""
    if n.input[1] not in inits or n.input[2] not in inits:
        raise CompileError(f"{n.name}: Gemm needs constant weights and bias")
    w = inits[n.input[1]]
    if len(w.dims) != 2:
        raise CompileError(f"{n.name}: Gemm weight must be 2-D, got shape {list(w.dims)}")
    cols = int(w.dims[0] if a.get("transB", 0) else w.dims[1])
    b = numpy_helper.to_array(inits[n.input[2]])
    if b.size == 1 and cols != 1:
        inits[n.input[2]].CopyFrom(numpy_helper.from_array(np.full(cols, b.reshape(-1)[0], b.dtype), n.input[2]))
    elif tuple(b.shape) not in ((cols,), (1, cols)):
        raise CompileError(f"{n.name}: Gemm bias of shape {list(b.shape)} does not match the {cols} outputs "
                           f"(supported: [{cols}], [1, {cols}] or a scalar)")


def check_rank(node, shape: tuple[int, ...], rank: int = 4) -> None:
    if len(shape) != rank:
        raise CompileError(f"{node.name}: {node.op_type} needs a {rank}-D input, got shape {list(shape)}")


def check_concat(node, shapes: list[tuple[int, ...]], axis: int) -> None:
    """All inputs of the same rank, equal except along `axis`."""
    ranks = {len(s) for s in shapes}
    if len(ranks) != 1:
        raise CompileError(f"{node.name}: Concat of inputs of different ranks {[list(s) for s in shapes]}")
    ax = axis % len(shapes[0])
    others = {tuple(d for k, d in enumerate(s) if k != ax) for s in shapes}
    if len(others) != 1:
        raise CompileError(f"{node.name}: Concat inputs differ outside axis {axis}: {[list(s) for s in shapes]}")


def check_slice(node, out_shape) -> None:
    if any(d <= 0 for d in out_shape):
        raise CompileError(f"{node.name}: Slice gives an empty tensor (shape {list(out_shape)})")


def check_gemm(node, x_shape: tuple[int, ...], w_shape: tuple[int, ...], trans_b: bool) -> None:
    k = w_shape[1] if trans_b else w_shape[0]
    if len(x_shape) != 2 or x_shape[1] != k:
        raise CompileError(f"{node.name}: Gemm input of shape {list(x_shape)} does not fit weights {list(w_shape)}"
                           f"{' (transB)' if trans_b else ''}; expected [N, {k}]")

"""Graph types and helpers shared by the ONNX importer (onnx_import) and the per-node lowering (lowering):
the emitted Layer record, ONNX attribute reading, PrimFunc naming, and the per-channel affine of a
BatchNormalization (or of the export's sign threshold Sub) that kernels fuse before a conv."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from dcpnas.errors import CompileError


@dataclass
class Layer:
    """One emitted layer: ONNX node names fused into it, op label and its PrimFunc calls
    (name, [(shape, dtype) of every argument incl. the output])."""

    name: str
    op: str
    nodes: list[str]
    funcs: list[dict] = field(default_factory=list)
    input_parts: int = 1  # binary convs: the tensors its first kernel reads as its input (a Concat's parts)
    input_offset: list[int] = field(default_factory=lambda: [0, 0])  # binary convs: those tensors are
    # [N, C, H, W] and the conv's input is their [:, :, r0:, c0:] (a Slice gathered by the pack)


def attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def func_name(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", s).strip("_")
    return ("l_" + s) if not s or s[0].isdigit() else s


def bn_affine(consts, node) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization (inference) as y = x * a + b per channel (float32, PyTorch's folding).
    Sub(x, t) (the export's sign threshold) as a = 1, b = -t: x * 1 + (-t) rounds exactly as x - t."""
    if node.op_type == "Sub":
        t = consts[node.input[1]].astype(np.float32)
        if t.ndim > 3 or any(d != 1 for d in t.shape[1:]):
            raise CompileError(f"{node.name}: a threshold before a binary conv must be per channel [C, 1, 1]")
        t = t.reshape(-1)
        return np.ones_like(t), (-t).astype(np.float32)
    g, b, mu, var = (consts[i].astype(np.float32) for i in node.input[1:5])
    eps = float(attrs(node).get("epsilon", 1e-5))
    a = (g / np.sqrt(var + np.float32(eps))).astype(np.float32)
    return a, (b - mu * a).astype(np.float32)

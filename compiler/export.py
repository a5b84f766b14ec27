"""PyTorch network (or any of its modules) -> ONNX in the frozen `dcpnas` schema (DESIGN.md).

The graph is written directly with onnx.helper by walking the module tree (no tracing): every module
type of dcpnas.operations / dcpnas.model has one emitter, an unknown type raises CompileError.

Mapping (all tensors NCHW float32, modules in eval mode: BatchNorm uses its running statistics):
- BinaryConv2d with binary activations -> `dcpnas::BinaryConv2d(X, W, scale)`: W = sign bits packed
  LSB-first along input channels (bit 1 = -1), scale = beta. Inside a ConvUnit, the BatchNorm before
  the conv and the sign become one per-channel threshold (sign_threshold): `Sub(x, t)` then `Mul(., gain)`
  (gain = |BN slope| > 0: it never changes a sign, the importer drops it, float twins keep the BN) feed
  the op, and the weight bits of channels whose BN slope is negative are flipped. The BatchNorm after the conv and
  the PReLU stay standard nodes (the importer fuses them into the kernel).
- BinaryConv2d with real activations (policy `authors`: depthwise, preprocessing, FactorizedReduce)
  -> a standard float `Conv` with weights beta * sign(w) (the frozen BinaryConv2d always binarises X).
- Stem/float convs -> Conv; pools -> MaxPool / AveragePool(count_include_pad=0); FactorizedReduce's
  shift x[:, :, 1:, 1:] -> Slice; `none` -> Mul by 0; classifier -> GlobalAveragePool, Flatten, Gemm.
Each dcpnas op ships as a model-local FunctionProto of standard ops, so stock ONNX Runtime runs the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from dcpnas.errors import CompileError

DOMAIN = "dcpnas"
DOMAIN_VERSION = 1
OPSET = 18  # BitwiseAnd / BitShift on uint8 in the function body


def pack_sign_bits(w: np.ndarray) -> np.ndarray:
    """Schema packing of weight signs: w [Co, Cin/g, kh, kw] float -> uint8 [Co, ceil(Cin/g / 8), kh, kw];
    channel 8b+j is bit j of byte b (LSB first); bit 1 means sign -1 (w < 0), padding bits 0."""
    bits = (np.asarray(w) < 0).astype(np.uint8)
    return np.packbits(bits, axis=1, bitorder="little")


def unpack_sign_bits(packed: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of pack_sign_bits: uint8 [Co, nb, kh, kw] -> float32 +-1 [Co, channels, kh, kw]."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), axis=1, bitorder="little")[:, :channels]
    return (1 - 2 * bits.astype(np.float32)).astype(np.float32)


def sign_threshold(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BatchNorm (eval) followed by sign, as one per-channel threshold: sign(bn(x))[c] = s[c] * sign(x[c] - t[c])
    with s = -1 where the BN's slope a is negative. -> (t float32 [C], negative bool [C], gain float32 [C]):
    bn(x) = s * gain * (x - t) (gain = |a|, 1 where a = 0), which the export keeps (Mul) for the float twin.

    Computed once here, in float64, rounded to float32: export (a `Sub` before the binary conv, weight
    bits of negative channels flipped), the PyTorch reference (parity.folded_signs) and TVM then compare
    the same float32 x with the same float32 t, so the pre-sign arithmetic is identical in all three.
    A zero slope gives a constant sign (t = -inf or +inf)."""
    if bn.running_mean is None:
        raise CompileError("BatchNorm2d without running statistics cannot be folded into a sign threshold")
    C = bn.num_features
    g = bn.weight.detach().double().cpu().numpy() if bn.affine else np.ones(C)
    b = bn.bias.detach().double().cpu().numpy() if bn.affine else np.zeros(C)
    mu = bn.running_mean.detach().double().cpu().numpy()
    sd = np.sqrt(bn.running_var.detach().double().cpu().numpy() + float(bn.eps))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mu - b * sd / g
    t = np.where(g == 0, np.where(b >= 0, -np.inf, np.inf), t)
    if not np.all(np.isfinite(t) | (g == 0)):
        raise CompileError("BatchNorm2d statistics are not finite: cannot fold them into a sign threshold")
    gain = np.where(g == 0, 1.0, np.abs(g) / sd)
    return t.astype(np.float32), g < 0, gain.astype(np.float32)


def flip_input_channels(w: np.ndarray, negative: np.ndarray, groups: int) -> np.ndarray:
    """Weights [Co, Cin/g, kh, kw] with the sign of every input channel in `negative` [Cin] flipped
    (sign(w) * s, s = -1 there), so that conv(s * sign(x), sign(w)) = conv(sign(x), sign(w) * s)."""
    w = np.asarray(w)
    co, cg = w.shape[:2]
    s = np.where(np.asarray(negative).reshape(groups, cg), -1.0, 1.0)  # [g, cg]
    s = np.repeat(s, co // groups, axis=0)  # output channel o belongs to group o // (co / g)
    sw = np.where(w >= 0, 1.0, -1.0) * s[:, :, None, None]
    return sw.astype(np.float32)


def _ref(name: str, ref: str, kind: int) -> onnx.AttributeProto:
    a = helper.make_attribute_ref(name, kind)
    a.ref_attr_name = ref
    return a


def binary_conv2d_function() -> onnx.FunctionProto:
    """dcpnas::BinaryConv2d(X, W, scale[, bias]) as standard ops:
    Conv(where(X >= 0, 1, -1), (1 - 2 * bits(W))[:, :C_in/group] * scale[:, None, None, None], bias)."""
    n = helper.make_node

    def c(name, arr):
        return n("Constant", [], [name], value=numpy_helper.from_array(np.asarray(arr), name))

    ints, one_int = onnx.AttributeProto.INTS, onnx.AttributeProto.INT
    cin = n("Constant", [], ["cin"])
    cin.attribute.append(_ref("value_int", "channels_in", one_int))
    grp = n("Constant", [], ["grp"])
    grp.attribute.append(_ref("value_int", "group", one_int))
    conv = n("Conv", ["x_sign", "w_eff", "bias"], ["Y"])
    conv.attribute.extend([_ref(a, a, ints) for a in ("kernel_shape", "strides", "pads", "dilations")])
    conv.attribute.append(_ref("group", "group", one_int))
    body = [
        c("zero", np.array(0, np.float32)), c("one", np.array(1, np.float32)), c("mone", np.array(-1, np.float32)),
        n("GreaterOrEqual", ["X", "zero"], ["x_ge"]),
        n("Where", ["x_ge", "one", "mone"], ["x_sign"]),
        # unpack W [Co, nb, kh, kw] -> bits [Co, nb, 8, kh, kw] -> [Co, nb*8, kh, kw]
        c("ax2", np.array([2], np.int64)),
        n("Unsqueeze", ["W", "ax2"], ["w5"]),
        c("shifts", np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1, 1)),
        n("BitShift", ["w5", "shifts"], ["w_sh"], direction="RIGHT"),
        c("one_u8", np.array(1, np.uint8)),
        n("BitwiseAnd", ["w_sh", "one_u8"], ["w_bit"]),
        n("Shape", ["W"], ["w_shape"]),
        c("i0", np.array([0], np.int64)), c("i1", np.array([1], np.int64)),
        c("i2", np.array([2], np.int64)), c("i4", np.array([4], np.int64)), c("im1", np.array([-1], np.int64)),
        n("Slice", ["w_shape", "i0", "i1"], ["co"]),
        n("Slice", ["w_shape", "i2", "i4"], ["khw"]),
        n("Concat", ["co", "im1", "khw"], ["w_new_shape"], axis=0),
        n("Reshape", ["w_bit", "w_new_shape"], ["w_bits4"]),
        n("Cast", ["w_bits4"], ["w_bitsf"], to=TensorProto.FLOAT),
        c("two", np.array(2, np.float32)),
        n("Mul", ["w_bitsf", "two"], ["w_2b"]),
        n("Sub", ["one", "w_2b"], ["w_pm"]),
        # keep the first C_in / group channels (the rest are padding bits)
        cin, grp,
        n("Div", ["cin", "grp"], ["cin_g0"]),
        n("Unsqueeze", ["cin_g0", "i0"], ["cin_g"]),
        n("Slice", ["w_pm", "i0", "cin_g", "i1"], ["w_sign"]),
        c("scale_shape", np.array([-1, 1, 1, 1], np.int64)),
        n("Reshape", ["scale", "scale_shape"], ["scale4"]),
        n("Mul", ["w_sign", "scale4"], ["w_eff"]),
        conv,
    ]
    return helper.make_function(
        DOMAIN, "BinaryConv2d", ["X", "W", "scale", "bias"], ["Y"], body,
        opset_imports=[helper.make_opsetid("", OPSET)],
        attributes=["kernel_shape", "strides", "pads", "dilations", "group", "channels_in"],
    )


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", name) or "root"


class _Graph:
    """Collects nodes and initializers while the module tree is walked. Names are module paths."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.used: set[str] = set()
        self.uses_binary = False

    def fresh(self, base: str) -> str:
        base, k = _clean(base), 0
        name = base
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return name

    def init(self, name: str, arr) -> str:
        if isinstance(arr, torch.Tensor):
            arr = arr.detach().cpu().numpy()
        name = self.fresh(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        name = self.fresh(name)
        out = self.fresh(name + ":0")
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, domain=domain, **attrs))
        return out

    # ---- emitters, one per module type; x is the input tensor name, p the module path
    def emit(self, m: nn.Module, x: str, p: str) -> str:
        from dcpnas import model as M
        from dcpnas import operations as O
        from dcpnas.binary import BinaryConv2d

        table = [
            (M.Network, self.network), (M.Stem, self.sequential_children), (M.ImageNetStem, self.imagenet_stem),
            (M.EvalCell, None),
            (M.Classifier, self.classifier), (O.ConvUnit, self.conv_unit), (O.SepBlock, self.sep_block),
            (O.SepConv, lambda m, x, p: self.emit(m.op, x, f"{p}.op")),
            (O.DilConv, lambda m, x, p: self.emit(m.op, x, f"{p}.op")),
            (O.FactorizedReduce, self.factorized_reduce), (O.Pool, self.pool), (O.Identity, lambda m, x, p: x),
            (O.Zero, self.zero), (BinaryConv2d, self.binary_conv), (nn.Conv2d, self.conv),
            (nn.BatchNorm2d, self.batchnorm), (O.PReLU, self.prelu), (nn.Sequential, self.sequential_children),
            (nn.Identity, lambda m, x, p: x), (nn.ReLU, lambda m, x, p: self.node("Relu", [x], f"{p}.relu")),
            (nn.MaxPool2d, lambda m, x, p: self.pool(O.Pool("max", m.stride), x, p)),
        ]
        for cls, fn in table:
            if type(m) is cls and fn is not None:
                return fn(m, x, p)
        raise CompileError(f"cannot export module {p or 'root'} of type {type(m).__name__} to ONNX "
                           f"(supported: the dcpnas network modules, Conv2d, BatchNorm2d, PReLU, Sequential)")

    def imagenet_stem(self, m, x, p):
        """The stem alone (an OpKey module of `dcpnas lut`): s1."""
        return self.stem_states(m, x, p)[1]

    def stem_states(self, m, x, p):
        """(s0, s1) of the first cell, as the model's `stem.states(x)`."""
        from dcpnas.model import ImageNetStem

        if isinstance(m, ImageNetStem):
            s0 = self.emit(m.stem0, x, f"{p}.stem0")
            return s0, self.emit(m.stem1, s0, f"{p}.stem1")
        y = self.emit(m, x, p)
        return y, y

    def sequential_children(self, m, x, p):
        for name, child in m.named_children():
            x = self.emit(child, x, f"{p}.{name}" if p else name)
        return x

    def network(self, m, x, p):
        s0, s1 = self.stem_states(m.stem, x, "stem")
        for i, cell in enumerate(m.cells):
            s0, s1 = s1, self.cell(cell, s0, s1, f"cells.{i}")
        return self.emit(m.classifier, s1, "classifier")

    def cell(self, m, s0, s1, p):
        states = [self.emit(m.pre0, s0, f"{p}.pre0"), self.emit(m.pre1, s1, f"{p}.pre1")]
        for j in range(len(m.ops) // 2):
            a, b = 2 * j, 2 * j + 1
            ya = self.emit(m.ops[a], states[m.inputs[a]], f"{p}.ops.{a}")
            yb = self.emit(m.ops[b], states[m.inputs[b]], f"{p}.ops.{b}")
            states.append(self.node("Add", [ya, yb], f"{p}.node{j + 2}"))
        return self.node("Concat", [states[i] for i in m.concat], f"{p}.concat", axis=1)

    def classifier(self, m, x, p):
        g = self.node("GlobalAveragePool", [x], f"{p}.gap")
        f = self.node("Flatten", [g], f"{p}.flatten", axis=1)
        return self.linear(m.linear, f, f"{p}.linear")

    def linear(self, m, x, p):
        ins = [x, self.init(f"{p}.weight", m.weight)]
        if m.bias is not None:
            ins.append(self.init(f"{p}.bias", m.bias))
        return self.node("Gemm", ins, p, transB=1)

    def conv_unit(self, m, x, p):
        from dcpnas.binary import BinaryConv2d

        names = ("bn_in", "conv", "bn_out", "act")
        if type(m.conv) is BinaryConv2d and m.conv.binary_act and m.conv.binary_weight:
            # BN -> sign folded into one threshold: Sub(x, t), weight signs of negative-slope channels flipped;
            # the positive gain |a| (Mul) never changes a sign (kernels skip it) but keeps the BN for float twins
            t, neg, gain = sign_threshold(m.bn_in)
            x = self.node("Sub", [x, self.init(f"{p}.threshold", t.reshape(-1, 1, 1))], f"{p}.threshold")
            x = self.node("Mul", [x, self.init(f"{p}.gain", gain.reshape(-1, 1, 1))], f"{p}.gain")
            x = self.binary_conv(m.conv, x, f"{p}.conv", negative=neg)
            names = ("bn_out", "act")
        for name in names:
            x = self.emit(getattr(m, name), x, f"{p}.{name}")
        return x

    def sep_block(self, m, x, p):
        y = self.emit(m.pw, self.emit(m.dw, x, f"{p}.dw"), f"{p}.pw")
        return self.node("Add", [y, x], f"{p}.residual") if m.residual else y

    def factorized_reduce(self, m, x, p):
        y1 = self.emit(m.conv_1, x, f"{p}.conv_1")
        xs = self.slice_hw(x, 1, None, 1, f"{p}.shift")
        y2 = self.emit(m.conv_2, xs, f"{p}.conv_2")
        return self.node("Concat", [y1, y2], f"{p}.concat", axis=1)

    def slice_hw(self, x, start, end, step, p):
        big = np.iinfo(np.int64).max
        ins = [x, self.init(f"{p}.starts", np.array([start, start], np.int64)),
               self.init(f"{p}.ends", np.array([end if end is not None else big] * 2, np.int64)),
               self.init(f"{p}.axes", np.array([2, 3], np.int64)),
               self.init(f"{p}.steps", np.array([step, step], np.int64))]
        return self.node("Slice", ins, p)

    def pool(self, m, x, p):
        pool = getattr(m, "pool", m)
        k, s, pad = (_int(pool.kernel_size), _int(pool.stride), _int(pool.padding))
        attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4)
        if getattr(m, "kind", "max") == "max":
            return self.node("MaxPool", [x], f"{p}.max_pool", **attrs)
        if pool.count_include_pad or pool.ceil_mode or pool.divisor_override:
            raise CompileError(f"{p}: only AvgPool2d(count_include_pad=False, ceil_mode=False) is exported")
        return self.node("AveragePool", [x], f"{p}.avg_pool", count_include_pad=0, **attrs)

    def zero(self, m, x, p):
        if m.stride != 1:
            x = self.slice_hw(x, 0, None, m.stride, f"{p}.stride")
        return self.node("Mul", [x, self.init(f"{p}.zero", np.array(0, np.float32))], f"{p}.zero")

    def conv(self, m, x, p):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise CompileError(f"{p}: only numeric zero padding is exported")
        ins = [x, self.init(f"{p}.weight", m.weight)]
        if m.bias is not None:
            ins.append(self.init(f"{p}.bias", m.bias))
        return self.node("Conv", ins, p, **_conv_attrs(m.kernel_size, m.stride, m.padding, m.dilation, m.groups))

    def binary_conv(self, m, x, p, negative=None):
        attrs = _conv_attrs(m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
        w = m.weight.detach()
        if not m.binary_weight:
            raise CompileError(f"{p}: BinaryConv2d with real weights (training stage 1) cannot be exported as a 1-bit op")
        if not m.binary_act:
            # `authors` policy: real activations x binary weights -> a float Conv with beta * sign(w)
            weff = ((w >= 0).float() * 2 - 1) * m.scale.detach().view(-1, 1, 1, 1)
            return self.node("Conv", [x, self.init(f"{p}.weight", weff)], p, **attrs)
        self.uses_binary = True
        w = w.cpu().numpy()
        if negative is not None and np.any(negative):
            w = flip_input_channels(w, negative, m.groups)
        ins = [x, self.init(f"{p}.weight_bits", pack_sign_bits(w)),
               self.init(f"{p}.scale", m.scale.detach().float())]
        return self.node("BinaryConv2d", ins, p, domain=DOMAIN, channels_in=m.in_channels, **attrs)

    def batchnorm(self, m, x, p):
        if m.running_mean is None:
            raise CompileError(f"{p}: BatchNorm2d without running statistics cannot be exported")
        C = m.num_features
        g = m.weight if m.affine else torch.ones(C)
        b = m.bias if m.affine else torch.zeros(C)
        ins = [x, self.init(f"{p}.weight", g), self.init(f"{p}.bias", b),
               self.init(f"{p}.running_mean", m.running_mean), self.init(f"{p}.running_var", m.running_var)]
        return self.node("BatchNormalization", ins, p, epsilon=float(m.eps))

    def prelu(self, m, x, p):
        slope = m.weight.detach().reshape(-1, 1, 1)
        return self.node("PRelu", [x, self.init(f"{p}.slope", slope)], p)


def _int(v) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise CompileError(f"non-square pooling/conv parameter {v} is not supported")
        return int(v[0])
    return int(v)


def _conv_attrs(k, s, pad, d, g) -> dict:
    k, s, pad, d = (_int(k), _int(s), _int(pad), _int(d))
    return dict(kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4, dilations=[d, d], group=int(g))


def build_onnx(module: nn.Module, input_shape: tuple[int, ...], *, output_name: str | None = None,
               graph_name: str = "dcpnas") -> onnx.ModelProto:
    """The ONNX model of `module` (eval mode) for a static input [N, C, H, W] named `input`.
    Output is `logits` for a whole Network, else `output`. Checked with full_check (shape inference)."""
    from dcpnas.model import Network

    if len(input_shape) != 4:
        raise CompileError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    was_training = module.training
    module.eval()
    try:
        g = _Graph()
        g.used.add("input")
        with torch.no_grad():
            out = g.emit(module, "input", "")
    finally:
        module.train(was_training)
    output_name = output_name or ("logits" if isinstance(module, Network) else "output")
    if out == "input":  # an identity module: the graph still needs a node
        out = g.node("Identity", ["input"], "identity")
    g.nodes.append(helper.make_node("Identity", [out], [output_name], name=f"{output_name}.out"))
    graph = helper.make_graph(
        g.nodes, graph_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)],
        initializer=g.inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    functions = []
    if g.uses_binary:
        opsets.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        functions.append(binary_conv2d_function())
    model = helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name="dcpnas")
    model.ir_version = 9
    # the output's static shape, from ONNX shape inference (model-local functions are inferred too)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except onnx.shape_inference.InferenceError as e:
        raise CompileError(f"exported ONNX model fails shape inference: {str(e).splitlines()[0]}") from None
    out_vi = next(o for o in inferred.graph.output if o.name == output_name)
    if not out_vi.type.tensor_type.shape.dim:
        raise CompileError("could not infer the output shape of the exported model")
    model.graph.output[0].CopyFrom(out_vi)
    check(model)
    return model


def check(model: onnx.ModelProto) -> None:
    """onnx.checker.check_model(full_check=True); CompileError on failure."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise CompileError(f"exported ONNX model fails the checker: {str(e).splitlines()[0]}") from None


def export_onnx(module: nn.Module, input_shape: tuple[int, ...], path, **kw) -> Path:
    """Write build_onnx(module, input_shape) to `path` (atomically). Returns the path."""
    from dcpnas.io import atomic_write_bytes

    model = build_onnx(module, input_shape, **kw)
    return atomic_write_bytes(path, model.SerializeToString())

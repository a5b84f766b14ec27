"""ONNX -> Relax importer: every op converter (and the fused chains) against ONNX Runtime, built with TVM."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import helper, numpy_helper
from tvm import relax

from dcpnas.compiler.build import unscheduled_funcs
from dcpnas.compiler.export import DOMAIN, binary_conv2d_function, pack_sign_bits
from dcpnas.compiler.onnx_import import import_onnx
from dcpnas.errors import CompileError
from dcpnas.targets import get_target

pytestmark = pytest.mark.tvm
TARGET = get_target("x86-avx2").tvm  # AVX2: runs on every x86 CI machine
RNG = np.random.default_rng(0)


def f32(*shape, lo=None):
    a = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(a) + lo if lo is not None else a


class G:
    """A tiny ONNX graph builder: input 'input' [1, C, H, W] -> output of the last node."""

    def __init__(self, shape):
        self.shape, self.nodes, self.inits, self.k = shape, [], [], 0

    def c(self, arr):
        self.k += 1
        name = f"c{self.k}"
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op_type, inputs, domain="", **attrs):
        self.k += 1
        out = f"t{self.k}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"n{self.k}_{op_type}", domain=domain, **attrs))
        return out

    def bn(self, x, c):
        return self.op("BatchNormalization", [x, self.c(f32(c)), self.c(f32(c)), self.c(f32(c)), self.c(f32(c, lo=0.5))],
                       epsilon=1e-5)

    def model(self, out):
        self.nodes.append(helper.make_node("Identity", [out], ["output"], name="out"))
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("input", 1, self.shape)],
                              [helper.make_tensor_value_info("output", 1, None)], initializer=self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                              functions=[binary_conv2d_function()])
        m.ir_version = 9
        return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def check_against_ort(model, rtol=1e-5):
    onnx.checker.check_model(model, full_check=True)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = f32(*shape)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    imp = import_onnx(model, TARGET)
    assert unscheduled_funcs(imp.mod) == []
    ex = tvm.compile(imp.mod, target=tvm.target.Target(TARGET))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref).max())))
    return imp


def test_float_conv_chains():
    """Conv fused with BN before (zero padding after the affine), BN after, PReLU and residual Add;
    depthwise with dilation, strided dense conv with bias, plain 1x1."""
    g = G([1, 8, 12, 12])
    x = g.op("Relu", ["input"])
    h = g.bn(x, 8)
    y = g.op("Conv", [h, g.c(f32(8, 1, 3, 3))], kernel_shape=[3, 3], pads=[2, 2, 2, 2], dilations=[2, 2], group=8)
    y = g.op("PRelu", [g.bn(y, 8), g.c(f32(8, 1, 1))])
    y = g.op("Add", [y, x])  # residual
    y = g.op("Conv", [y, g.c(f32(16, 8, 5, 5)), g.c(f32(16))], kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[2, 2])
    y = g.op("Conv", [y, g.c(f32(12, 16, 1, 1))], kernel_shape=[1, 1])
    imp = check_against_ort(g.model(y))
    fused = [layer for layer in imp.layers if layer.op == "Conv"]
    assert len(fused[0].nodes) == 5  # conv + bn_in + bn_out + prelu + add


def test_binary_conv_fused_chain():
    """BN -> dcpnas::BinaryConv2d -> BN -> PReLU through the XNOR kernel (dense, C not a multiple
    of 8) and the fused ±1 kernel (depthwise, kernels/depthwise.py)."""
    g = G([1, 12, 10, 10])
    w = f32(16, 12, 3, 3)
    y = g.op("BinaryConv2d", [g.bn("input", 12), g.c(pack_sign_bits(w)), g.c(f32(16, lo=0.1))], domain=DOMAIN,
             kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1], group=1, channels_in=12)
    y = g.op("PRelu", [g.bn(y, 16), g.c(f32(16, 1, 1))])
    wd = f32(16, 1, 3, 3)
    y = g.op("BinaryConv2d", [y, g.c(pack_sign_bits(wd)), g.c(f32(16, lo=0.1)), g.c(f32(16))], domain=DOMAIN,
             kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], group=16, channels_in=16)
    imp = check_against_ort(g.model(y), rtol=1e-4)
    assert [layer.op for layer in imp.layers] == ["BinaryConv2d", "BinaryConv2d"]
    assert len(imp.layers[0].funcs) >= 2  # dense: sign/pack + XNOR conv
    assert [f["name"] for f in imp.layers[1].funcs] == ["dcpnas_binary_pm1conv"]  # depthwise: one ±1 kernel


def test_pools_slice_concat_mul_bn():
    g = G([1, 6, 10, 10])
    a = g.op("MaxPool", ["input"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b = g.op("AveragePool", ["input"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0)
    c = g.op("AveragePool", ["input"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    big = np.iinfo(np.int64).max
    d = g.op("Slice", ["input", g.c(np.array([1, 1])), g.c(np.array([big, big])), g.c(np.array([2, 3])),
                       g.c(np.array([2, 2]))])
    e = g.op("Mul", [d, g.c(np.array(0.5, np.float32))])
    y = g.op("Concat", [a, b, c, e], axis=1)
    y = g.op("PRelu", [g.bn(y, 24), g.c(f32(24, 1, 1))])
    check_against_ort(g.model(y))


def test_classifier_ops():
    g = G([1, 8, 5, 5])
    y = g.op("GlobalAveragePool", ["input"])
    y = g.op("Flatten", [y], axis=1)
    y = g.op("Gemm", [y, g.c(f32(10, 8)), g.c(f32(10))], transB=1)
    y = g.op("Add", [y, g.c(f32(10))])  # broadcast add
    check_against_ort(g.model(y))


def test_unsupported_ops_are_listed_together():
    g = G([1, 2, 4, 4])
    y = g.op("Softmax", ["input"])
    y = g.op("Frobnicate", [y], domain="acme")
    y = g.op("Relu", [y])
    nodes = g.nodes + [helper.make_node("Identity", [y], ["output"], name="out")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", 1, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("output", 1, [1, 2, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("acme", 1)])
    with pytest.raises(CompileError) as e:
        import_onnx(model, TARGET)
    msg = str(e.value)
    assert "2 unsupported" in msg and "Softmax" in msg and "acme::Frobnicate" in msg and "n2_Frobnicate" in msg and "n1_Softmax" in msg


def test_tvm_api_guard():
    """The importer and schedules use TVM 0.27 APIs (relax.TensorType, BlockBuilder.lookup_binding,
    tvm.s_tir.Schedule.get_sblock, tvm.tirx). On a TVM upgrade this fails first: re-run this file and
    re-check compiler/onnx_import.py, compiler/lowering.py, compiler/float_schedule.py before bumping."""
    assert tvm.__version__.startswith("0.27"), f"TVM {tvm.__version__}: re-verify the importer (see docstring)"
    from tvm.s_tir import Schedule

    assert hasattr(relax, "TensorType") and hasattr(relax.BlockBuilder, "lookup_binding")
    assert hasattr(Schedule, "get_sblock") and hasattr(tvm, "tirx")

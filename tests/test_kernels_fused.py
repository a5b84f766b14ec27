"""Fused binary conv epilogues (compiler/kernels): the residual add inside the XNOR-popcount conv and the
+-1 kernel, exact against the numpy reference (binary_conv2d_reference, then + res)."""

import numpy as np
import pytest

from dcpnas.compiler.kernels import BinaryConvAttrs, binary_conv2d_reference, emit_binary_conv2d, pack_weights
from dcpnas.targets import get_target

X86 = get_target("x86-avx512").tvm
X86_AVX2 = get_target("x86-avx2").tvm

pytestmark = pytest.mark.tvm

# (C_in, C_out, spatial, kernel, group): depthwise 3x3 and small 1x1 (+-1 kernel), dense 1x1 and 3x3 (XNOR;
# 3x3 at 7x7 the channel-vector form, at 20x20 the pixel-rows kernel)
CASES = [(16, 16, 14, 3, 16), (8, 8, 28, 1, 1), (32, 32, 14, 1, 1), (64, 64, 7, 3, 1), (40, 24, 20, 3, 1)]  # last: pixel rows


def _run(case, target, seed=0, n_res=1):
    import tvm
    from tvm import relax

    c, co, h, k, g = case
    attrs = BinaryConvAttrs((k, k), (1, 1), (k // 2,) * 4, (1, 1), g, c)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, c, h, h)).astype(np.float32)
    res = [rng.standard_normal((1, co, h, h)).astype(np.float32) for _ in range(n_res)]
    wb = pack_weights(rng.standard_normal((co, c // g, k, k)))
    scale = rng.uniform(0.5, 2, co).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    slope = rng.uniform(-0.3, 0.3, co).astype(np.float32)
    shift = rng.standard_normal(c).astype(np.float32)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    rv = [relax.Var(f"r{k}", relax.TensorType(r.shape, "float32")) for k, r in enumerate(res)]
    with bb.function("main", [xv] + rv):
        with bb.dataflow():
            y = emit_binary_conv2d(bb, xv, wb, scale, bias, attrs, target, in_scale=np.ones(c, np.float32),
                                   in_shift=shift, prelu=slope, residual=rv)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(target)), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(a, tvm.cpu()) for a in [x] + res]).numpy()
    want = binary_conv2d_reference(x, wb, scale, bias, attrs, in_shift=shift, prelu=slope)
    for r in res:
        want = want + r
    return got, want, [gv.name_hint for gv in mod.functions if gv.name_hint != "main"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "c{}co{}h{}k{}g{}".format(*c))
@pytest.mark.parametrize("n_res", [1, 2])
def test_residual_in_the_epilogue(case, n_res):
    got, want, funcs = _run(case, X86, n_res=n_res)
    assert len([f for f in funcs if "conv" in f]) == 1  # no separate add
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_residual_in_the_byte_kernel():
    got, want, _ = _run(CASES[3], X86_AVX2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("kind", ["MaxPool", "AveragePool"])
def test_pool_and_add_in_one_kernel(kind):
    """A pool whose only consumer is an Add of an earlier tensor becomes one PrimFunc (pool + add),
    equal to ONNX Runtime's separate ops."""
    import onnx
    import onnxruntime as ort
    import tvm
    from onnx import TensorProto, helper
    from tvm import relax

    from dcpnas.compiler.onnx_import import import_onnx

    attrs = dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    if kind == "AveragePool":
        attrs["count_include_pad"] = 0
    nodes = [helper.make_node("Relu", ["input"], ["r"], name="relu"),
             helper.make_node(kind, ["input"], ["p"], name="pool", **attrs),
             helper.make_node("Add", ["r", "p"], ["output"], name="add")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 14, 14])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 14, 14])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    imp = import_onnx(model, X86)
    assert [lay.op for lay in imp.layers] == ["Relu", kind] and imp.layers[1].nodes == ["pool", "add"]
    x = np.random.default_rng(0).standard_normal((1, 8, 14, 14)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.compile(imp.mod, target=tvm.target.Target(X86)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

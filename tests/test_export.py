"""ONNX export in the frozen dcpnas schema: checker, ORT parity on real data, bit packing, file size."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from dcpnas.compiler.export import (DOMAIN, binary_conv2d_function, build_onnx, pack_sign_bits,
                                    unpack_sign_bits)
from dcpnas.compiler.kernels import BinaryConvAttrs, binary_conv2d_reference, pack_weights
from dcpnas.compiler.pipeline import calibrate_batchnorm
from dcpnas.data import load_dataset
from dcpnas.errors import CompileError
from dcpnas.genotype import DDPNAS_MCN_2
from dcpnas.model import Network
from dcpnas.space import SearchSpace


def _ort(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: threads only add contention on the shared CI cores
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def images():
    d = load_dataset("embedded")
    x, _ = d.tensors("train")
    t, _ = d.tensors("test")
    return x[:128], t[:8].numpy()


def _net(policy, binary, images):
    torch.manual_seed(0)
    net = Network(DDPNAS_MCN_2, SearchSpace(cells=3, channels=8, policy=policy), binary=binary)
    calibrate_batchnorm(net, images[0], batches=2)
    return net


def test_pack_matches_schema_and_kernels():
    rng = np.random.default_rng(0)
    for cg in (1, 5, 8, 12, 17):
        w = rng.standard_normal((6, cg, 3, 3)).astype(np.float32)
        w[0, 0, 0, 0] = 0.0  # sign(0) = +1 -> bit 0
        p = pack_sign_bits(w)
        assert p.dtype == np.uint8 and p.shape == (6, -(-cg // 8), 3, 3)
        np.testing.assert_array_equal(p, pack_weights(w))
        np.testing.assert_array_equal(unpack_sign_bits(p, cg), np.where(w >= 0, 1.0, -1.0))
        assert (p[0, 0, 0, 0] & 1) == 0
    # channel 8b+j is bit j of byte b, bit 1 = negative
    w = np.ones((1, 9, 1, 1), np.float32)
    w[0, 1] = w[0, 8] = -1
    np.testing.assert_array_equal(pack_sign_bits(w)[0, :, 0, 0], [0b10, 0b1])


@pytest.mark.parametrize("k,s,p,d,g,cin,cout", [(3, 1, 1, 1, 1, 12, 16), (5, 2, 2, 1, 1, 9, 8),
                                                (3, 1, 2, 2, 8, 8, 8), (1, 2, 0, 1, 1, 16, 4)])
def test_function_proto_matches_reference(k, s, p, d, g, cin, cout):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, cin, 9, 9)).astype(np.float32)
    x[0, 0, 0, :3] = 0.0
    w = rng.standard_normal((cout, cin // g, k, k)).astype(np.float32)
    scale = rng.random(cout).astype(np.float32) + 0.1
    bias = rng.standard_normal(cout).astype(np.float32)
    attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, dilations=[d, d], group=g, channels_in=cin)
    for use_bias in (False, True):
        ins = ["input", "W", "scale"] + (["bias"] if use_bias else [])
        inits = [numpy_helper.from_array(pack_sign_bits(w), "W"), numpy_helper.from_array(scale, "scale"),
                 numpy_helper.from_array(bias, "bias")]
        node = helper.make_node("BinaryConv2d", ins, ["y"], domain=DOMAIN, name="bc", **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", 1, x.shape)],
                                  [helper.make_tensor_value_info("y", 1, None)], initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                                  functions=[binary_conv2d_function()])
        model.ir_version = 9
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)  # fills y's shape (via the function)
        onnx.checker.check_model(model, full_check=True)
        y = _ort(model, x)
        ref = binary_conv2d_reference(x, pack_sign_bits(w), scale, bias if use_bias else None,
                                      BinaryConvAttrs((k, k), (s, s), (p,) * 4, (d, d), g, cin))
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", ["book", "authors"])
def test_network_export_checker_and_ort_parity(policy, images):
    net = _net(policy, True, images)
    model = build_onnx(net, (1, 1, 28, 28))  # runs check_model(full_check=True)
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 18), (DOMAIN, 1)}
    assert [f.name for f in model.functions] == ["BinaryConv2d"]
    assert model.graph.input[0].name == "input" and model.graph.output[0].name == "logits"
    bc = [n for n in model.graph.node if n.op_type == "BinaryConv2d"]
    assert bc and all(n.domain == DOMAIN for n in bc)
    inits = {t.name: t for t in model.graph.initializer}
    for n in bc:
        assert inits[n.input[1]].data_type == onnx.TensorProto.UINT8
        names = {a.name for a in n.attribute}
        assert names == {"kernel_shape", "strides", "pads", "dilations", "group", "channels_in"}
    if policy == "authors":  # real-activation convs (depthwise, preprocessing) are float Convs
        assert any(n.op_type == "Conv" and "dw" in n.name for n in model.graph.node)
    x = images[1]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        yt = net(torch.from_numpy(x)).numpy()
    assert np.abs(y - yt).max() <= 1e-4 * np.abs(yt).max()
    assert (y.argmax(1) == yt.argmax(1)).all()


def test_binary_weights_are_one_bit(images):
    """Binary layers store 1 bit per weight: vs the float twin's same convs, 32x smaller whenever C_in/group
    is a multiple of 8 (a depthwise filter of one channel pads to one byte per tap: 4x)."""
    bin_model = build_onnx(_net("book", True, images), (1, 1, 28, 28))
    flt_model = build_onnx(_net("book", False, images), (1, 1, 28, 28))
    b_inits = {t.name: t for t in bin_model.graph.initializer}
    f_inits = {t.name: t for t in flt_model.graph.initializer}
    dense_b = dense_f = 0
    for n in bin_model.graph.node:
        if n.op_type != "BinaryConv2d":
            continue
        wb = b_inits[n.input[1]]
        wf = f_inits[n.input[1].replace("weight_bits", "weight")]
        nb, nf = np.prod(wb.dims), 4 * np.prod(wf.dims)
        group = next(a.i for a in n.attribute if a.name == "group")
        if group == 1:
            dense_b, dense_f = dense_b + nb, dense_f + nf
        else:
            assert nf / nb == 4
    assert dense_f / dense_b == 32
    assert len(bin_model.SerializeToString()) < len(flt_model.SerializeToString())


def test_unsupported_module_raises():
    with pytest.raises(CompileError, match="LSTM"):
        build_onnx(torch.nn.Sequential(torch.nn.LSTM(4, 4)), (1, 1, 4, 4))

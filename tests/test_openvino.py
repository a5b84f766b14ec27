"""The OpenVINO conversion extension (dcpnas::BinaryConv2d -> BinaryConvolution / +-1 group conv):
parity with ONNX Runtime (the model-local ONNX function) and PyTorch on single binary convs of every
kind the networks use, and on a whole built network."""

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
ort = pytest.importorskip("onnxruntime")

from dcpnas.compiler.export import build_onnx  # noqa: E402
from dcpnas.operations import ConvUnit  # noqa: E402
from dcpnas.targets import openvino as dov  # noqa: E402


def _unit(cin, cout, k, stride, pad, dil, groups, seed=0):
    torch.manual_seed(seed)
    m = ConvUnit(cin, cout, k, stride, pad, dil, groups, binary=True).eval()
    with torch.no_grad():  # a non-trivial input affine and epilogue, well away from the sign threshold
        m.bn_in.running_mean.uniform_(-0.1, 0.1)
        m.bn_out.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("cin, cout, k, stride, pad, dil, groups", [
    (24, 8, 1, 1, 0, 1, 1),     # pre_conv1x1
    (16, 8, 1, 2, 0, 1, 1),     # FactorizedReduce half
    (16, 16, 3, 1, 1, 1, 1),    # dense 3x3 with zero padding (the border correction)
    (13, 7, 3, 2, 1, 1, 1),     # channels not a multiple of 8, stride 2
    (8, 8, 3, 1, 2, 2, 8),      # dil_conv depthwise
    (8, 8, 5, 2, 2, 1, 8),      # sep_conv depthwise, stride 2
])
@pytest.mark.parametrize("binary_kernels", [True, False])
def test_binary_conv_matches_ort_and_torch(cin, cout, k, stride, pad, dil, groups, binary_kernels):
    import openvino as ov

    m = _unit(cin, cout, k, stride, pad, dil, groups)
    shape = (1, cin, 12, 12)
    onnx_model = build_onnx(m.conv, shape)  # the bare BinaryConv2d
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, :2, :2] = 0.0  # sign(0) = +1
    ref = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        tref = m.conv(torch.from_numpy(x)).numpy()
    core = dov.core(binary_kernels)
    model = core.read_model(onnx_model.SerializeToString(), b"")
    kinds = {op.get_type_name() for op in model.get_ops()}
    assert ("BinaryConvolution" in kinds) == (binary_kernels and groups == 1 and cin % 8 == 0)
    y = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request().infer({0: x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, tref, rtol=1e-5, atol=1e-5)


def test_border_correction_reference():
    # 1 output channel, all weights +1, 3x3 pad 1 on 3x3: corners see 5 padded taps, edges 3, centre 0
    signs = np.ones((1, 1, 3, 3), np.int8)
    c = dov.border_correction(signs, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1.0)[0, 0]
    np.testing.assert_array_equal(c, [[5, 3, 5], [3, 0, 3], [5, 3, 5]])


@pytest.mark.tvm
def test_whole_network_parity(tmp_path):
    """A built 1-bit network on OpenVINO: same top-1 as ONNX Runtime, logits close (a flip of a
    pre-sign value within rounding of 0 may move a logit a little; see DESIGN.md parity)."""
    from dcpnas.compiler.pipeline import compile_genotype
    from dcpnas.genotype import DDPNAS_MCN_2

    DDPNAS_MCN_2.save(tmp_path / "g" / "genotype.json")
    art = compile_genotype(tmp_path / "g" / "genotype.json", "x86-avx512", tmp_path / "b", cells=1, channels=8,
                           parity_inputs=2, check=False)
    b = art.onnx_path.read_bytes()
    c = dov.compile_onnx(b, 1)
    assert c.kernels.startswith("BinaryConvolution")  # no fallback needed
    s = ort.InferenceSession(b, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    agree = 0
    for _ in range(8):
        x = rng.standard_normal(art.input_shape).astype(np.float32)
        a, o = s.run(None, {"input": x})[0], c.run(x)
        agree += int(a.argmax() == o.argmax())
        assert np.abs(a - o).max() <= 1e-3 * np.abs(a).max()
    assert agree >= 7

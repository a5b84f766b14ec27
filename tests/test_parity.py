"""1-bit parity that means something: BatchNorm + sign folded into one threshold (identical pre-sign
arithmetic in PyTorch, ONNX and TVM), benign flips traced to near-threshold values, real bugs caught."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from dcpnas.compiler.export import build_onnx, flip_input_channels, sign_threshold
from dcpnas.compiler.parity import EPS_REL, check_parity, folded_signs, probes, run_ort
from dcpnas.compiler.pipeline import calibrate_batchnorm
from dcpnas.data import load_dataset
from dcpnas.errors import ParityError
from dcpnas.genotype import DDPNAS_MCN_2
from dcpnas.model import Network
from dcpnas.operations import ConvUnit
from dcpnas.space import SearchSpace
from dcpnas.targets import get_target


@pytest.fixture(scope="module")
def images():
    d = load_dataset("embedded")
    x, _ = d.tensors("train")
    t, _ = d.tensors("test")
    return x[:128], t[:6].numpy()


@pytest.fixture(scope="module")
def net(images):
    torch.manual_seed(0)
    net = Network(DDPNAS_MCN_2, SearchSpace(cells=2, channels=8, policy="book"), binary=True)
    calibrate_batchnorm(net, images[0], batches=2)
    bn = net.cells[0].pre0.bn_in  # a negative and a zero BN slope: flipped weight bits, constant signs
    with torch.no_grad():
        bn.weight[0] = -0.7
        bn.weight[1] = 0.0
        bn.bias[1] = -0.2
    return net


def test_threshold_is_the_batchnorm_sign():
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.0, 0.0, 0.5, -0.1]))
        bn.bias.copy_(torch.tensor([0.1, 0.3, 0.2, -0.2, -1.0, 0.0]))
    x = torch.randn(4, 6, 5, 5)
    t, neg, gain = sign_threshold(bn)
    want = torch.where(bn(x) >= 0, 1.0, -1.0).numpy()
    got = np.where(x.numpy() >= t.reshape(1, -1, 1, 1), 1.0, -1.0) * np.where(neg, -1, 1).reshape(1, -1, 1, 1)
    far = np.abs(x.numpy() - t.reshape(1, -1, 1, 1)) > 1e-4  # exact ties may differ by definition
    np.testing.assert_array_equal(got[far], want[far])
    assert t[2] == -np.inf and t[3] == np.inf and neg.tolist() == [False, True, False, False, False, True]
    s = np.where(neg, -1.0, 1.0).reshape(1, -1, 1, 1)  # bn(x) = s * gain * (x - t) where the slope is not 0
    live = [0, 1, 4, 5]
    np.testing.assert_allclose((s * gain.reshape(1, -1, 1, 1) * (x.numpy() - t.reshape(1, -1, 1, 1)))[:, live],
                               bn(x).detach().numpy()[:, live], rtol=1e-5, atol=1e-5)


def test_flipped_channels_in_grouped_weights():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 2, 3, 3)).astype(np.float32)  # 4 groups of 2 input channels
    neg = np.array([0, 1, 0, 0, 1, 1, 0, 0], bool)
    f = flip_input_channels(w, neg, groups=4)
    for o in range(8):
        for j in range(2):
            s = -1 if neg[(o // 2) * 2 + j] else 1
            np.testing.assert_array_equal(f[o, j], np.where(w[o, j] >= 0, 1.0, -1.0) * s)


def test_folded_export_runs_like_folded_torch(net, images):
    """ORT on the exported model (Sub + BinaryConv2d) vs PyTorch with folded_signs: the same signs."""
    x = images[1]
    model = build_onnx(net, (1,) + tuple(x.shape[1:]))
    ps = probes(model)
    assert ps and all(p.a.tolist() == [1.0] * len(p.a) for p in ps)  # every threshold is a Sub
    assert sum(n.op_type == "Sub" for n in model.graph.node) == len(ps)
    from dcpnas.compiler.onnx_import import import_onnx
    imp = import_onnx(model, get_target("x86-avx512").tvm)
    nodes = {n for lay in imp.layers for n in lay.nodes}
    assert all(n.name in nodes for n in model.graph.node if n.op_type in ("Sub", "Mul") and "threshold" in n.name
               or n.name.endswith(".gain"))  # the threshold and the gain are fused into the binary kernels
    assert not any(lay.op in ("Sub", "Mul") for lay in imp.layers if lay.name.endswith((".threshold", ".gain")))
    assert not any(n.op_type == "BatchNormalization" and
                   any(c.input[0] == n.output[0] for c in model.graph.node if c.op_type == "BinaryConv2d")
                   for n in model.graph.node)
    with folded_signs(net, {p.name for p in ps}) as ctl, torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
        assert set(ctl.record) == {p.name for p in ps}
    ref_unfolded = net(torch.from_numpy(x)).detach().numpy()
    ort_y = run_ort(model.SerializeToString(), x)
    np.testing.assert_allclose(ort_y, y, atol=1e-4 * np.abs(y).max())
    assert np.abs(ref_unfolded - y).max() < 0.5 * np.abs(y).max()  # same network, maybe benign flips apart


def _flipping_runtime(net, model, pick):
    """A stand-in runtime: the folded PyTorch network whose sign at one position (chosen by `pick` from
    the first input's pre-sign values) is flipped, reporting as its own x the value mirrored through the
    threshold there (x' = 2t - x, as a runtime whose rounding crossed the threshold would)."""
    ps = probes(model)
    names = {p.name for p in ps}
    p = ps[len(ps) // 2]

    def run(x1):
        with folded_signs(net, names) as ctl, torch.no_grad():
            net(torch.from_numpy(x1))
            mask = np.zeros(ctl.record[p.name].shape, bool)
            mask.flat[pick(p, ctl.record[p.name])] = True
            ctl.force = {p.name: mask}
            y = net(torch.from_numpy(x1)).numpy()
            xs = dict(ctl.record)
        t = -p.b.reshape(1, -1, 1, 1)
        xs[p.name] = np.where(mask, 2 * t - xs[p.name], xs[p.name]).astype(np.float32)
        return y, xs
    return run, p


def _unit(net, probe_name):
    return dict(net.named_modules())[probe_name[:-len(".conv")]]


def test_benign_flip_is_traced_and_a_far_flip_fails(net, images):
    x = images[1][:3]
    model = build_onnx(net, (1,) + tuple(x.shape[1:]))
    ok = check_parity(x, torch_module=net, onnx_bytes=model.SerializeToString(), raise_on_fail=False)
    assert ok["passed"] and ok["ort"]["n_unexplained"] == 0 and ok["criterion"] == "traced"
    assert ok["ort"]["max_float_drift_rel"] < EPS_REL / 10  # the evidence behind the epsilon

    # a sign flipped far from its threshold is a bug, whatever the logits do
    far, p = _flipping_runtime(net, model, lambda p, xr: int(np.argmax(np.abs(p.value(xr)))))
    bad = check_parity(x, torch_module=net, onnx_bytes=model.SerializeToString(), tvm_probe=far, raise_on_fail=False)
    assert not bad["passed"] and bad["tvm"]["n_unexplained"] == len(x)
    assert bad["tvm"]["unexplained"][0]["layer"] == p.name
    with pytest.raises(ParityError, match="TVM disagrees"):
        check_parity(x, torch_module=net, onnx_bytes=model.SerializeToString(), tvm_probe=far)

    # move one threshold to eps/4 beside a value of input 0: flipping that one sign is benign
    near_net = copy.deepcopy(net)
    with folded_signs(near_net, {q.name for q in probes(model)}) as ctl, torch.no_grad():
        near_net(torch.from_numpy(x[:1]))
        xr = ctl.record[p.name]
    pos = np.unravel_index(int(np.argmax(np.abs(xr))) // 2, xr.shape)
    c = pos[1]
    bn = _unit(near_net, p.name).bn_in
    target = float(xr[pos]) + EPS_REL * float(np.abs(xr).max()) / 4
    with torch.no_grad():
        sd = float(torch.sqrt(bn.running_var[c] + bn.eps))
        bn.bias[c] = (float(bn.running_mean[c]) - target) * float(bn.weight[c]) / sd
    near_model = build_onnx(near_net, (1,) + tuple(x.shape[1:]))
    flat = int(np.ravel_multi_index(pos, xr.shape))
    run, _ = _flipping_runtime(near_net, near_model, lambda p, xr: flat)
    res = check_parity(x[:1], torch_module=near_net, onnx_bytes=near_model.SerializeToString(), tvm_probe=run,
                       raise_on_fail=False)
    assert res["passed"], res["tvm"]["unexplained"]
    assert res["tvm"]["benign_flips"] >= 1 and res["tvm"]["flips_per_layer"][p.name] >= 1
    assert 0 < res["tvm"]["max_flip_margin_over_eps"] <= 1


def test_non_finite_logits_never_pass(net, images):
    """NaN compares false with everything: a runtime giving NaN logits fails parity (it passed before, as the
    tolerance checks were written `diff > tol`), and a NaN reference is refused outright."""
    x = images[1][:2]
    onnx_bytes = build_onnx(net, (1,) + tuple(x.shape[1:])).SerializeToString()

    def nan_logits(xb):
        return np.full((len(xb), 10), np.nan, np.float32)
    res = check_parity(x, torch_module=net, onnx_bytes=onnx_bytes, tvm_fn=nan_logits, raise_on_fail=False)
    assert not res["passed"] and res["tvm"]["n_unexplained"] == len(x)
    broken = copy.deepcopy(net)
    with torch.no_grad():
        broken.classifier.linear.bias[0] = float("nan")
    with pytest.raises(ParityError, match="non-finite logits"):
        check_parity(x, torch_module=broken, onnx_bytes=onnx_bytes, raise_on_fail=False)


def test_convunit_probe_names_match_export(net):
    units = [p for p, m in net.named_modules() if isinstance(m, ConvUnit) and m.conv.binary_act]
    model = build_onnx(net, (1, 1, 28, 28))
    assert sorted(f"{u}.conv" for u in units) == sorted(p.name for p in probes(model))


@pytest.mark.slow
@pytest.mark.tvm
def test_whole_network_parity_at_8x32(tmp_path):
    """DDPNAS_MCN_2 at 8 cells x 32 channels (the deploy size of issue 11): the fused build passes the
    traced criterion against PyTorch for ORT and TVM, and its residual adds live in the conv kernels."""
    from dcpnas.compiler.pipeline import compile_genotype

    g = DDPNAS_MCN_2.save(tmp_path / "genotype.json")
    art = compile_genotype(g, "x86-avx512", tmp_path / "b", cells=8, channels=32, parity_inputs=6)
    p = art.manifest["parity"]
    assert p["passed"] and p["criterion"] == "traced" and p["tvm_run"] == "ran"
    assert p["binary_layers"] == 126 and p["tvm"]["max_abs_diff_after_flips"] <= 1e-4 * p["reference_max_abs"]
    layers = art.manifest["layers"]
    # every residual and cell-node Add is fused into a conv or pool kernel: none stands alone, none is lost
    assert not any(lay["op"] == "Add" for lay in layers)
    import onnx

    adds = {n.name for n in onnx.load(art.onnx_path).graph.node if n.op_type == "Add"}
    fused = {n for lay in layers if lay["op"] != "Add" for n in lay["nodes"]}
    assert len(adds) == 78 and adds <= fused
    # every depthwise binary conv writes its pointwise conv's packed input (no float plane, no pack), and
    # the cell outputs at 28x28 and 14x14 reach the next cells' 1x1 convs as parts (no Concat runs), the
    # FactorizedReduce convs after the reduction cells included, whose shifted half gathers from them (no Slice)
    calls = [f["name"].rstrip("0123456789") for lay in layers for f in lay["funcs"]]
    assert calls.count("dcpnas_binary_pm1pack") == 54 and "dcpnas_binary_pm1conv" not in calls
    assert sum(lay["input_parts"] == 4 for lay in layers) == 12
    assert sum(lay["op"] == "Concat" and not lay["funcs"] for lay in layers) == 5
    assert [lay["name"] for lay in layers if lay["input_offset"] == [1, 1]] == [
        "cells.3.pre0.conv_2.conv", "cells.6.pre0.conv_2.conv"]
    assert [len(lay["funcs"]) for lay in layers if lay["op"] == "Slice"] == [0, 0]


def test_parity_chunks_shrink_with_the_probes():
    """Large inputs (224x224) hold ~1 GB of probe tensors per image: the chunk shrinks to fit PROBE_BUDGET."""
    from dcpnas.compiler.parity import CHUNK, PROBE_BUDGET, chunk_size

    assert chunk_size(1000) == CHUNK and chunk_size(0) == CHUNK
    assert chunk_size(PROBE_BUDGET // 4) == 4 and chunk_size(2 * PROBE_BUDGET) == 1


def test_decisions_from_packed_words_equal_the_float_ones():
    """Where a kernel packed a binary conv's input itself, parity reads the words: their bits are the
    decisions x * a + b >= 0 (set bit = negative), partial last word included."""
    from dcpnas.compiler.kernels.pack import pack_activations_reference
    from dcpnas.compiler.kernels.reference import BinaryConvAttrs
    from dcpnas.compiler.parity import Probe, decisions

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 40, 5, 6)).astype(np.float32)
    p = Probe("c", "x", np.ones(40, np.float32), rng.standard_normal(40).astype(np.float32))
    words = pack_activations_reference(x, BinaryConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, 40), p.a, p.b)
    want = decisions(p, x, 40)
    assert want.shape == x.shape and 0.2 < want.mean() < 0.8
    np.testing.assert_array_equal(decisions(p, words, 40), want)
    flipped = words.copy()
    flipped[1, 1, 2, 3] ^= np.uint32(1 << 7)  # channel 39
    assert (decisions(p, flipped, 40) != want).sum() == 1

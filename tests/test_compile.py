"""`dcpnas compile`: genotype -> build folder (ONNX, library, manifest) with PyTorch/ORT/TVM parity; errors."""

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import typer
from typer.testing import CliRunner

from dcpnas.compiler.artifact import Artifact, find_func_module
from dcpnas.compiler.build import build_module_library
from dcpnas.compiler.pipeline import compile_genotype
from dcpnas.errors import ArtifactError, GenotypeError, TargetError
from dcpnas.genotype import DDPNAS_MCN_2, Genotype

SMALL = dict(cells=3, channels=8, parity_inputs=4)
OTHER = Genotype(normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1)) * 4, normal_concat=(2, 3, 4, 5),
                 reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4, reduce_concat=(2, 3, 4, 5))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def genotype_file(tmp_path_factory):
    return DDPNAS_MCN_2.save(tmp_path_factory.mktemp("g") / "genotype.json")


@pytest.mark.tvm
def test_cli_compile_end_to_end(genotype_file, tmp_path):
    from dcpnas.cli.compile import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `compile` a subcommand
    out = tmp_path / "build"
    r = CliRunner().invoke(app, ["compile", str(genotype_file), "--target", "x86-avx2", "-o", str(out), "-q",
                                 "--cells", "3", "--channels", "8", "--parity-inputs", "4"])
    assert r.exit_code == 0, r.output
    assert "fresh" in r.output and "parity" in r.output
    art = Artifact.load(out)
    m = art.manifest
    assert m["schema"] == "dcpnas.build/1" and m["binary"] and m["genotype"] == DDPNAS_MCN_2.digest()
    assert m["target"]["name"] == "x86-avx2" and m["tvm_version"].startswith("0.27")
    p = m["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["tvm_run"] == "ran" and p["n_inputs"] == 4
    assert p["max_abs_diff_tvm"] <= 1e-4 * p["reference_max_abs"]
    assert m["onnx_weight_bytes"]["binary"] > 0
    # the library runs with the plain runtime and agrees with ONNX Runtime on a fresh input
    x = np.random.default_rng(3).standard_normal(art.input_shape).astype(np.float32)
    y = art.run(x)
    ref = ort.InferenceSession(str(art.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # every layer's PrimFuncs are in the library under the recorded names (what `dcpnas bench` times)
    lib = art.load_module()
    names = [f["name"] for layer in m["layers"] for f in layer["funcs"]]
    assert names and all(find_func_module(lib, n) is not None for n in names)
    assert any(n.startswith("cells_0_") for n in names)
    # the loader refuses a tampered folder
    # (a new file, not an in-place write: the library is still mapped into this process, and truncating
    # a mapped shared object makes the process die with SIGBUS when it later touches those pages)
    (out / "model.so").unlink()
    (out / "model.so").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="does not match"):
        Artifact.load(out)


@pytest.mark.tvm
def test_compile_onnx_input_and_float_module(tmp_path):
    """A dcpnas-domain .onnx file is lowered as it is (ORT is the parity reference)."""
    from dcpnas.compiler.export import export_onnx
    from dcpnas.operations import SepConv

    torch.manual_seed(0)
    m = _random_bn(SepConv(8, 8, 3, 1, True, "book", True))
    path = export_onnx(m, (1, 8, 12, 12), tmp_path / "sep.onnx")
    art = compile_genotype(path, "x86-avx2", tmp_path / "b", parity_inputs=3)
    p = art.manifest["parity"]
    assert p["passed"] and p["reference"] == "ort" and "random" in p["inputs"]
    assert art.manifest["binary"] and art.manifest["genotype"] is None


@pytest.mark.tvm
@pytest.mark.slow
def test_float_twin_build_from_trained_weights(genotype_file, tmp_path):
    """--float --weights model.pt: the real-valued twin of a (1-bit) checkpoint, same pipeline."""
    from dcpnas.checkpoint import save_model
    from dcpnas.model import Network
    from dcpnas.space import SearchSpace

    torch.manual_seed(0)
    net = _random_bn(Network(DDPNAS_MCN_2, SearchSpace(cells=3, channels=8), binary=True))
    ck = save_model(tmp_path / "model.pt", net, {"mean": [0.29], "std": [0.35]})
    art = compile_genotype(genotype_file, "x86-avx2", tmp_path / "f", float_=True, weights=ck, parity_inputs=4)
    m = art.manifest
    assert not m["binary"] and m["parity"]["passed"] and m["weights"] == str(ck)
    assert m["onnx_weight_bytes"]["binary"] == 0 and m["normalization"]["mean"] == [0.29]


ALL_OPS = Genotype(
    normal=(("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 0), ("avg_pool_3x3", 2),
            ("sep_conv_5x5", 3), ("max_pool_3x3", 1), ("dil_conv_3x3", 4), ("skip_connect", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("skip_connect", 0), ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 1), ("sep_conv_3x3", 3), ("dil_conv_3x3", 2), ("skip_connect", 4)),
    reduce_concat=(2, 3, 4, 5))


@pytest.mark.tvm
@pytest.mark.slow
def test_every_primitive_under_authors_policy(tmp_path):
    """All seven DARTS ops (strided skip = FactorizedReduce) with the `authors` policy (real-activation
    depthwise/1x1 convs as float Convs with beta*sign(w)); genotype given as a DARTS string."""
    src = tmp_path / "g.txt"
    src.write_text(ALL_OPS.to_darts())
    art = compile_genotype(src, "x86-avx2", tmp_path / "a", policy="authors", **SMALL)
    ops = {layer["op"] for layer in art.manifest["layers"]}
    assert {"BinaryConv2d", "Conv", "MaxPool", "AveragePool", "Slice", "Concat"} <= ops
    import onnx  # the adds (residuals, cell nodes) are fused into the kernels that produce an addend

    adds = {n.name for n in onnx.load(art.onnx_path).graph.node if n.op_type == "Add"}
    assert adds and adds <= {n for layer in art.manifest["layers"] for n in layer["nodes"]}
    assert art.manifest["parity"]["passed"] and art.manifest["space"]["policy"] == "authors"


def test_errors_before_any_build(genotype_file, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Genotype(normal=[('warp_drive', 0)])")
    with pytest.raises(GenotypeError):
        compile_genotype(bad, "x86-avx2", tmp_path / "o", **SMALL)
    with pytest.raises(TargetError):
        compile_genotype(genotype_file, "pdp-11", tmp_path / "o", **SMALL)
    with pytest.raises(ArtifactError, match="not found"):
        compile_genotype(genotype_file, "x86-avx2", tmp_path / "o", weights=tmp_path / "none.pt", **SMALL)
    from dcpnas.checkpoint import save_model
    from dcpnas.model import Network
    from dcpnas.space import SearchSpace

    ck = save_model(tmp_path / "other.pt", Network(OTHER, SearchSpace(cells=3, channels=8), binary=True),
                    {"mean": [0.5], "std": [0.5]})
    with pytest.raises(ArtifactError, match="genotype"):
        compile_genotype(genotype_file, "x86-avx2", tmp_path / "o", weights=ck, **SMALL)


def _random_bn(m):
    """Non-trivial BatchNorm statistics. With fresh ones (mean 0, shift 0) a binary conv's sum is often
    exactly 0, where PyTorch/ORT's beta * sign(w) float sums give +-1e-8 and flip the next sign."""
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            with torch.no_grad():
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.3, 0.3)
    return m.eval()


def _tiny():
    from dcpnas.operations import ConvUnit

    torch.manual_seed(0)
    return ConvUnit(8, 8, 3, 1, 1, binary=True).eval()


@pytest.mark.tvm
@pytest.mark.arm
def test_arm_cross_compile(tmp_path):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc is not installed (scripts/install_system_deps.sh)")
    lib = build_module_library(_tiny(), (1, 8, 8, 8), "arm-a72", tmp_path)
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.tvm
@pytest.mark.arm
@pytest.mark.slow
def test_arm_parity_under_qemu(tmp_path):
    """A .onnx of two binary ConvUnits compiled for arm-a72; the whole VM library runs under qemu-user."""
    from dcpnas.compiler.export import export_onnx
    from dcpnas.compiler.kernels.arm_emu import missing
    from dcpnas.operations import ConvUnit

    if missing():
        pytest.skip(missing())
    torch.manual_seed(0)
    m = _random_bn(torch.nn.Sequential(ConvUnit(8, 8, 3, 1, 1, binary=True), ConvUnit(8, 8, 1, binary=True)))
    path = export_onnx(m, (1, 8, 8, 8), tmp_path / "two.onnx")
    art = compile_genotype(path, "arm-a72", tmp_path / "b", parity_inputs=2)
    p = art.manifest["parity"]
    assert p["passed"] and "qemu" in p["tvm_run"] and p["max_abs_diff_tvm"] is not None


@pytest.mark.tvm
@pytest.mark.cuda
def test_cuda_codegen(tmp_path):
    """The library carries an nvcc fatbin for sm_80 (not CUDA source), also on a host without a GPU."""
    import tvm

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    had_gpu = tvm.cuda(0).exist
    lib = build_module_library(_tiny(), (1, 8, 8, 8), "cuda-sm80", tmp_path)
    blob = lib.read_bytes()
    assert b"sm_80" in blob and b'extern "C" __global__' not in blob
    assert tvm.cuda(0).exist == had_gpu  # the stub (no driver) does not fake a device or break the query


@pytest.mark.tvm
@pytest.mark.cuda
def test_cuda_build_without_nvcc_is_refused(tmp_path, monkeypatch):
    from dcpnas.compiler import cuda_host
    from dcpnas.errors import CompileError

    real_which = cuda_host.shutil.which
    monkeypatch.setattr(cuda_host.shutil, "which", lambda name: None if name == "nvcc" else real_which(name))
    with pytest.raises(CompileError, match="needs nvcc"):
        build_module_library(_tiny(), (1, 8, 8, 8), "cuda-sm80", tmp_path)


@pytest.mark.tvm
def test_compile_a_genotype_the_search_found(tmp_path):
    """tests/data/searched_genotype.json is the genotype.json written by the README's
    `dcpnas search --target x86-avx512` run (alphas dropped); its network compiles with parity."""
    src = Path(__file__).parent / "data" / "searched_genotype.json"
    art = compile_genotype(src, "x86-avx512", tmp_path / "b", parity_inputs=4, cells=3, channels=8)
    p = art.manifest["parity"]
    assert p["passed"] and p["top1_agreement"] == 1.0 and p["tvm_run"] == "ran"
    assert p["max_abs_diff_tvm"] <= 1e-4 * p["reference_max_abs"]


@pytest.mark.tvm
def test_parity_probes_survive_kernels_shared_between_layers(tmp_path):
    """At 8x8 input the cells' maps are 8/4/2 pixels and one PrimFunc serves both a 1x1 conv fed by a
    separate pack and one fed packed bits: the parity probe must match calls in order, not by symbol
    (this compile crashed with a numpy ValueError before)."""
    art = compile_genotype(DDPNAS_MCN_2.save(tmp_path / "genotype.json"), "x86-avx512", tmp_path / "b",
                           input_shape=(3, 8, 8), **SMALL)
    assert art.manifest["parity"]["passed"]


@pytest.mark.tvm
def test_imagenet_stem_compiles_with_parity(tmp_path):
    """DARTS' stride-8 ImageNet stem (three float stride-2 convs, ReLU): the cells run at 1/8 of the input."""
    from dcpnas.cli.compile import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    out = tmp_path / "build"
    r = CliRunner().invoke(app, ["compile", str(DDPNAS_MCN_2.save(tmp_path / "genotype.json")), "--target",
                                 "x86-avx512", "-o", str(out), "-q", "--cells", "3", "--channels", "8",
                                 "--input-shape", "3,32,32", "--stem", "imagenet", "--parity-inputs", "4"])
    assert r.exit_code == 0, r.output
    m = Artifact.load(out).manifest
    assert m["space"]["stem"] == "imagenet" and m["parity"]["passed"]
    assert m["op_keys"]["stem"] == "stem|3|8|32|32|8"
    assert any(layer["op"] == "Relu" for layer in m["layers"]) or any("stem.stem1" in n for layer in m["layers"]
                                                                       for n in layer["nodes"])
    r = CliRunner().invoke(app, ["compile", str(tmp_path / "genotype.json"), "--target", "x86-avx512", "-o",
                                 str(tmp_path / "b2"), "-q", "--cells", "3", "--input-shape", "3,36,36",
                                 "--stem", "imagenet"])
    assert r.exit_code == 1 and "multiples of 8" in r.output
    r = CliRunner().invoke(app, ["compile", str(tmp_path / "genotype.json"), "--stem", "mobile"])
    assert r.exit_code == 1 and "choose one of cifar, imagenet" in r.output

"""The pipeline as people type it: compile's default target and weights, accuracy as compiled
(compiler.pipeline.compiled_accuracy), and the run summary (`dcpnas report`, runs/demo/summary.json)."""

import json

import numpy as np
import pytest
import torch

from dcpnas.checkpoint import save_model
from dcpnas.genotype import DDPNAS_MCN_2, Genotype
from dcpnas.model import Network
from dcpnas.train import default_eval_space

SPACE = default_eval_space(cells=3, channels=4, policy="authors")


def _genotype(target=None):
    return Genotype(DDPNAS_MCN_2.normal, DDPNAS_MCN_2.normal_concat, DDPNAS_MCN_2.reduce,
                    DDPNAS_MCN_2.reduce_concat, search={"target": target} if target else {})


def test_compile_target_comes_from_the_genotype_else_the_host(tmp_path):
    from dcpnas.cli.compile import default_target, host_target
    from dcpnas.targets import get_target

    g = tmp_path / "genotype.json"
    _genotype("arm-a72").save(g)
    assert default_target(g) == ("arm-a72", "the genotype was searched for it")
    _genotype().save(g)
    name, why = default_target(g)
    assert name == host_target() and "this host" in why
    assert get_target(host_target()).name == host_target()  # a built-in target
    # a target file named by a received genotype is never loaded: its cross compiler would run at export
    evil = tmp_path / "evil.toml"
    evil.write_text('name = "evil"\narch = "x86_64"\ncross_compiler = "touch pwned; gcc"\n')
    _genotype(str(evil)).save(g)
    name, why = default_target(g)
    assert name == host_target() and "not a built-in target" in why and "--target" in why


def test_accuracy_as_compiled_matches_torch():
    from dcpnas.compiler.export import build_onnx
    from dcpnas.compiler.pipeline import compiled_accuracy
    from dcpnas.data import load_dataset

    data = load_dataset("embedded").subset(20, 40, seed=0)
    norm = data.normalization()
    torch.manual_seed(0)
    net = Network(DDPNAS_MCN_2, SPACE, binary=True).eval()
    x, y = data.tensors("test", norm["mean"], norm["std"])
    with torch.no_grad():
        want = float((net(x).argmax(1) == y).float().mean())
    onnx_bytes = build_onnx(net, (1, 1, 28, 28)).SerializeToString()
    calls = []

    def fake_tvm(xs):  # stands in for the TVM library: the torch network itself, wrong on every image
        calls.append(len(xs))
        with torch.no_grad():
            return (-net(torch.from_numpy(xs))).numpy()

    acc = compiled_accuracy(onnx_bytes, fake_tvm, data, norm)
    assert acc["n"] == 40 and acc["split"] == "test" and calls == [40]
    assert acc["ort"] == pytest.approx(want)
    assert acc["tvm"] <= 1 - want + 1e-9  # argmax of the negated logits is never the right one when torch's is
    assert compiled_accuracy(onnx_bytes, None, data, norm)["tvm"] is None


def _fake_run(tmp_path, with_build=True, with_bench=True):
    from dcpnas.io import write_json

    run = tmp_path / "runs" / "demo"
    geno = _genotype("x86-avx512")
    run.mkdir(parents=True)
    geno.save(run / "genotype.json")
    torch.manual_seed(0)
    net = Network(geno, SPACE, binary=True)
    save_model(run / "train" / "model.pt", net, {"mean": [0.3], "std": [0.3]}, {})
    write_json(run / "train" / "train.json", {"test_accuracy": 0.8, "seconds": 12.5, "dataset": "d",
                                              "config": {"epochs": 3}, "space": SPACE.to_dict()})
    build = tmp_path / "build" / "demo-x86-avx512"
    if with_build:
        write_json(build / "manifest.json", {
            "genotype": geno.digest(), "binary": True, "target": {"name": "x86-avx512"},
            "compile_s": {"a": 1.0, "b": 2.0},
            "accuracy": {"dataset": "d", "split": "test", "n": 1000, "ort": 0.86, "tvm": 0.861}})
    if with_bench:
        write_json(build / "bench.json", {"binary_ms": 0.5, "float_tvm_ms": 1.0, "float_ort_ms": 2.0,
                                          "best_float": "float_tvm", "speedup_vs_best_float": 2.0})
    return run, build, geno


def test_run_summary_reads_every_stage(tmp_path):
    from dcpnas.run_report import SCHEMA, run_summary, write_run_summary
    from dcpnas.summary import summarize

    run, build, geno = _fake_run(tmp_path)
    s = run_summary(run, builds=tmp_path / "build")  # finds the build of the same genotype
    assert s["schema"] == SCHEMA and s["build"] == str(build) and s["missing"] == []
    assert (s["test_accuracy_ort"], s["test_accuracy_tvm"], s["accuracy_images"]) == (0.86, 0.861, 1000)
    assert s["speedup_vs_best_float"] == 2.0 and s["latency"]["best_float_ms"] == 1.0
    assert s["seconds"]["compile"] == 3.0 and s["train"]["test_accuracy_torch"] == 0.8
    want = summarize(Network(geno, SPACE, binary=True))
    assert s["model_size"]["binary_kib"] == pytest.approx(want.memory_kib)
    assert s["model_size"]["float_kib"] > s["model_size"]["binary_kib"]
    path = write_run_summary(run, s)
    assert json.loads(path.read_text())["test_accuracy_tvm"] == 0.861


def test_run_summary_names_what_is_missing(tmp_path):
    from dcpnas.errors import ArtifactError
    from dcpnas.run_report import run_summary

    run, build, _ = _fake_run(tmp_path, with_bench=False)
    s = run_summary(run, build)
    assert s["latency"] is None and s["speedup_vs_best_float"] is None
    assert s["missing"] == [f"latency: dcpnas bench {build}"]
    s = run_summary(run, builds=tmp_path / "nothing")
    assert s["build"] is None and any(m.startswith("build: dcpnas compile") for m in s["missing"])
    (build / "manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="unreadable JSON"):
        run_summary(run, build)
    with pytest.raises(ArtifactError, match="dcpnas search"):
        run_summary(tmp_path / "empty")


def test_cli_report(tmp_path):
    from typer.testing import CliRunner

    from dcpnas.cli import app

    run, build, _ = _fake_run(tmp_path)
    r = CliRunner().invoke(app, ["report", str(run), "--build", str(build)])
    assert r.exit_code == 0, r.output
    assert "86.00%" in r.output and "86.10%" in r.output and "2.00x" in r.output
    assert json.loads((run / "summary.json").read_text())["speedup_vs_best_float"] == 2.0
    r = CliRunner().invoke(app, ["report", str(tmp_path / "none")])
    assert r.exit_code == 1 and "dcpnas search" in r.output


def test_cli_report_on_hand_edited_artifacts(tmp_path):
    """Wrong types in train.json, manifest.json or bench.json are no figures: shown as '-', never a traceback;
    a build of another genotype, or a --build that does not exist, is refused in one line."""
    from typer.testing import CliRunner

    from dcpnas.cli import app
    from dcpnas.io import write_json

    run, build, geno = _fake_run(tmp_path)
    write_json(run / "train" / "train.json", {"test_accuracy": "high", "seconds": "ten", "config": "x"})
    write_json(build / "manifest.json", {"genotype": geno.digest(), "binary": True, "target": "x86",
                                         "compile_s": [1, 2], "accuracy": {"n": 1000, "ort": "a", "tvm": 0.9}})
    write_json(build / "bench.json", {"binary_ms": "fast", "speedup_vs_best_float": "big", "warnings": 5})
    r = CliRunner().invoke(app, ["report", str(run), "--build", str(build)])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    s = json.loads((run / "summary.json").read_text())
    assert s["test_accuracy_ort"] is None and s["test_accuracy_tvm"] == 0.9 and s["speedup_vs_best_float"] is None
    other = tmp_path / "other"
    write_json(other / "manifest.json", {"genotype": "0123456789abcdef", "binary": True})
    for b, needle in ((other, "compiled from genotype 0123456789abcdef"), (tmp_path / "nope", "not found")):
        r = CliRunner().invoke(app, ["report", str(run), "--build", str(b)])
        assert r.exit_code == 1 and needle in r.output, r.output


@pytest.mark.tvm
@pytest.mark.slow
def test_cli_compile_finds_the_run_target_and_weights(tmp_path):
    """`dcpnas compile RUN/genotype.json` with no flags: the searched target, RUN/train/model.pt, and the
    compiled network's accuracy on the whole test split (ORT and TVM) equal to PyTorch's."""
    from typer.testing import CliRunner

    from dcpnas.checkpoint import load_model
    from dcpnas.cli import app
    from dcpnas.data import load_dataset
    from dcpnas.train import TrainConfig, run_folder, train

    g = tmp_path / "run" / "genotype.json"
    _genotype("x86-avx2").save(g)
    cfg = TrainConfig(epochs=1, cells=3, channels=4, policy="authors", train_subset=40, batch_size=20)
    res = train(_genotype("x86-avx2"), cfg, run_folder(g))
    r = CliRunner().invoke(app, ["compile", str(g), "-o", str(tmp_path / "b"), "-q", "--parity-inputs", "4"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "target x86-avx2 (the genotype was searched for it" in out
    assert f"weights{res.model_path}" in "".join(r.output.split())  # rich wraps long paths
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    acc = m["accuracy"]
    data = load_dataset("embedded")
    net, meta = load_model(res.model_path)
    x, y = data.tensors("test", meta["normalization"]["mean"], meta["normalization"]["std"])
    with torch.no_grad():
        want = float((net.eval()(x).argmax(1) == y).float().mean())
    assert acc["n"] == len(y) == 1000 and acc["ort"] == pytest.approx(want, abs=2e-3)
    assert acc["tvm"] == pytest.approx(acc["ort"], abs=2e-3) and "top-1 accuracy on the 1000" in out
    r = CliRunner().invoke(app, ["compile", str(g), "--fresh", "--weights", str(res.model_path)])
    assert r.exit_code == 1 and "--fresh" in r.output

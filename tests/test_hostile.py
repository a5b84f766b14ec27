"""Hostile and malformed input (issue 14): one test per class of case. Every case ends in one `error:` line
and exit 1 (never a traceback), or in correct output. The security cases carry a payload that would create
a file when loaded, and assert that it does not."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dcpnas.cli import app


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears if any code of the file runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def cli(*args: str):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r, (r.stdout or "") + (r.stderr or "")


def assert_one_error_line(r, text: str, *, contains: str = "") -> None:
    assert r.exit_code == 1, (r.exit_code, text, r.exception)
    assert not isinstance(r.exception, BaseException) or isinstance(r.exception, SystemExit), r.exception
    lines = [ln for ln in text.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    assert contains in lines[0], lines[0]


# -- security: no loader of a received file runs its code ----------------------------------------------

def test_search_resume_checkpoint_runs_no_code(tmp_path):
    run = tmp_path / "run"
    marker = tmp_path / "pwned"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"schema": "dcpnas.search-checkpoint/1", "x": Payload(marker)}, run / "checkpoints" / "epoch_001.pt")
    r, text = cli("search", "--budget", "smoke", "--no-progress", "-o", run, "--resume")
    assert_one_error_line(r, text, contains="epoch_001.pt")
    assert not marker.exists()


def test_cifar10_batch_runs_no_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(marker), b"labels": [0]}, protocol=2))
    r, text = cli("search", "--budget", "smoke", "--no-progress", "-o", tmp_path / "run", "--data", f"cifar10:{tmp_path}")
    assert_one_error_line(r, text, contains="refused global")
    assert not marker.exists()


def test_model_weights_run_no_code(tmp_path):
    from dcpnas.checkpoint import load_model
    from dcpnas.errors import ArtifactError

    marker = tmp_path / "pwned"
    torch.save({"schema": "dcpnas.model/1", "x": Payload(marker)}, tmp_path / "model.pt")
    with pytest.raises(ArtifactError, match="model.pt"):
        load_model(tmp_path / "model.pt")
    assert not marker.exists()


# -- nothing lost, nothing half-written --------------------------------------------------------------------

TINY = dict(cells=3, channels=4, parity_inputs=2)


@pytest.fixture(scope="module")
def good_build(tmp_path_factory):
    from dcpnas.compiler.pipeline import compile_genotype
    from dcpnas.genotype import DDPNAS_MCN_2

    d = tmp_path_factory.mktemp("good")
    g = DDPNAS_MCN_2.save(d / "genotype.json")
    art = compile_genotype(g, "x86-avx2", d / "build", **TINY)
    return g, art.path


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.tvm
def test_failed_compile_keeps_the_earlier_build(good_build, monkeypatch):
    from dcpnas.compiler import pipeline
    from dcpnas.compiler.artifact import Artifact
    from dcpnas.errors import CompileError

    g, out = good_build
    before = _snapshot(out)
    mode = out.stat().st_mode & 0o777
    assert mode == 0o777 & ~_umask() and (out / "manifest.json").stat().st_mode & 0o777 == 0o666 & ~_umask()

    def fail(*a, **k):
        raise CompileError("injected failure after model.onnx was written")

    import dcpnas.compiler.build as build

    monkeypatch.setattr(build, "build_onnx_model", fail)
    with pytest.raises(CompileError, match="injected"):
        pipeline.compile_genotype(g, "x86-avx2", out, **TINY)
    assert _snapshot(out) == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no partial folder left
    Artifact.load(out)  # still valid, hashes included


def test_compile_output_paths_refused_in_one_line(tmp_path):
    from dcpnas.genotype import DDPNAS_MCN_2

    g = DDPNAS_MCN_2.save(tmp_path / "genotype.json")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    cases = {tmp_path / "a_file": "not a folder", tmp_path / "a_file" / "sub": "is a file",
             Path("/proc/dcpnas-build"): "cannot create", tmp_path / "mine": "not a build folder"}
    for out, why in cases.items():
        r, text = cli("compile", g, "-t", "x86-avx2", "-o", out, "-q", "--cells", "3", "--channels", "4")
        assert_one_error_line(r, text, contains=why)
    assert (tmp_path / "a_file").read_text() == "x" and (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_artifacts_follow_the_umask(tmp_path):
    from dcpnas.io import write_json

    old = os.umask(0o027)
    try:
        p = write_json(tmp_path / "a.json", {"x": 1})
        assert p.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    for bad in (tmp_path, Path("/proc/x.json"), tmp_path / "a.json" / "b.json"):
        from dcpnas.errors import ArtifactError

        with pytest.raises(ArtifactError, match="cannot write"):
            write_json(bad, {})


def _umask() -> int:
    from dcpnas.io import umask

    return umask()


# -- search run folders ------------------------------------------------------------------------------------

def test_new_search_into_an_earlier_run_is_refused_and_ctrl_c_prints_the_resume_command(tmp_path, monkeypatch):
    import sys

    import dcpnas.search as search

    run = tmp_path / "run"
    r, text = cli("search", "--budget", "smoke", "--no-progress", "-o", run)
    assert r.exit_code == 0, text
    before = (run / "genotype.json").read_bytes()
    r, text = cli("search", "--budget", "smoke", "--no-progress", "-o", run, "--seed", "5")
    assert_one_error_line(r, text, contains="--resume")
    assert (run / "genotype.json").read_bytes() == before
    # --resume with another config changes nothing, config.toml included (it was written over before the check)
    config_before = (run / "config.toml").read_bytes()
    r, text = cli("search", "--budget", "smoke", "--no-progress", "-o", run, "--seed", "5", "--resume")
    assert_one_error_line(r, text, contains="--resume needs the same config; differs in seed")
    assert (run / "config.toml").read_bytes() == config_before and (run / "genotype.json").read_bytes() == before
    # a finished run whose checkpoints are gone: nothing to resume, and nothing overwritten
    import shutil

    shutil.rmtree(run / "checkpoints")
    metrics = (run / "metrics.jsonl").read_bytes()
    r, text = cli("search", "--budget", "smoke", "--no-progress", "-o", run, "--resume")
    assert_one_error_line(r, text, contains="finished run without checkpoints/")
    assert (run / "metrics.jsonl").read_bytes() == metrics and (run / "genotype.json").read_bytes() == before

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "_run", interrupt)
    monkeypatch.setattr(sys, "argv", ["dcpnas", "search", "--budget", "smoke", "--seed", "7"])
    r, text = cli("search", "--budget", "smoke", "--seed", "7", "--no-progress")
    assert r.exit_code == 130
    assert "dcpnas search --budget smoke --seed 7 -o runs/dcp-notarget-seed7 --resume" in text
    assert "before the first checkpoint (nothing to keep)" in text  # no "partial results are saved" where none are


# -- files that are too deep, unreadable or not what their name says ----------------------------------------

@pytest.mark.parametrize("content", ["[" * 100000 + "]" * 100000, "", "not json", '{"schema": NaN, "x": Infinity}',
                                     '{"n": ' + "9" * 5000 + "}"])
def test_malformed_json_everywhere_gets_one_line(tmp_path, content):
    g = tmp_path / "genotype.json"
    g.write_text(content)
    build = tmp_path / "build"
    build.mkdir()
    (build / "manifest.json").write_text(content)
    for args in (["compile", g, "-t", "x86-avx2", "-o", tmp_path / "o"], ["bench", build],
                 ["train", g, "-o", tmp_path / "t"]):
        r, text = cli(*args)
        assert_one_error_line(r, text, contains=str(tmp_path))


def test_json_has_no_nan_in_or_out(tmp_path):
    """JSON has no NaN or Infinity: artifacts are written with null in their place (a diverged loss, an undefined
    correlation) and loaders refuse the bare tokens that Python's json module would write and read."""
    import json

    from dcpnas.errors import ArtifactError
    from dcpnas.io import append_jsonl, read_json, write_json

    write_json(tmp_path / "a.json", {"loss": float("nan"), "rows": [1.5, float("inf"), {"r": -float("inf")}]})
    text = (tmp_path / "a.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_json(tmp_path / "a.json") == {"loss": None, "rows": [1.5, None, {"r": None}]}
    append_jsonl(tmp_path / "m.jsonl", {"loss": float("nan")})
    assert json.loads((tmp_path / "m.jsonl").read_text()) == {"loss": None}
    (tmp_path / "b.json").write_text('{"x": -Infinity}')
    with pytest.raises(ArtifactError, match="not valid JSON.*Infinity"):
        read_json(tmp_path / "b.json")


def test_unreadable_files_get_one_line():
    from dcpnas.errors import ArtifactError, ConfigError
    from dcpnas.io import read_json, read_toml

    with pytest.raises(ArtifactError, match="cannot read"):
        read_json("/proc/self/mem")  # exists, is a file, reading it fails (EIO)
    with pytest.raises(ConfigError, match="cannot read"):
        read_toml("/proc/self/mem", ConfigError)


# -- hangs and crashes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("direct", [True, False])
def test_rpc_peer_that_never_answers_times_out(direct):
    import socket
    import time

    from dcpnas.errors import DeviceError
    from dcpnas.targets import get_target
    from dcpnas.targets.profiler import Profiler

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)  # accepts (the kernel completes the handshake), never answers
    port = srv.getsockname()[1]
    try:
        prof = Profiler(get_target("arm-a72"), rpc=f"127.0.0.1:{port}", direct=direct, timeout_s=1.0, retries=1)
        t0 = time.perf_counter()
        with pytest.raises(DeviceError, match="did not answer the TVM RPC handshake within 1 s"):
            with prof.session():
                pass
        assert time.perf_counter() - t0 < 10
    finally:
        srv.close()


@pytest.mark.parametrize("args, needle", [
    (["--threads", "100000"], "--threads must be in 1..1024"),
    (["--threads", "0"], "--threads must be in 1..1024"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--repeat", "0"], "--repeat must be >= 1"),
    (["--min-repeat-ms", "nan"], "finite"),
    (["--emulated"], "--emulated describes an RPC device: give --rpc"),
    (["-o", "FILE"], "is a file; give a folder (nothing was done)"),
])
def test_bench_options_refused_in_one_line(tmp_path, args, needle):
    from dcpnas.compiler.artifact import MANIFEST

    build = tmp_path / "b"
    build.mkdir()
    (build / MANIFEST).write_text("{}")  # the options are checked before the build folder is read
    (tmp_path / "f").write_text("mine")
    r, text = cli("bench", build, *[str(tmp_path / "f") if a == "FILE" else a for a in args])
    assert_one_error_line(r, text, contains=needle)


# -- numbers: NaN, inf, zero, negative, absurd sizes -------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["search", "--latency-ms", "nan"], "latency_ms"),
    (["search", "--latency-ms", "inf"], "latency_ms"),
    (["search", "--lambda", "nan"], "lam"),
    (["search", "--mu", "-inf"], "mu"),
    (["search", "--threads", "100000"], "threads must be <= 1024"),
    (["search", "--epochs", "0"], "epochs must be >= 1"),
    (["train", "DDPNAS_MCN_2", "--channels", "100000"], "channels must be in 1..4096"),
    (["train", "DDPNAS_MCN_2", "--channels", "0"], "channels must be in 1..4096"),
    (["compile", "G", "-t", "x86-avx2", "--channels", "0"], "--channels must be in 1..4096"),
    (["compile", "G", "-t", "x86-avx2", "--channels", "100000"], "--channels must be in 1..4096"),
    (["compile", "G", "-t", "x86-avx2", "--cells", "0"], "--cells must be in 1..64"),
    (["compile", "G", "-t", "x86-avx2", "--parity-inputs", "0"], "--parity-inputs must be in 1..100000"),
    (["compile", "G", "-t", "x86-avx2", "--parity-inputs", "-5"], "--parity-inputs must be in 1..100000"),
    (["lut", "check", "-t", "x86-avx2", "--n", "0"], "--n must be >= 1"),
    (["lut", "check", "-t", "x86-avx2", "--threads", "100000"], "--threads must be in 1..1024"),
    (["lut", "build", "-t", "x86-avx2", "--min-repeat-ms", "nan"], "finite"),
    (["compile", "G", "-t", "x86-avx2", "--fresh", "--input-shape", "3,1000000,1000000"], "sides of 1..4096"),
    (["lut", "build", "-t", "x86-avx2", "--modeled", "--cells", "5", "--input-shape", "3,0,32"], "sides of 1..4096"),
    (["search", "--seed", "-1"], "seed must be an integer in 0..4294967295"),
    (["search", "--data", "fashion-mnist:/nonexist"], "/nonexist: not a folder"),
    (["lut", "show", "x86-avx2", "--top", "-1"], "--top must be >= 0"),
    (["lut", "build", "-t", "x86-avx2", "--modeled", "--statistic", "foo"], "--statistic must be median or min"),
    (["search", "--seed", "99999999999999999999999"], "seed must be an integer in 0..4294967295"),
    (["train", "DDPNAS_MCN_2", "--seed", "-1"], "seed must be an integer in 0..4294967295"),
    (["lut", "check", "-t", "x86-avx2", "--seed", "-1"], "--seed must be in 0..4294967295"),
    (["lut", "check", "-t", "x86-avx2", "-o", "G"], "exists and is not a dcpnas.lutcheck/1 file"),
    (["lut", "check", "-t", "x86-avx2", "--build-dir", "G"], "is a file; give a folder"),
    (["tune", "--shape", "64,8,64", "--records-dir", "G"], "is a file; give a folder"),
    (["tune", "--shape", "3,8"], "--shape takes K,H,C"),
    (["tune", "--shape", "0,8,8"], "--shape takes K,H,C"),
])
def test_numbers_out_of_range_refused(tmp_path, args, needle):
    from dcpnas.genotype import DDPNAS_MCN_2

    g = DDPNAS_MCN_2.save(tmp_path / "genotype.json")
    args = [str(g) if a == "G" else a for a in args]
    r, text = cli(*args, "-o", tmp_path / "out") if args[0] in ("search", "train", "compile") else cli(*args)
    assert_one_error_line(r, text, contains=needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, needle", [
    ("lam = nan", "lam: expected a finite number"),
    ("mu = inf", "mu: expected a finite number"),
    ("tau = nan", "tau"),
    ("decoupled = \"maybe\"", "decoupled: expected true or false"),
    ("epochs = 2.5", "epochs: expected an integer"),
    ("channels = 100000", "channels must be <= 4096"),
])
def test_config_file_values(tmp_path, line, needle):
    from dcpnas.config import SearchConfig
    from dcpnas.errors import ConfigError

    (tmp_path / "c.toml").write_text(line + "\n")
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        SearchConfig.load(tmp_path / "c.toml")


def test_bad_value_is_blamed_on_the_flag_not_the_config_file(tmp_path):
    """A flag's bad value beside a good --config file names the options; a bad file value names the file."""
    from dcpnas.config import SearchConfig
    from dcpnas.errors import ConfigError
    from dcpnas.train import TrainConfig

    good = tmp_path / "good.toml"
    good.write_text("[train]\nepochs = 2\n")
    with pytest.raises(ConfigError, match=r"^options: stage2_lr: expected a finite number"):
        TrainConfig.from_toml(good, {"stage2_lr": float("nan")})
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = nan\n")
    with pytest.raises(ConfigError, match="^" + str(bad).replace("\\", "\\\\") + ": lr: expected a finite"):
        TrainConfig.from_toml(bad, {"epochs": 2})
    assert TrainConfig.from_toml(bad, {"lr": 0.01}).lr == 0.01  # a flag replaces the file's value before it is read
    (tmp_path / "s.toml").write_text("[search]\nepochs = 2\n")
    with pytest.raises(ConfigError, match=r"^options: lam: expected a finite number"):
        SearchConfig.load(tmp_path / "s.toml", {"lam": float("inf")})
    assert SearchConfig.load(tmp_path / "s.toml", {"mu": 0.5}).epochs == 2


def test_empty_genotype_path_gets_one_line(tmp_path):
    r, text = cli("train", "", "-o", tmp_path / "run")
    assert_one_error_line(r, text, contains="no genotype file given")


def test_config_constructed_with_nan_fails():
    from dcpnas.config import SearchConfig
    from dcpnas.errors import ConfigError
    from dcpnas.train import TrainConfig

    for make in (lambda: SearchConfig(lam=float("nan")), lambda: SearchConfig(latency_ms=float("nan")),
                 lambda: SearchConfig(arch_lr=float("inf")), lambda: TrainConfig(lr=float("nan")),
                 lambda: TrainConfig(weight_decay=float("inf")), lambda: TrainConfig(stage1_fraction=float("nan"))):
        with pytest.raises(ConfigError):
            make()


def test_train_never_mixes_with_or_destroys_an_earlier_run(tmp_path):
    """Without --resume, `dcpnas train` into a folder holding a run (or a search's metrics) is refused before
    anything is written; with --resume, a damaged checkpoint of the same config is one line, not a traceback;
    a [train] that is not a table, and a 1-bit network given as the teacher, are refused."""
    from dcpnas.checkpoint import save_torch
    from dcpnas.genotype import DDPNAS_MCN_2
    from dcpnas.train import CHECKPOINT_SCHEMA, TrainConfig

    g = DDPNAS_MCN_2.save(tmp_path / "genotype.json")
    out = tmp_path / "t"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (out / "model.pt").write_bytes(b"earlier")
    tiny = ["--cells", "1", "--channels", "4", "--epochs", "1"]
    r, text = cli("train", g, *tiny, "-o", out)
    assert_one_error_line(r, text, contains="holds an earlier run (model.pt, metrics.jsonl); continue it with --resume")
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1}\n' and (out / "model.pt").read_bytes() == b"earlier"

    cfg = TrainConfig(cells=1, channels=4, epochs=1)
    res = tmp_path / "r"
    save_torch(res / "checkpoint.pt", {"schema": CHECKPOINT_SCHEMA, "config": cfg.to_dict(),
                                       "genotype_digest": DDPNAS_MCN_2.digest(), "stage": 99, "model": "x"})
    r, text = cli("train", g, *tiny, "-o", res, "--resume")
    assert_one_error_line(r, text, contains="damaged checkpoint")

    (tmp_path / "c.toml").write_text("train = 5\n")
    r, text = cli("train", g, "--config", tmp_path / "c.toml", "-o", tmp_path / "c")
    assert_one_error_line(r, text, contains="[train] must be a table")

    from dcpnas.checkpoint import save_model
    from dcpnas.model import Network
    from dcpnas.space import SearchSpace

    space = SearchSpace(cells=1, channels=4, input_shape=(1, 28, 28), num_classes=10, reductions=(0,))
    save_model(tmp_path / "binary.pt", Network(DDPNAS_MCN_2, space, binary=True), {"mean": [0.3], "std": [0.3]})
    r, text = cli("train", g, *tiny, "--teacher", tmp_path / "binary.pt", "-o", tmp_path / "k")
    assert_one_error_line(r, text, contains="a 1-bit network; the teacher is the real-valued twin")


def test_checkpoint_claiming_a_huge_or_mismatched_network(tmp_path):
    from dcpnas.checkpoint import load_model, model_record
    from dcpnas.errors import ArtifactError
    from dcpnas.genotype import DDPNAS_MCN_2
    from dcpnas.model import Network
    from dcpnas.train import default_eval_space

    net = Network(DDPNAS_MCN_2, default_eval_space(cells=3, channels=4), binary=True)
    rec = model_record(net, {"mean": [0.5], "std": [0.25]})
    huge = dict(rec, space={**rec["space"], "channels": 10**6})
    torch.save(huge, tmp_path / "huge.pt")
    with pytest.raises(ArtifactError, match="beyond the limits"):
        load_model(tmp_path / "huge.pt")
    wrong = dict(rec, space={**rec["space"], "channels": 8})
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(ArtifactError, match=r"has shape \[.*\] in the file, the network needs \[.*\]"):
        load_model(tmp_path / "wrong.pt")


# -- files that validate in form but not in substance: LUTs and target files --------------------------------

@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(glue={"per_cell_ms": -999.9}), "glue' must be an object of finite *_ms numbers >= 0"),
    (lambda d: d.update(glue={"call_overhead_ms": float("nan")}), "not valid JSON (NaN is not a JSON number)"),
    (lambda d: d.update(costmodel=5), "'costmodel' must be an object whose numbers are all finite"),
    (lambda d: d.update(measurement=[1]), "'measurement' must be an object"),
])
def test_lut_with_impossible_numbers(tmp_path, edit, needle):
    import json

    from dcpnas.errors import LutError
    from dcpnas.targets.lut import SCHEMA, LatencyTable

    d = {"schema": SCHEMA, "target": "x86-avx2", "device": "t", "threads": 1, "method": "measured",
         "entries": {"sep_conv_3x3|8|8|28|28|1": {"mean_ms": 0.05, "std_ms": 0.0, "count": 3},
                     "stem|1|24|28|28|1": {"mean_ms": 0.02, "std_ms": 0.0, "count": 3}}}
    edit(d)
    (tmp_path / "l.json").write_text(json.dumps(d))
    with pytest.raises(LutError) as e:
        LatencyTable.load(tmp_path / "l.json")
    assert needle in str(e.value)
    if "NaN" in needle:  # built in memory, NaN reaches the validator
        with pytest.raises(LutError, match="glue"):
            LatencyTable.from_dict(d)
        d.pop("glue")
        d["costmodel"] = {"coef": {"a": float("nan")}}
        with pytest.raises(LutError, match="costmodel"):
            LatencyTable.from_dict(d)


def test_all_zero_lut_refused_by_the_search(tmp_path):
    from dcpnas.config import SearchConfig
    from dcpnas.errors import LutError
    from dcpnas.search import run_search

    class ZeroLut:
        method = "measured"

        def query(self, key):
            return 0.0

    with pytest.raises(LutError, match="predicts 0.0 ms for the initial supernet"):
        run_search(SearchConfig.load(None, {"budget": "smoke"}), tmp_path / "run", table=ZeroLut())


def test_target_file_with_an_unknown_cpu(tmp_path):
    import tomllib

    from dcpnas.targets.registry import BUILTIN_DIR

    d = (BUILTIN_DIR / "x86-avx2.toml").read_text().replace('name = "x86-avx2"', 'name = "mine"')
    mcpu = tomllib.loads(d)["tvm"]["mcpu"]
    (tmp_path / "t.toml").write_text(d.replace(f'mcpu = "{mcpu}"', 'mcpu = "skylake-avx51"'))
    g = tmp_path / "genotype.json"
    from dcpnas.genotype import DDPNAS_MCN_2

    DDPNAS_MCN_2.save(g)
    r, text = cli("compile", g, "-t", tmp_path / "t.toml", "-o", tmp_path / "b")
    assert_one_error_line(r, text, contains="[tvm] mcpu 'skylake-avx51' is not a CPU LLVM knows")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("edit, needle", [
    (("num-cores = 2", "num-cores = -1"), "num-cores must be an integer >= 1"),
    (("[costmodel]", "[costmodel.scale]\nkbitops = nan\n[costmodel]"), "[costmodel.scale] must map features to finite"),
    (("[costmodel]", "[costmodel.coef]\nkbitops = -6.0\n[costmodel]"), "[costmodel.coef] must map features to finite"),
])
def test_target_file_with_impossible_numbers(tmp_path, edit, needle):
    from dcpnas.targets.registry import BUILTIN_DIR

    d = (BUILTIN_DIR / "x86-avx512.toml").read_text().replace('name = "x86-avx512"', 'name = "mine"')
    assert edit[0] in d
    (tmp_path / "t.toml").write_text(d.replace(edit[0], edit[1], 1))
    r, text = cli("targets", "-t", tmp_path / "t.toml")
    assert_one_error_line(r, text, contains=needle)


# -- ONNX files from the field -------------------------------------------------------------------------------

def _onnx(tmp_path, nodes, inputs, outputs, inits=(), opset=13, name="m.onnx", dcpnas=False) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    g = helper.make_graph(nodes, "g", [vi(n, s) for n, s in inputs], [vi(n, s) for n, s in outputs],
                          [numpy_helper.from_array(np.asarray(v, np.float32) if k[0] != "i" else np.asarray(v, np.int64), k)
                           for k, v in inits])
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("dcpnas", 1)] if dcpnas else [])
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = 7
    p = tmp_path / name
    p.write_bytes(m.SerializeToString())
    return p


@pytest.mark.parametrize("case, needle", [
    ("binconv_no_channels_in", "needs the attribute channels_in"),
    ("maxpool_1d", "MaxPool with a 1-D kernel"),
    ("avgpool_3d", "AveragePool with a 3-D kernel"),
    ("empty_slice", "Slice gives an empty tensor"),
    ("gemm_bias_column", "Gemm bias of shape [3, 1] does not match the 3 outputs"),
    ("gemm_input_mismatch", "Gemm input of shape [1, 5] does not fit weights"),
    ("concat_mismatch", "Concat inputs differ outside axis 1"),
    ("clip", "unsupported ONNX op(s): Clip"),
    ("prelu_width_slope", "broadcasts over the width"),
    ("unnamed_concat", "Concat_0: Concat inputs differ"),
    ("prelu_opset6", "opset-6 PRelu with a per-channel slope"),
])
def test_onnx_importer_cases_refused_in_one_line(tmp_path, case, needle):
    from onnx import helper

    h = helper.make_node
    x4 = [("x", [1, 2, 4, 4])]
    models = {
        "binconv_no_channels_in": lambda: _onnx(tmp_path, [h("BinaryConv2d", ["x", "w", "s"], ["y"], name="bc", domain="dcpnas",
                                                                kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
                                                x4, [("y", [1, 2, 4, 4])], [("w", np.zeros((2, 1, 3, 3))), ("s", np.ones(2))],
                                                dcpnas=True),
        "maxpool_1d": lambda: _onnx(tmp_path, [h("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2])],
                                    [("x", [1, 2, 8])], [("y", [1, 2, 7])]),
        "avgpool_3d": lambda: _onnx(tmp_path, [h("AveragePool", ["x"], ["y"], name="p", kernel_shape=[2, 2, 2])],
                                    [("x", [1, 2, 4, 4, 4])], [("y", [1, 2, 3, 3, 3])]),
        "empty_slice": lambda: _onnx(tmp_path, [h("Slice", ["x", "i_s", "i_e", "i_a"], ["y"], name="sl")], x4,
                                     [("y", [1, 0, 4, 4])], [("i_s", [1]), ("i_e", [1]), ("i_a", [1])]),
        "gemm_bias_column": lambda: _onnx(tmp_path, [h("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
                                          [("x", [1, 4])], [("y", [1, 3])], [("w", np.ones((3, 4))), ("b", np.ones((3, 1)))]),
        "gemm_input_mismatch": lambda: _onnx(tmp_path, [h("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)],
                                             [("x", [1, 5])], [("y", [1, 3])], [("w", np.ones((3, 4))), ("b", np.ones(3))]),
        "concat_mismatch": lambda: _onnx(tmp_path, [h("Concat", ["x", "c"], ["y"], name="cat", axis=1)], x4,
                                         [("y", [1, 3, 4, 4])], [("c", np.ones((1, 1, 2, 4)))]),
        "clip": lambda: _onnx(tmp_path, [h("Clip", ["x"], ["y"], name="c")], x4, [("y", [1, 2, 4, 4])]),
        "prelu_width_slope": lambda: _onnx(tmp_path, [h("PRelu", ["x", "sl"], ["y"], name="pr")], x4,
                                           [("y", [1, 2, 4, 4])], [("sl", [0.1, 0.2, 0.3, 0.4])]),
        "prelu_opset6": lambda: _onnx(tmp_path, [h("PRelu", ["x", "sl"], ["y"], name="pr")], x4,
                                      [("y", [1, 2, 4, 4])], [("sl", [0.1, 0.2])], opset=6),
        "unnamed_concat": lambda: _onnx(tmp_path, [h("Concat", ["x", "c"], ["y"], axis=1)], x4,
                                        [("y", [1, 3, 4, 4])], [("c", np.ones((1, 1, 2, 4)))]),
    }
    r, text = cli("compile", models[case](), "-t", "x86-avx2", "-o", tmp_path / "b", "-q")
    assert_one_error_line(r, text, contains=needle)
    assert ": :" not in text and not (tmp_path / "b").exists()


@pytest.mark.tvm
def test_onnx_field_forms_build_with_parity(tmp_path):
    """Input not named `input`, a per-channel PRelu slope of shape [C, 1, 1], a scalar Gemm bias:
    each builds, and TVM agrees with ONNX Runtime."""
    from onnx import helper

    from dcpnas.compiler.artifact import Artifact

    h = helper.make_node
    prelu = _onnx(tmp_path, [h("PRelu", ["img", "sl"], ["p"], name="pr"), h("Flatten", ["p"], ["y"], name="fl")],
                  [("img", [1, 2, 3, 3])], [("y", [1, 18])], [("sl", [[[0.1]], [[-0.5]]])], name="prelu.onnx")
    gemm = _onnx(tmp_path, [h("Gemm", ["feat", "w", "b"], ["y"], name="fc", transB=1)], [("feat", [1, 4])],
                 [("y", [1, 3])], [("w", np.arange(12).reshape(3, 4) / 10), ("b", [0.7])], name="gemm.onnx")
    for src in (prelu, gemm):
        out = tmp_path / f"b-{src.stem}"
        r, text = cli("compile", src, "-t", "x86-avx2", "-o", out, "-q")
        assert r.exit_code == 0, text
        p = Artifact.load(out).manifest["parity"]
        assert p["passed"] and p["max_abs_diff_tvm"] <= 1e-5 * max(1.0, p["reference_max_abs"]), p


def test_onnx_external_data_outside_the_model_folder_refused(tmp_path):
    import onnx
    from onnx import TensorProto

    for loc in ("/etc/hostname", "../outside.bin"):
        p = _onnx(tmp_path, [onnx.helper.make_node("Add", ["x", "w"], ["y"], name="a")], [("x", [2, 2])],
                  [("y", [2, 2])], [("w", np.zeros((2, 2)))])
        m = onnx.load(str(p))
        w = m.graph.initializer[0]
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("raw_data")
        for k, v in (("location", loc), ("offset", "0"), ("length", "16")):
            e = w.external_data.add()
            e.key, e.value = k, v
        p.write_bytes(m.SerializeToString())
        r, text = cli("compile", p, "-t", "x86-avx2", "-o", tmp_path / "b", "-q")
        assert_one_error_line(r, text, contains="not a readable ONNX file")


# -- one spelling per option ---------------------------------------------------------------------------------

def test_cli_options_are_spelled_one_way():
    import typer

    def commands(cmd, path=()):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                yield from commands(sub, path + (name,))
        else:
            yield " ".join(path), cmd

    seen = dict(commands(typer.main.get_command(app)))
    assert {"search", "train", "compile", "bench", "tune", "lut build", "lut check"} <= set(seen)
    for name, cmd in seen.items():
        opts = {o: p.opts for p in cmd.params for o in p.opts}
        assert "--quiet" not in opts, name
        if "--target" in opts:
            assert "-t" in opts["--target"], f"{name}: --target without -t"
        if name in ("search", "train", "compile", "bench", "tune", "lut build", "lut check"):
            assert set(opts.get("--no-progress", ())) == {"--no-progress", "-q"}, name
    assert not [n for n, c in seen.items() if "--target-file" in {o for p in c.params for o in p.opts}]


@pytest.mark.parametrize("cmd", [["search", "--budget", "smoke", "-q"], ["train", "DDPNAS_MCN_2", "--epochs", "1", "-q"]])
def test_search_and_train_output_paths_refused_in_one_line(tmp_path, cmd):
    (tmp_path / "a_file").write_text("x")
    for out, why in {tmp_path / "a_file": "is a file", tmp_path / "a_file" / "sub": "is a file",
                     Path("/proc/dcpnas-run"): "cannot create the output folder"}.items():
        r, text = cli(*cmd, "-o", out)
        assert_one_error_line(r, text, contains=why)
    assert (tmp_path / "a_file").read_text() == "x"


@pytest.mark.parametrize("argv, contains", [
    (["search", "--threads", "nan"], "--threads"), (["train"], "Missing argument"),
    (["warp"], "No such command"), (["bench", "--threads", "2", "--bogus"], "--bogus")])
def test_usage_errors_are_one_line_and_exit_1(argv, contains, capsys):
    """The console entry point (not the Typer app alone): the parser's own errors follow the rule too."""
    from dcpnas.cli import main

    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and contains in err and "--help" in err


def test_bare_command_prints_help_and_a_failing_command_only_its_error(tmp_path, capsys):
    from dcpnas.cli import main

    assert main([]) == 0
    out, _ = capsys.readouterr()
    assert "search" in out and "compile" in out
    # compile starts its progress bars before it finds the genotype missing: no bar, no blank line left
    assert main(["compile", str(tmp_path / "none.json"), "--target", "x86-avx512"]) == 1
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [err.strip()] and err.startswith("error: ") and "not found" in err


def test_help_keeps_every_default_written_in_a_help_string():
    """Rich markup eats an unescaped "[default: ...]" in a help string: `--help` then shows "Thread count ."."""
    import typer

    def commands(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from commands(sub, [*path, name])

    runner = CliRunner()
    for path, cmd in commands(typer.main.get_command(app), []):
        written = sum((getattr(p, "help", None) or "").count("[default:") for p in cmd.params)
        if not written:
            continue
        res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        assert res.output.count("[default:") >= written, (path, res.output)


def test_train_stage1_snapshot_runs_no_code_and_says_one_line(tmp_path):
    """A raw pickle (protocol 4) as --stage1-from: refused, nothing of it runs, and torch's protocol warning does
    not come out beside the one error line."""
    import subprocess
    import sys

    marker = tmp_path / "pwned"
    (tmp_path / "stage1.pt").write_bytes(pickle.dumps(Payload(marker), protocol=4))
    entry = "import sys; from dcpnas.cli import main; sys.exit(main(sys.argv[1:]))"  # the console entry point
    p = subprocess.run([sys.executable, "-c", entry, "train", "DDPNAS_MCN_2", "-q", "-o", str(tmp_path / "o"),
                        "--stage1-from", str(tmp_path / "stage1.pt")], capture_output=True, text=True, timeout=300)
    text = (p.stdout + p.stderr).strip()
    assert p.returncode == 1 and len(text.splitlines()) == 1 and text.startswith("error:"), text
    assert "stage1.pt" in text and not marker.exists()

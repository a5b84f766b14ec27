"""benchmarks/accuracy.py: rows train and resume through dcpnas.train, the report joins finished and running
rows, a distilled row uses the float row as its teacher."""

import json

import pytest



@pytest.fixture(scope="module")
def acc(benchmark_script):
    return benchmark_script("accuracy")


def test_rows_train_report_and_skip(acc, tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["-o", str(out), "--runs", str(runs), "--data", "embedded", "--train-subset", "40", "--test-subset",
            "20", "--cells", "3", "--channels", "4", "--float-epochs", "1", "--binary-epochs", "1",
            "--batch-size", "20", "--rows", "authors-kd"]
    with pytest.raises(SystemExit, match="float row"):
        acc.main(argv)
    # a row still training shows up as running, with its finished epochs
    (runs / "book").mkdir(parents=True)
    (runs / "book" / "metrics.jsonl").write_text(json.dumps({"test_accuracy": 0.25, "seconds": 3.0}) + "\n")
    argv[-1] = "float,authors-kd"
    assert acc.main(argv) == 0
    rep = json.loads((out / "accuracy.json").read_text())
    rows = {r["row"]: r for r in rep["rows"]}
    assert set(rows) == {"float", "authors-kd", "book"}
    assert rows["book"]["finished"] is False and rows["book"]["epochs_done"] == 1
    train_kd = json.loads((runs / "authors-kd" / "train.json").read_text())
    assert train_kd["teacher"] == str(runs / "float" / "model.pt") and train_kd["space"]["policy"] == "authors"
    assert train_kd["space"]["reductions"] == [0, 2] and train_kd["n_train"] == 40
    assert rep["binary_row"] == "authors-kd" and rep["binary_test_accuracy"] == train_kd["test_accuracy"]
    assert rep["float_test_accuracy"] == rows["float"]["test_accuracy"] and rep["dataset"] == "fashion-mnist-subset"
    assert rep["train_s"] == pytest.approx(rows["authors-kd"]["train_s"] + rows["float"]["train_s"])
    import shlex

    again = acc.parse_args(shlex.split(rep["command"])[5:])  # the recorded command resumes the same rows
    assert acc.row_config(again, "authors-kd") == acc.row_config(acc.parse_args(argv), "authors-kd")
    table = (out / "accuracy.md").read_text()
    assert "| authors-kd | yes | authors | yes | 1 of 1 |" in table and "(running)" in table
    # a second run skips finished rows
    before = (runs / "float" / "model.pt").stat().st_mtime_ns
    acc.main(argv)
    assert (runs / "float" / "model.pt").stat().st_mtime_ns == before


def test_unknown_row_is_refused(acc, tmp_path):
    with pytest.raises(SystemExit):
        acc.parse_args(["--rows", "float,mine"])


def test_progress_lines_restart_with_each_stage(acc, tmp_path, monkeypatch, capsys):
    """Each stage counts its steps from 1: stage 2 prints its progress lines too (it stayed silent for half
    its steps when the counter ran on from stage 1's last step)."""
    import types

    import dcpnas.train

    def fake_train(geno, cfg, out, progress, resume, teacher, cuda_graph, start_from=None):
        for phase, steps in (("stage1", 60), ("stage2", 60)):
            for done in range(1, steps + 1):
                progress(phase, done, steps, loss=0.5, acc=0.9)
        return types.SimpleNamespace(test_accuracy=0.9, seconds=1.0)

    monkeypatch.setattr(dcpnas.train, "train", fake_train)
    args = acc.parse_args(["-o", str(tmp_path / "o"), "--runs", str(tmp_path / "r"), "--rows", "authors"])
    acc.run_row(args, "authors", None)
    lines = capsys.readouterr().out.splitlines()
    assert sum("stage1 step" in ln for ln in lines) == 3 and sum("stage2 step" in ln for ln in lines) == 3


def test_stage1_from_an_earlier_run(acc, tmp_path):
    """--stage1-from RUNS: a 1-bit row starts stage 2 from RUNS/<row>/stage1.pt (only stage-2 settings differ)."""
    import torch

    torch.set_num_threads(1)
    base = ["--data", "embedded", "--train-subset", "40", "--test-subset", "20", "--cells", "3", "--channels", "4",
            "--binary-epochs", "3", "--batch-size", "20", "--rows", "authors"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert acc.main(["-o", str(a / "out"), "--runs", str(a / "runs"), *base]) == 0
    assert acc.main(["-o", str(b / "out"), "--runs", str(b / "runs"), *base, "--stage2-lr", "1e-4",
                     "--stage1-from", str(a / "runs")]) == 0
    ta, tb = (json.loads((d / "runs" / "authors" / "train.json").read_text()) for d in (a, b))
    assert tb["stage1_from"] == str(a / "runs" / "authors" / "stage1.pt") and ta["stage1_from"] is None
    assert tb["history"][0] == ta["history"][0] and tb["history"][1] != ta["history"][1]
    rep = json.loads((b / "out" / "accuracy.json").read_text())
    assert rep["rows"][0]["stage1_from"] == tb["stage1_from"] and "--stage1-from" in rep["command"]
    assert rep["rows"][0]["last_weights_test_accuracy"] is None
    # with the stage-2 weight average, the row's network is the average and its last weights are reported too
    c = tmp_path / "c"
    assert acc.main(["-o", str(c / "out"), "--runs", str(c / "runs"), *base, "--stage2-ema", "0.5",
                     "--stage1-from", str(a / "runs")]) == 0
    row = json.loads((c / "out" / "accuracy.json").read_text())["rows"][0]
    assert row["last_weights_test_accuracy"] == ta["test_accuracy"]  # the same weights trained as run a's
    assert row["epoch_test_accuracy_ema"][-1] == row["test_accuracy"] and row["epoch_test_accuracy_ema"][0] is None
    assert "| authors | " in (c / "out" / "accuracy.md").read_text().split("last weights %")[1]


def test_stage1_from_that_does_not_fit_is_one_error_before_any_row_trains(acc, tmp_path, capsys):
    """A missing or foreign stage1.pt: one 'error:' line and exit 1 before the float row spends its hours."""
    bad = tmp_path / "bad" / "authors"
    bad.mkdir(parents=True)
    (bad / "stage1.pt").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle payload, never run
    runs = tmp_path / "runs"
    for src in (tmp_path / "none", tmp_path / "bad"):
        assert acc.main(["-o", str(tmp_path / "out"), "--runs", str(runs), "--data", "embedded", "--rows",
                         "float,authors", "--binary-epochs", "3", "--stage1-from", str(src)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not runs.exists()

"""benchmarks/ablation.py: piece claiming, resumption, the report, and a refused change of budget."""

import json
import os
import statistics
import subprocess
import sys

import pytest



@pytest.fixture(scope="module")
def ablation(benchmark_script):
    return benchmark_script("ablation")


def test_claim_is_exclusive_and_dies_with_its_holder(ablation, tmp_path):
    lock = tmp_path / "runs" / "row-seed0.lock"
    held = ablation.claim(lock)
    assert held is not None and ablation.claim(lock) is None  # a second open file cannot take it
    held.close()
    again = ablation.claim(lock)
    assert again is not None
    again.close()
    code = (f"import fcntl, sys, time; f = open({str(lock)!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert ablation.claim(lock) is None  # a live worker holds it
    finally:
        holder.kill()
        holder.wait()
    taken = ablation.claim(lock)  # the kernel released the dead worker's lock
    assert taken is not None
    taken.close()


def test_ordering_note_and_paired_intervals(ablation):
    assert ablation.t_quantile(0.975, 3) == pytest.approx(3.182446, abs=1e-5)  # tables of Student's t
    assert ablation.t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-3)
    d = ablation.paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.6, 2: 0.6, 3: 0.9})
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(0.2 / 3)
    diffs = [0.1, 0.0, 0.1]
    half = ablation.t_quantile(0.975, 2) * statistics.stdev(diffs) / 3 ** 0.5
    assert d["ci95"] == pytest.approx([0.2 / 3 - half, 0.2 / 3 + half])
    assert ablation.paired_difference({0: 0.5}, {0: 0.4})["ci95"] is None

    def row(name, acc, ci):
        return {"row": name, "test_accuracy_mean": acc,
                "test_accuracy_paired_vs_dcp": {"n": 4, "mean": sum(ci) / 2, "ci95": ci}}

    table = [{"row": "dcp", "test_accuracy_mean": 0.8}, row("cp", 0.7, [-0.15, -0.05]),
             row("direct", 0.65, [-0.2, 0.02]), row("random", 0.6, [-0.3, -0.1])]
    note = ablation.ordering_note(table)
    assert "dcp > cp > direct > random in the means: held" in note
    assert "cp - dcp: -10.00 points [-15.00, -5.00] (dcp better)" in note and "(not separated)" in note
    table[1]["test_accuracy_mean"] = 0.9
    assert "did not hold" in ablation.ordering_note(table)


def test_correlation_against_numpy_and_a_textbook_interval(ablation):
    np = pytest.importorskip("numpy")
    xs, ys = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0], [0.7, 0.9, 0.6, 0.8, 0.5, 0.2, 0.8, 0.55]
    c = ablation.correlation(xs, ys)
    assert c["n"] == 8 and c["r"] == pytest.approx(np.corrcoef(xs, ys)[0, 1], abs=1e-12) and c["r"] < -0.9
    lo, hi = c["ci95"]
    z, half = np.arctanh(c["r"]), 1.959964 / np.sqrt(5)
    assert lo < c["r"] < hi and (lo, hi) == pytest.approx((np.tanh(z - half), np.tanh(z + half)), abs=1e-6)
    assert ablation.correlation(xs[:3], ys[:3]) is None and ablation.correlation([1.0] * 8, ys) is None
    assert ablation.correlation([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])["ci95"] == [pytest.approx(1.0)] * 2


TINY = ["--rows", "random", "--seeds", "0", "1", "--train-seeds", "0", "--train-epochs", "1", "--train-subset", "200",
        "--test-subset", "100", "--cells", "2", "--channels", "4", "--data", "embedded", "--threads", "1", "--quiet"]


def test_tiny_run_resumes_and_reports(ablation, tmp_path):
    out = tmp_path / "abl"
    assert ablation.main(["-o", str(out), *TINY, "--max-pieces", "1"]) == 0
    assert sorted(p.name for p in (out / "pieces").iterdir()) == ["random-seed0.json"]
    first = json.loads((out / "pieces" / "random-seed0.json").read_text())
    assert ablation.main(["-o", str(out), *TINY]) == 0  # resumes: seed 0 kept, seed 1 added, no lock left
    assert sorted(p.name for p in (out / "pieces").iterdir()) == ["random-seed0.json", "random-seed1.json"]
    assert json.loads((out / "pieces" / "random-seed0.json").read_text()) == first
    report = json.loads((out / "ablation.json").read_text())
    row = report["rows"][0]
    assert row["row"] == "random" and row["n"] == 2 and 0.0 <= row["test_accuracy_mean"] <= 1.0
    assert list(row["test_accuracy"].values()) == [p["test_accuracy"] for p in report["pieces"]]
    assert all(p["binary_convs"] > 0 and p["search_val_accuracy"] is None for p in report["pieces"])
    md = (out / "ablation.md").read_text()
    assert report["binary_convs_vs_test_accuracy"] is None  # two pieces: too few for a correlation
    assert "| random genotype | 2 |" in md and "paired" in md and "--max-pieces" not in md.split("Command:")[1].splitlines()[0]
    changed = [a if a != "200" else "300" for a in TINY]
    assert ablation.main(["-o", str(out), *changed]) == 1  # another budget in the same folder is refused


def test_workers_split_the_pieces(ablation, tmp_path):
    out = tmp_path / "abl"
    args = ["-o", str(out), *TINY, "--workers", "2"]
    assert ablation.main([*args, "--max-pieces", "1"]) == 1  # refused: the count would be per worker
    assert ablation.main(args) == 0
    assert sorted(p.name for p in (out / "pieces").iterdir()) == ["random-seed0.json", "random-seed1.json"]
    report = json.loads((out / "ablation.json").read_text())
    assert report["rows"][0]["n"] == 2 and "--workers 2" in report["command"]
    assert "--workers 1" not in (out / "ablation.md").read_text()

"""LatencyTable schema/loader, the cost model, modeled LUTs, statistics, and a LUT build on TVM."""

import json
import math

import numpy as np
import pytest

from dcpnas.errors import LutError
from dcpnas.latency import all_keys, fixed_keys, genotype_latency
from dcpnas.space import SearchSpace
from dcpnas.targets import LatencyTable, get_target
from dcpnas.targets import costmodel
from dcpnas.targets.lut import SCHEMA

KEY = "sep_conv_3x3|8|8|28|28|1"


def good():
    return {"schema": SCHEMA, "target": "x86-avx512", "tvm_version": "0.27.0", "device": "test",
            "threads": 2, "method": "measured",
            "entries": {KEY: {"mean_ms": 0.05, "std_ms": 0.001, "count": 15},
                        "pre_conv1x1|24|8|28|28|1": {"mean_ms": 0.01, "std_ms": 0.0, "count": 15},
                        "stem|1|24|28|28|1": {"mean_ms": 0.02, "std_ms": 0.0, "count": 15}}}


def test_roundtrip_and_query(tmp_path):
    lut = LatencyTable.from_dict(good())
    assert lut.query(KEY) == pytest.approx(0.05)
    p = lut.save(tmp_path / "l.json")
    back = LatencyTable.load(p, expect_target="x86-avx512")
    assert back.entries == lut.entries and back.method == "measured" and back.threads == 2
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_query_missing_key_names_it():
    lut = LatencyTable.from_dict(good())
    with pytest.raises(LutError, match=r"no entry 'sep_conv_5x5\|8\|8\|28\|28\|1'.*dcpnas lut build --target x86-avx512"):
        lut.query("sep_conv_5x5|8|8|28|28|1")


def test_glue_charged_per_cell_and_once_per_network():
    d = good()
    d["glue"] = {"per_cell_ms": 0.004, "call_overhead_ms": 0.003}
    lut = LatencyTable.from_dict(d)
    assert lut.query("pre_conv1x1|24|8|28|28|1") == pytest.approx(0.012)
    assert lut.query("stem|1|24|28|28|1") == pytest.approx(0.023)
    assert lut.query(KEY) == pytest.approx(0.05) and lut.raw("stem|1|24|28|28|1") == pytest.approx(0.02)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(schema="dcpnas.lut/2"), "expected schema"),
    (lambda d: d.update(method="guessed"), "method must be one of"),
    (lambda d: d.update(threads=0), "threads"),
    (lambda d: d.pop("device"), "'device'"),
    (lambda d: d["entries"][KEY].update(mean_ms=-1.0), "mean_ms must be a finite number >= 0"),
    (lambda d: d["entries"][KEY].update(mean_ms=float("nan")), "mean_ms"),
    (lambda d: d["entries"][KEY].pop("count"), "count"),
    (lambda d: d["entries"].update({"sep|1|2": {"mean_ms": 1, "std_ms": 0, "count": 1}}), "bad OpKey"),
    (lambda d: d["entries"].update({"sep_conv_3x3|a|8|28|28|1": {"mean_ms": 1, "std_ms": 0, "count": 1}}), "integers"),
    (lambda d: d.update(glue={"per_cell_ms": "x"}), "glue"),
])
def test_bad_luts(tmp_path, edit, message):
    d = good()
    edit(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(LutError, match=message):
        LatencyTable.load(p)


def test_not_json_and_missing(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{nope")
    with pytest.raises(LutError, match="not valid JSON"):
        LatencyTable.load(p)
    with pytest.raises(LutError, match="run `dcpnas lut build --target foo`"):
        LatencyTable.load(tmp_path / "foo.json")
    p.write_text(json.dumps(good()))
    with pytest.raises(LutError, match="expected 'arm-a72'"):
        LatencyTable.load(p, expect_target="arm-a72")


def test_features_hand_counted():
    # dense binary 1x1 conv 24->8 on 28x28: 28*28*8*24 bit products
    f = costmodel.features("pre_conv1x1|24|8|28|28|1")
    assert f[0] * 1000 == 28 * 28 * 8 * 24 and f[4] == 3
    # sep_conv_3x3 stride 1, C=8, 28x28: two blocks of dw 3x3 (binary taps) + pw 1x1
    f = costmodel.features("sep_conv_3x3|8|8|28|28|1")
    assert f[1] * 1000 == 2 * 28 * 28 * 8 * 9 and f[0] * 1000 == 2 * 28 * 28 * 8 * 8 and f[2] == 0
    # under `authors` the depthwise conv keeps real activations: float FLOPs instead of binary taps
    fa = costmodel.features("sep_conv_3x3:authors|8|8|28|28|1")
    assert fa[1] == 0 and fa[2] * 1000 == 2 * 2 * 28 * 28 * 8 * 9
    assert not costmodel.features("skip_connect|8|8|28|28|1").any()
    s = costmodel.features("stem|1|24|28|28|1")
    assert s[2] * 1000 == 2 * 28 * 28 * 24 * 9
    # the imagenet stem: 3 -> 24 s2 (112x112 out), 24 -> 48 s2 (56x56), 48 -> 48 s2 (28x28)
    s = costmodel.features("stem|3|48|224|224|8")
    assert s[2] * 1000 == 2 * 9 * (112 * 112 * 24 * 3 + 56 * 56 * 48 * 24 + 28 * 28 * 48 * 48)


def test_nnls_matches_bruteforce():
    rng = np.random.default_rng(1)
    A, b = rng.random((12, 4)), rng.standard_normal(12)
    x = costmodel.nnls(A, b)
    best = None
    for mask in range(16):  # exhaustive over active sets
        cols = [j for j in range(4) if mask >> j & 1]
        z = np.zeros(4)
        if cols:
            z[cols] = np.linalg.lstsq(A[:, cols], b, rcond=None)[0]
        if (z >= 0).all():
            r = np.linalg.norm(A @ z - b)
            best = r if best is None else min(best, r)
    assert (x >= 0).all() and np.linalg.norm(A @ x - b) == pytest.approx(best, rel=1e-9)


def test_fit_recovers_coefficients():
    keys = [k for k in all_keys(SearchSpace()) + all_keys(SearchSpace(channels=16, policy="authors"))
            if costmodel.features(k).any()]
    true = {"kbitops": 0.3, "kdwtaps": 100.0, "kflops": 3.0, "kelems": 150.0, "kernels": 1500.0}
    fitted = costmodel.fit({k: costmodel.predict_ms(k, true) for k in keys})
    for n in costmodel.FEATURES:
        assert fitted[n] == pytest.approx(true[n], rel=1e-6)


def test_modeled_lut_covers_spaces_and_is_labelled():
    from dcpnas.targets import build_modeled_lut

    spaces = [SearchSpace(), SearchSpace(cells=3, channels=4, input_shape=(3, 32, 32))]
    lut = build_modeled_lut("arm-a72", spaces)
    assert lut.method == "modeled" and "no device" in lut.device
    for s in spaces:
        assert set(all_keys(s)) <= set(lut.entries)
    assert all(e["count"] == 0 and e["mean_ms"] >= 0 for e in lut.entries.values())
    x86 = build_modeled_lut("x86-avx512", spaces)
    assert lut.query(KEY) > x86.query(KEY)  # an A72 is modeled slower than the Zen 4 host


MEASURED_SPACES = [SearchSpace(), SearchSpace(cells=3, channels=4), SearchSpace(cells=8, channels=16),
                   SearchSpace(cells=3, channels=8, input_shape=(1, 16, 16)),   # the default search
                   SearchSpace(cells=3, channels=2, input_shape=(1, 8, 8)),     # the smoke budget
                   SearchSpace(cells=6, channels=8)]                            # the eval network


@pytest.mark.parametrize("space", MEASURED_SPACES + [
    SearchSpace(cells=6, channels=12, input_shape=(3, 32, 32), policy="authors"),
    SearchSpace(cells=4, channels=10, input_shape=(3, 16, 16))])
def test_shipped_luts_cover_default_spaces(space):
    from dcpnas.genotype import DDPNAS_MCN_2

    for name in ("x86-avx512", "arm-a72"):
        lut = get_target(name).load_lut()
        if lut.method == "measured" and space not in MEASURED_SPACES:
            continue  # measured LUTs cover the spaces that were timed, modeled ones the whole coverage set
        assert not lut.missing(all_keys(space)), name
        assert genotype_latency(DDPNAS_MCN_2, space, lut) > 0


def test_statistics():
    from dcpnas.targets.measure import fit_per_cell, mape, rank, spearman

    assert mape([1.1, 1.8], [1.0, 2.0]) == pytest.approx(10.0)
    assert list(rank([3, 1, 2, 2])) == [4, 1, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Spearman = 1 - 6 sum d^2 / (n (n^2 - 1)) without ties
    a, b = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    assert spearman(a, b) == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert math.isnan(spearman([1, 1], [1, 2]))
    raw, cells = np.array([1.0, 2.0, 3.0]), np.array([5, 5, 5])
    assert fit_per_cell(raw, raw + 0.5, cells) == pytest.approx(0.1)


@pytest.mark.parametrize("key", ["stem|1|24|28|28|1", "stem|3|16|64|64|8", "classifier|128|10|7|7|1", "pre_conv1x1|24|8|28|28|1",
                                 "pre_reduce|32|16|28|28|2", "skip_connect|16|16|28|28|2", "max_pool_3x3|16|16|28|28|2",
                                 "sep_conv_5x5:authors|8|8|28|28|1", "dil_conv_3x3|16|16|14|14|1"])
def test_op_module_shapes(key):
    import torch

    from dcpnas.targets.measure import op_module

    m, shape = op_module(key)
    op, _, cin, cout, h, w, s = costmodel.parse_key(key)
    y = m(torch.zeros(shape))
    if op == "classifier":
        assert tuple(y.shape) == (1, cout)
    else:
        assert tuple(y.shape) == (1, cout, (h + s - 1) // s, (w + s - 1) // s)


def test_fixed_keys_are_all_parseable():
    for k in fixed_keys(SearchSpace(cells=8, channels=16, input_shape=(3, 32, 32))):
        costmodel.features(k)
    keys = fixed_keys(SearchSpace(cells=14, channels=48, input_shape=(3, 224, 224), stem="imagenet"))
    assert keys[0] == "stem|3|48|224|224|8" and keys[1] == "pre_reduce|48|48|56|56|2"


def _handmade_compile_fn(calls):
    """A stand-in for the compiler: a Relax module doing one elementwise pass over the op's input."""
    def compile_fn(module, shape, target, out_dir):
        import tvm
        from tvm import relax, te

        calls.append(shape)
        if len(calls) == getattr(compile_fn, "fail_at", None):
            raise RuntimeError("compiler crashed")
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType(shape, "float32"))
        with bb.function("main", [x]):
            y = bb.emit_te(lambda a: te.compute(a.shape, lambda *i: a(*i) * 2.0 + 1.0), x)
            bb.emit_func_output(y)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "lib.so"
        tvm.compile(bb.get(), target=target.tvm_target()).export_library(str(path))
        return path
    return compile_fn


@pytest.mark.tvm
def test_build_lut_resumes_and_saves_each_chunk(tmp_path, monkeypatch):
    from dcpnas.targets import measure
    from dcpnas.targets.measure import build_lut
    from dcpnas.targets.profiler import Profiler

    monkeypatch.setattr(measure, "CHUNK", 1)
    target = get_target("x86-avx512")
    prof = Profiler(target, repeat=3, min_repeat_ms=1, warmup=1)
    keys = ["pre_conv1x1|24|8|28|28|1", "max_pool_3x3|8|8|28|28|1", "stem|1|24|28|28|1"]
    calls, path = [], tmp_path / "lut.json"
    fn = _handmade_compile_fn(calls)
    fn.fail_at = 4  # reference kernel, identity (call overhead), key 0, then a crash on key 1
    with pytest.raises(RuntimeError, match="compiler crashed"):
        build_lut(target, keys, path, prof, compile_fn=fn)
    part = LatencyTable.load(path)
    assert list(part.entries) == keys[:1] and part.method == "measured" and part.threads == 2
    assert part.measurement["reference_key"] == measure.REFERENCE_KEY and part.measurement["reference_ms"] > 0
    fn.fail_at = None
    calls.clear()
    lut = build_lut(target, keys, path, prof, compile_fn=fn)
    assert len(calls) == 1 + 2  # the reference kernel + the two keys not measured before
    assert list(lut.entries) == keys and lut.glue["call_overhead_ms"] > 0
    e = lut.entries[keys[1]]
    assert e["count"] >= 3 and e["calibrated_ms"] >= e["mean_ms"] >= 0 and e["rel_iqr"] >= 0
    assert LatencyTable.load(path).entries == lut.entries
    # a build at another thread count neither mixes its figures in nor replaces the table by resuming it
    one = Profiler(target, threads=1, repeat=3, min_repeat_ms=1, warmup=1)
    with pytest.raises(LutError, match=r"threads 2 \(this build: 1\).*--no-resume"):
        build_lut(target, keys, path, one, compile_fn=fn)
    assert LatencyTable.load(path).entries == lut.entries
    # a modeled table (derived, not measured) is replaced by measurements, as docs/rpc.md's board workflow does
    from dcpnas.targets import build_modeled_lut

    modeled = tmp_path / "modeled.json"
    build_modeled_lut(target, [SearchSpace(cells=3, channels=2, input_shape=(1, 8, 8))]).save(modeled)
    got = build_lut(target, keys[:1], modeled, prof, compile_fn=fn)
    assert got.method == "measured" and list(LatencyTable.load(modeled).entries) == keys[:1]
    # a table it cannot read (damaged, a newer schema, a foreign file) is not replaced by resuming it
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"schema": "dcpnas.lut/9"}')
    with pytest.raises(LutError, match="not a LUT this version can resume.*--no-resume"):
        build_lut(target, keys[:1], damaged, prof, compile_fn=fn)
    assert damaged.read_text() == '{"schema": "dcpnas.lut/9"}'


def test_calibration_cancels_a_load_burst():
    from dcpnas.targets.measure import REFERENCE, calibrated

    # round 2 runs everything at half speed (a neighbour's burst): calibrated, the op is steady
    raw = {REFERENCE: [1.0, 1.0, 2.0, 1.0], "op": [3.0, 3.0, 6.0, 3.0]}
    cal = calibrated(raw)
    np.testing.assert_allclose(cal["op"], [3.0, 3.0, 3.0, 3.0])
    np.testing.assert_allclose(cal[REFERENCE], [1.0, 1.0, 1.0, 1.0])


def test_lut_threads_must_match():
    lut = LatencyTable.from_dict(good())
    lut.check_threads(2, "a check")
    with pytest.raises(LutError, match="holds 2-thread figures; a check at 1 threads.*--threads 2"):
        lut.check_threads(1, "a check")


@pytest.mark.tvm
def test_refine_keeps_the_lower_figure(tmp_path):
    from dcpnas.targets.measure import build_lut
    from dcpnas.targets.profiler import Profiler

    target = get_target("x86-avx512")
    keys = ["max_pool_3x3|8|8|28|28|1"]
    path = tmp_path / "lut.json"
    with pytest.raises(LutError, match="statistic 'min'"):
        build_lut(target, keys, path, Profiler(target), compile_fn=_handmade_compile_fn([]), refine=True)
    prof = Profiler(target, repeat=3, min_repeat_ms=1, warmup=1, statistic="min")
    first = build_lut(target, keys, path, prof, compile_fn=_handmade_compile_fn([]))
    assert first.statistic == "min" and first.entries[keys[0]]["passes"] == 1
    fake = LatencyTable.load(path)
    fake.entries[keys[0]].update(min_ms=1e-9, mean_ms=0.0)  # an unbeatable earlier pass
    fake.save(path)
    again = build_lut(target, keys, path, prof, compile_fn=_handmade_compile_fn([]), refine=True)
    e = again.entries[keys[0]]
    assert e["passes"] == 2 and e["min_ms"] == 1e-9 and e["mean_ms"] == 0.0


@pytest.mark.tvm
def test_check_lut_reports_and_fits_glue():
    from dcpnas.targets import build_modeled_lut
    from dcpnas.targets.check import check_lut, random_genotypes
    from dcpnas.targets.profiler import Profiler

    space = SearchSpace(cells=3, channels=2, input_shape=(1, 8, 8))
    genos = random_genotypes(space, 4, seed=1)
    assert len({g.digest() for g in genos}) == 4
    target = get_target("x86-avx512")
    lut = build_modeled_lut(target, [space])
    prof = Profiler(target, repeat=3, min_repeat_ms=1, warmup=1)
    r = check_lut(target, lut, space, 4, prof, compile_fn=_handmade_compile_fn([]), seed=1, fit_glue=True)
    assert r["n"] == 4 and len(r["rows"]) == 4 and r["mape"] >= 0 and -1 <= r["spearman"] <= 1
    assert lut.glue["per_cell_ms"] == pytest.approx(r["glue_per_cell_ms"], abs=1e-6) and r["mape_loo"] >= 0
    for row in r["rows"]:
        assert row["predicted_ms"] == pytest.approx(row["raw_predicted_ms"] + 3 * r["glue_per_cell_ms"])


@pytest.mark.tvm
def test_check_lut_calibrates_by_the_reference_kernel():
    """A measured LUT's check times each network beside the reference kernel and divides by how much slower
    the host ran than during the LUT build (host_speed); a modeled LUT is checked uncalibrated."""
    from dcpnas.targets import build_modeled_lut
    from dcpnas.targets.check import check_lut, reference_figure_ms
    from dcpnas.targets.measure import REFERENCE_KEY
    from dcpnas.targets.profiler import Profiler

    space = SearchSpace(cells=3, channels=2, input_shape=(1, 8, 8))
    target = get_target("x86-avx512")
    lut = build_modeled_lut(target, [space])
    prof = Profiler(target, repeat=3, min_repeat_ms=1, warmup=1)
    plain = check_lut(target, lut, space, 2, prof, compile_fn=_handmade_compile_fn([]), seed=1)
    assert plain["host_speed"] is None and plain["mape"] == plain["mape_uncalibrated"]
    lut.method = "measured"
    lut.entries[REFERENCE_KEY] = {"mean_ms": 0.5, "std_ms": 0.0, "count": 3}
    lut.glue["call_overhead_ms"] = 0.25
    assert reference_figure_ms(lut) == pytest.approx(0.75)
    r = check_lut(target, lut, space, 2, prof, compile_fn=_handmade_compile_fn([]), seed=1)
    hs = r["host_speed"]
    assert hs["lut_reference_ms"] == pytest.approx(0.75) and 0 < hs["min"] <= hs["median"] <= hs["max"]
    for row in r["rows"]:  # calibrated = as timed / host speed, the speed of that network's own rounds
        assert row["measured_ms"] * row["host_speed"] == pytest.approx(row["uncalibrated_ms"])
    assert r["mape_uncalibrated"] >= 0 and r["mape"] >= 0


@pytest.mark.tvm
def test_lut_check_cli_json_alone_on_stdout_and_threads():
    from typer.testing import CliRunner

    from dcpnas.cli import app

    lut = get_target("x86-avx512").load_lut()
    args = ["lut", "check", "--target", "x86-avx512", "--n", "1", "--cells", "3", "--channels", "2",
            "--input-shape", "1,8,8", "--repeat", "3", "--min-repeat-ms", "1", "--json"]
    res = CliRunner().invoke(app, args + ["--statistic", "median" if lut.statistic == "min" else "min"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # the JSON alone: the statistic warning went to stderr
    assert out["n"] == 1 and out["threads"] == lut.threads and "warning" in res.stderr
    t = get_target("x86-avx512")
    other = next(n for n in range(1, 9) if n != lut.threads and n not in t.lut_thread_counts())
    bad = CliRunner().invoke(app, args + ["--threads", str(other)])
    assert bad.exit_code == 1 and f"holds {lut.threads}-thread figures" in bad.stderr


def test_one_table_per_thread_count(tmp_path):
    """`<lut stem>.t<N>.json` beside a target's LUT holds its N-thread figures: load_lut(N), `lut check
    --threads N` and bench use it; other counts get the main table (and its mismatch error); `lut build
    --threads N` writes there by default rather than mixing counts in the main table."""
    from dcpnas.cli.lut import _measured_lut_path
    from dcpnas.targets.registry import BUILTIN_DIR, describe, load_target_file

    toml = (BUILTIN_DIR / "x86-avx512.toml").read_text().replace('lut = "x86-avx512.json"', 'lut = "t.json"')
    (tmp_path / "t.toml").write_text(toml)
    one, two = good(), good()
    one["threads"] = 1
    LatencyTable.from_dict(one).save(tmp_path / "t.json")
    t = load_target_file(tmp_path / "t.toml")
    assert t.lut_thread_counts() == [] and t.load_lut(2).threads == 1
    assert _measured_lut_path(t, 2) == tmp_path / "t.t2.json" and _measured_lut_path(t, 1) == tmp_path / "t.json"
    LatencyTable.from_dict(two).save(tmp_path / "t.t2.json")
    assert t.lut_thread_counts() == [2] and describe(t)["lut_thread_counts"] == [1, 2]
    assert t.load_lut().threads == 1 and t.load_lut(2).threads == 2 and t.load_lut(3).threads == 1
    with pytest.raises(LutError, match="holds 1-thread figures"):
        t.load_lut(3).check_threads(3, "a check")
    assert _measured_lut_path(t, 2) == tmp_path / "t.t2.json" and _measured_lut_path(t, 1) == tmp_path / "t.json"
    # no --threads: the target's own count (2), so the 1-thread main table is not replaced
    assert t.threads == 2 and _measured_lut_path(t, None) == tmp_path / "t.t2.json"


def test_lut_build_for_the_imagenet_stem(tmp_path):
    """`dcpnas lut build --stem imagenet`: the stride-8 stem's key is in the table (modeled: no device)."""
    from typer.testing import CliRunner

    from dcpnas.cli import app

    out = tmp_path / "lut.json"
    res = CliRunner().invoke(app, ["lut", "build", "--target", "x86-avx512", "--modeled", "--cells", "3", "--channels",
                                   "4", "--input-shape", "3,32,32", "--stem", "imagenet", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    entries = LatencyTable.load(out).entries
    assert "stem|3|4|32|32|8" in entries and LatencyTable.load(out).raw("stem|3|4|32|32|8") > 0
    bad = CliRunner().invoke(app, ["lut", "build", "--target", "x86-avx512", "--modeled", "--cells", "3",
                                   "--input-shape", "3,36,36", "--stem", "imagenet", "-o", str(out), "-q"])
    assert bad.exit_code == 1 and "multiples of 8" in bad.output



def test_lut_build_never_overwrites_a_file_that_is_not_a_lut(tmp_path):
    from typer.testing import CliRunner

    from dcpnas.cli import app

    other = tmp_path / "notes.md"
    other.write_text("# my notes\n")
    res = CliRunner().invoke(app, ["lut", "build", "--target", "x86-avx512", "--modeled", "-o", str(other), "-q"])
    assert res.exit_code == 1 and "is not a dcpnas LUT" in res.output
    assert other.read_text() == "# my notes\n"


def test_lut_build_modeled_never_replaces_a_measured_table(tmp_path):
    """`lut build --modeled` writes to the target's LUT by default: not where that holds measurements (the
    shipped x86 table) or a file that is not a LUT; a modeled table there is rebuilt."""
    import shutil

    from typer.testing import CliRunner

    from dcpnas.cli import app

    measured = tmp_path / "x86.json"
    shutil.copy(get_target("x86-avx512").lut_path, measured)
    assert LatencyTable.load(measured).method == "measured"
    tgt = tmp_path / "t.toml"
    builtin = get_target("x86-avx512").source.read_text()
    assert 'lut = "x86-avx512.json"' in builtin
    tgt.write_text(builtin.replace('lut = "x86-avx512.json"', 'lut = "x86.json"'))  # beside the .toml
    before = measured.read_bytes()
    args = ["lut", "build", "--target", str(tgt), "--modeled", "--cells", "3", "--channels", "4", "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "holds a measured LUT" in res.output and "-o FILE" in res.output, res.output
    assert measured.read_bytes() == before
    measured.write_text("# my notes\n")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "not a dcpnas LUT" in res.output
    measured.unlink()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert LatencyTable.load(measured).method == "modeled"
    assert CliRunner().invoke(app, args).exit_code == 0  # a modeled table is derived: rebuilt in place

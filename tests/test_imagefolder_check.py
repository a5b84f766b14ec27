"""benchmarks/imagefolder_check.py: sklearn's digits written as a stratified ImageFolder that the `imagefolder:`
loader reads back unchanged, and the check end to end with a smoke search."""

import json

import numpy as np
import pytest

from dcpnas.data import load_dataset

pytest.importorskip("sklearn")  # the `dev` extra


@pytest.fixture(scope="module")
def check(benchmark_script):
    return benchmark_script("imagefolder_check")


def test_digits_are_written_as_a_stratified_imagefolder(check, tmp_path):
    from sklearn.datasets import load_digits

    split = check.write_digits(tmp_path / "d", test_fraction=0.2, seed=0)
    ds = load_dataset(f"imagefolder:{tmp_path / 'd'}")
    assert ds.classes == tuple(str(k) for k in range(10)) and ds.input_shape == (1, 8, 8)
    assert (len(ds.train_y), len(ds.test_y)) == (split["train"], split["test"]) == (1437, 360)
    digits = load_digits()
    share = np.bincount(digits.target) / len(digits.target)
    for y in (ds.train_y, ds.test_y):  # stratified: every class within one image of its share
        assert np.all(np.abs(np.bincount(y, minlength=10) - share * len(y)) <= 1)
    # the pixels survive the PNG round trip: every written image is a digit of its own class, 0..16 -> 0..255
    ref = {(int(t), np.rint(im * 255 / 16).astype(np.uint8).tobytes()) for im, t in zip(digits.images, digits.target)}
    got = {(int(t), im[0].tobytes()) for im, t in zip(np.concatenate([ds.train_x, ds.test_x]),
                                                       np.concatenate([ds.train_y, ds.test_y]))}
    assert got <= ref and len(got) == len(ref)


def test_check_runs_a_smoke_search_end_to_end(check, tmp_path):
    out = tmp_path / "c"
    record = check.main(["-o", str(out), "--json", str(tmp_path / "r.json"),
                         "--search-args", "--budget smoke --threads 1"])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["schema"] == "dcpnas.imagefolder-check/1" and f"imagefolder:{out / 'digits'}" in saved["command"]
    assert saved["budget"] == "smoke" and saved["dataset"] == "imagefolder:digits"
    assert 0 <= saved["val_accuracy"] <= 1 and 0 <= saved["parent_val_accuracy"] <= 1
    assert 0 < saved["entropy_normal"] <= 1 and 0 < saved["entropy_reduce"] <= 1
    assert saved["time_s"] > 0 and saved["cpu_s"] > 0 and len(saved["diagnostics"]) == 1
    with pytest.raises(SystemExit, match="exists"):  # never mixed with an earlier run
        check.main(["-o", str(out), "--search-args", "--budget smoke"])

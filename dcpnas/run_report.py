"""The short summary a pipeline run ends with (`dcpnas report RUN`, the last step of `make demo`).

It reads what the four commands left behind, nothing is recomputed:
  RUN/genotype.json           `dcpnas search -o RUN` (its search record: target, val accuracy, time)
  RUN/train/train.json, model.pt   `dcpnas train RUN/genotype.json` (test accuracy in PyTorch, seconds)
  BUILD/manifest.json         `dcpnas compile RUN/genotype.json` (accuracy of the compiled network on
                              the whole test split on ONNX Runtime and TVM, compile seconds)
  BUILD/bench.json            `dcpnas bench BUILD` (1-bit and float latencies, speedup_vs_best_float)
BUILD defaults to the newest 1-bit build under build/ of the same genotype. A missing piece leaves its
fields None and is named in `missing`, with the command that makes it. Written to RUN/summary.json.
"""

from __future__ import annotations

from pathlib import Path

from dcpnas.errors import ArtifactError
from dcpnas.io import is_finite_number, parse_json

SCHEMA = "dcpnas.run-summary/1"
ACCURACY_GOAL = 0.85  # issue 13: the demo's compiled 1-bit network on the embedded test split


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        d = parse_json(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable JSON ({e}); rerun the command that writes it") from None
    if not isinstance(d, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return d


def _num(v) -> float | int | None:
    """A finite number read from an artifact, else None (a hand-edited file's string or list is not a figure)."""
    return v if is_finite_number(v) else None


def _obj(v) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _str(v) -> str | None:
    return v if isinstance(v, str) else None


def find_build(digest: str, builds: Path = Path("build")) -> Path | None:
    """The newest 1-bit build folder under `builds` whose manifest names genotype `digest`."""
    found = []
    for m in builds.glob("*/manifest.json"):
        if m.parent.name.startswith("."):
            continue  # a compile in progress, or an earlier build kept while one was replacing it
        try:
            d = parse_json(m.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("genotype") == digest and d.get("binary"):
            found.append((m.stat().st_mtime, m.parent))
    return max(found)[1] if found else None


def run_summary(run: str | Path, build: str | Path | None = None, builds: Path = Path("build")) -> dict:
    """The summary dict of run folder `run` (see the module docstring)."""
    from dcpnas.genotype import load_genotype

    run = Path(run)
    gfile = run / "genotype.json"
    if not gfile.is_file():
        raise ArtifactError(f"{run}: no genotype.json; run `dcpnas search -o {run}` first")
    geno = load_genotype(gfile)
    digest = geno.digest()
    searched = geno.search if isinstance(geno.search, dict) else {}
    missing = []
    train = _read(run / "train" / "train.json")
    if train is None:
        missing.append(f"training: dcpnas train {gfile}")
    if build is not None and not Path(build).is_dir():
        raise ArtifactError(f"{build}: build folder not found (run `dcpnas compile {gfile}`)")
    build = Path(build) if build is not None else find_build(digest, builds)
    manifest = _read(build / "manifest.json") if build is not None else None
    if manifest is not None and manifest.get("genotype") != digest:
        raise ArtifactError(f"{build} was compiled from genotype {str(manifest.get('genotype'))[:16]}, not from this "
                            f"run's {digest}: compile {gfile} and give that build with --build")
    if manifest is None:
        missing.append(f"build: dcpnas compile {gfile}")
    bench = _read(build / "bench.json") if build is not None else None
    if manifest is not None and bench is None:
        missing.append(f"latency: dcpnas bench {build}")
    manifest_, bench_, train_ = _obj(manifest), _obj(bench), _obj(train)
    acc = _obj(manifest_.get("accuracy"))
    if manifest is not None and not acc:
        missing.append(f"accuracy as compiled: dcpnas compile {gfile} --weights {run / 'train' / 'model.pt'}")
    size = _model_size(run / "train" / "model.pt", geno) if train is not None else None
    best = bench_.get("best_float") if isinstance(bench_.get("best_float"), str) else None
    compile_s = [_num(v) for v in _obj(manifest_.get("compile_s")).values()]
    summary = {
        "schema": SCHEMA,
        "run": str(run),
        "genotype": digest,
        "target": _str(_obj(manifest_.get("target")).get("name")) or _str(searched.get("target")),
        "search": {"val_accuracy": _num(searched.get("val_accuracy")), "seconds": _num(searched.get("time_s")),
                   "expected_latency_ms": _num(searched.get("expected_latency_ms"))},
        "train": None if train is None else {
            "test_accuracy_torch": _num(train_.get("test_accuracy")), "seconds": _num(train_.get("seconds")),
            "epochs": _num(_obj(train_.get("config")).get("epochs")), "dataset": _str(train_.get("dataset")),
            "space": train_.get("space") if isinstance(train_.get("space"), dict) else None},
        "build": None if build is None else str(build),
        "test_accuracy_ort": _num(acc.get("ort")),
        "test_accuracy_tvm": _num(acc.get("tvm")),
        "accuracy_dataset": _str(acc.get("dataset")),
        "accuracy_images": _num(acc.get("n")),
        "accuracy_goal": ACCURACY_GOAL,
        "model_size": size,
        "latency": None if bench is None else {
            "binary_ms": _num(bench_.get("binary_ms")), "float_tvm_ms": _num(bench_.get("float_tvm_ms")),
            "float_ort_ms": _num(bench_.get("float_ort_ms")), "float_openvino_ms": _num(bench_.get("float_openvino_ms")),
            "best_float": best, "best_float_ms": _num(bench_.get(f"{best}_ms")) if best else None,
            "threads": _num(bench_.get("threads")),
            "warnings": [str(w) for w in _list(bench_.get("warnings"))]},
        "speedup_vs_best_float": _num(bench_.get("speedup_vs_best_float")) if bench else None,
        "seconds": {"search": _num(searched.get("time_s")), "train": _num(train_.get("seconds")),
                    "compile": sum(v for v in compile_s if v is not None) if manifest else None},
        "missing": missing,
    }
    return summary


def _model_size(model_pt: Path, genotype) -> dict | None:
    """Parameter memory of the trained 1-bit network vs the same parameters at 32 bits (KiB)."""
    if not model_pt.is_file():
        return None
    from dcpnas.checkpoint import load_model
    from dcpnas.summary import summarize

    net, _ = load_model(model_pt, genotype=genotype)
    s = summarize(net)
    return {"binary_kib": s.memory_kib, "float_kib": s.float_memory_kib, "compression": s.compression,
            "params_1bit": s.params_1bit, "params_32bit": s.params_32bit}


def write_run_summary(run: str | Path, summary: dict) -> Path:
    from dcpnas.io import write_json

    return write_json(Path(run) / "summary.json", summary)


__all__ = ["run_summary", "write_run_summary", "find_build", "SCHEMA", "ACCURACY_GOAL"]

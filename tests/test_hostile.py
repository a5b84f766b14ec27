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

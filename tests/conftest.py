"""Shared test set-up: PyTorch at one thread, so that tests behave the same on a busy or a 2-core
machine (small supernets are slower with oversubscribed threads); TVM keeps its own thread pool.
`benchmark_script` loads a script of benchmarks/ (not a package) as a module."""

import importlib.util
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark_script(name: str):
    """benchmarks/<name>.py as a fresh module named benchmarks_<name>."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def benchmark_script():
    """benchmark_script("ablation") -> benchmarks/ablation.py loaded as a module (fresh on each call)."""
    return load_benchmark_script

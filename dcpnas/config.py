"""SearchConfig: every knob of `dcpnas search`, from a preset (`budget`), a TOML file and CLI overrides.

Precedence: dataclass defaults < budget preset < TOML file < overrides (None values ignored).
The used config is written beside the results as config.toml (`SearchConfig.save`).

Budgets (the default is sized for a 2-core CPU: see README / the `default` entry of BUDGETS):
  default  3 cells (normal, reduce, reduce), 8 channels, Fashion-MNIST resized to 16x16, 2000 search
           images (1000 weight / 1000 architecture), batch 64, 5 epochs x 12 steps, the first epoch weights
           only; val accuracies on 1000 held-out test images; the `authors` binarisation policy (the one
           `dcpnas train` deploys: real activations into the depthwise convs), NHWC tensors, 1 thread.
           Small on purpose: the supernet is op-count bound on CPU (~2000 kernels per forward).
           Scaling defaults (METHOD.md "Scaling", issue 12): mu = 20 on L_R per binary weight (Child signs
           keep flipping: benchmarks/scaling.py), lam = 0.5 as a fraction of ||g_C||, psi_init = 1 with a
           normalised psi step, the backtrack capped at 1x the Adam step of each cell type's alphas
           (uncapped it ran away: 0.57x -> 4.3x; one cap shared by both cell types left the normal
           cell at 0.97 of uniform entropy, the reduce cell having taken the budget), arch_lr 5e-2
           (a short search: 48 steps),
           curvature refreshed every 4 child arch steps, the Child initialised from the Parent.
  smoke    tiny supernet on 8x8 images, 1 epoch x 1 step: a pipeline check for tests (seconds).
  paper    5 cells, 16 channels, native resolution, all data, 50 epochs: for a GPU or torchrun.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from dcpnas.errors import ConfigError
from dcpnas.io import atomic_write_text, read_toml
from dcpnas.space import POLICIES, PRIMITIVES, STEPS, SearchSpace

MODES = ("dcp", "cp", "direct", "random")
# Sanity limits on sizes that allocate memory or threads: far above any network this CPU/GPU pipeline is for,
# far below a size that asks for terabytes (a 100000-channel supernet) or aborts a thread pool.
MAX_CHANNELS = 4096
MAX_CELLS = 64
MAX_THREADS = 1024
MAX_STEPS = 8  # intermediate nodes per cell (edges grow as steps^2)
MAX_SEED = 2**32 - 1  # numpy's and torch's generators take 0..2^32-1 everywhere (seeds are mixed into larger ones)
CURVATURES = ("exact", "ggn", "fisher")
LATENCY_FORMS = ("add", "mul")
DEVICES = ("cpu", "cuda")

BUDGETS: dict[str, dict] = {
    "default": {},
    "smoke": {"cells": 3, "channels": 2, "image_size": 8, "n_train": 32, "n_eval": 16, "batch_size": 8,
              "epochs": 1, "steps_per_epoch": 1, "warmup_epochs": 0, "eval_batches": 2},
    "paper": {"cells": 5, "channels": 16, "image_size": 0, "n_train": 0, "n_eval": 0, "batch_size": 64,
              "epochs": 50, "steps_per_epoch": 0, "warmup_epochs": 15, "eval_batches": 0},
}


def check_seed(seed) -> int:
    """`seed` if it is an integer in 0..MAX_SEED, else ConfigError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r}")
    return seed


@dataclass(frozen=True)
class SearchConfig:
    """All fields of a search. Units: latency_ms in ms; lr are learning rates; image_size in pixels
    (0 = the dataset's own size); n_train/n_eval images (0 = all); steps_per_epoch 0 = one pass."""

    name: str = ""
    budget: str = "default"
    mode: str = "dcp"  # dcp | cp (lambda = 0) | direct (real-valued DARTS) | random
    curvature: str = "ggn"
    curvature_every: int = 4  # child arch steps per curvature (M v) refresh; in between the last M v is reused
    # lambda: weight of the tangent-propagation term D. With lam_relative (default) lam is the fraction
    # ||2 lambda H v|| / ||g_C||; the paper's absolute 5e-3 gave a fraction of ~1e-4 here (METHOD "Scaling")
    lam: float = 0.5
    lam_relative: bool = True
    mu: float = 20.0  # weight of L_R per binary weight (binary.reconstruction_loss; benchmarks/scaling.py)
    decoupled: bool = True
    child_from_parent: bool = True  # the Child starts from the Parent's weights after the first parent phase
    epochs: int = 5
    warmup_epochs: int = 1  # epochs that train weights only (alphas frozen)
    steps_per_epoch: int = 12
    seed: int = 0
    data: str = "embedded"
    n_train: int = 2000  # images of the train split used by the search (half weights, half alphas)
    n_eval: int = 1000  # images of the test split: the fixed held-out set of the reported val accuracies
    eval_batches: int = 0  # 0 = all of n_eval
    bn_calibration: int = 250  # train images that re-estimate BN statistics before each evaluation (0 = off)
    batch_size: int = 64
    image_size: int = 16
    # search space
    cells: int = 3
    channels: int = 8
    primitives: tuple[str, ...] = PRIMITIVES  # the candidate ops of every edge (a subset of space.PRIMITIVES)
    steps: int = STEPS  # intermediate nodes per cell (DARTS: 4, i.e. 14 edges; 2 nodes: 5 edges)
    policy: str = "authors"  # the policy `dcpnas train` deploys; `book` Child: 0.50 vs 0.60 val after 2 epochs
    # optimisation
    parent_lr: float = 3e-3
    child_lr: float = 5e-3
    weight_decay: float = 0.0
    arch_lr: float = 5e-2  # a short search: alphas must separate within ~36 steps
    arch_weight_decay: float = 1e-3
    eta: float = 0.1
    eta_psi: float = 5e-2  # psi's step per update (normalised, architect.py)
    psi_init: float = 1.0
    psi_max_ratio: float = 1.0  # backtrack <= this x the Adam step, per update and alpha tensor (0: no cap)
    tau: float = 0.5
    # hardware awareness
    target: str | None = None
    latency_ms: float | None = None  # None: the expected latency of the initial (uniform) supernet
    latency_form: str = "add"  # `mul` with T = the initial latency drove a 3-epoch search to all pool/skip
    latency_gamma: float = 0.02  # add-form weight; 0.1 left 2 of 16 edges as convs in the 3-epoch default
    latency_beta: float = 0.6
    # execution
    device: str = "cpu"
    channels_last: bool = True  # supernets and batches in NHWC: 1.5x faster steps on x86 CPUs (oneDNN)
    # 0: every core (split between ranks under torchrun). 1 by default: 2 threads make a step 1.2-1.3x
    # faster on an idle 2-core host, but ~5x slower when another job holds a core (OpenMP barriers)
    threads: int = 1
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name, allowed in (("mode", MODES), ("curvature", CURVATURES), ("latency_form", LATENCY_FORMS),
                              ("device", DEVICES), ("policy", POLICIES), ("budget", tuple(BUDGETS))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} = {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        # written as `not (x >= lo)` so that NaN fails too; floats must also be finite
        for name in ("epochs", "cells", "channels", "batch_size", "curvature_every"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lam", "mu", "warmup_epochs", "steps_per_epoch", "n_train", "n_eval", "image_size",
                     "threads", "eval_batches", "weight_decay", "arch_weight_decay", "latency_gamma",
                     "latency_beta", "psi_init", "psi_max_ratio", "bn_calibration"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        for name in ("parent_lr", "child_lr", "arch_lr", "eta", "eta_psi"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if self.latency_ms is not None and not (self.latency_ms > 0 and math.isfinite(self.latency_ms)):
            raise ConfigError(f"latency_ms must be a finite number > 0, got {self.latency_ms}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")
        for name, hi in (("cells", MAX_CELLS), ("channels", MAX_CHANNELS), ("threads", MAX_THREADS)):
            if getattr(self, name) > hi:
                raise ConfigError(f"{name} must be <= {hi}, got {getattr(self, name)}")
        if self.cells < 3:  # the supernet's reduction cells sit at cells // 3 and 2 * cells // 3
            raise ConfigError(f"cells must be >= 3 for a search (a normal and two reduction cells), got {self.cells}")
        object.__setattr__(self, "primitives", tuple(self.primitives))
        unknown = [op for op in self.primitives if op not in PRIMITIVES]
        if unknown or len(set(self.primitives)) != len(self.primitives) or not set(self.primitives) - {"none"}:
            raise ConfigError(f"primitives must be distinct ops of {', '.join(PRIMITIVES)}, at least one of them not "
                              f"'none'; got {list(self.primitives)}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"steps (intermediate nodes per cell) must be in 1..{MAX_STEPS}, got {self.steps}")
        check_seed(self.seed)
        if self.image_size and self.image_size % 4:
            raise ConfigError(f"image_size must be a multiple of 4 (two reductions), got {self.image_size}")

    # -- derived ----------------------------------------------------------------------------------
    @property
    def effective_lambda(self) -> float:
        """lambda actually used: `cp` mode is DCP-NAS without tangent propagation."""
        return 0.0 if self.mode == "cp" else self.lam

    @property
    def run_name(self) -> str:
        return self.name or f"{self.mode}-{Path(self.target).stem if self.target else 'notarget'}-seed{self.seed}"

    def space(self, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> SearchSpace:
        """The supernet's SearchSpace for a dataset of `input_shape` (C, H, W) (resized to image_size)."""
        c, h, w = input_shape
        if self.image_size:
            h = w = self.image_size
        return SearchSpace(cells=self.cells, channels=self.channels, input_shape=(c, h, w),
                           num_classes=num_classes, policy=self.policy, primitives=self.primitives, steps=self.steps)

    # -- (de)serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self) if f.name != "extra"}

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps({k: v for k, v in self.to_dict().items() if v is not None})

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_toml())

    def replace(self, **changes) -> "SearchConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config", flags: dict | None = None) -> "SearchConfig":
        return config_from_dict(cls, d, source, skip=("extra",), flags=flags)

    @classmethod
    def load(cls, toml_path: str | Path | None = None, overrides: dict | None = None) -> "SearchConfig":
        """defaults < BUDGETS[budget] < TOML file (top level or a [search] table) < overrides."""
        data: dict = {}
        if toml_path is not None:
            data = read_toml(toml_path, ConfigError)
            if "search" in data and isinstance(data["search"], dict):
                data = data["search"]
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        budget = overrides.get("budget", data.get("budget", "default"))
        if not isinstance(budget, str) or budget not in BUDGETS:
            raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
        return cls.from_dict({**BUDGETS[budget], **data, "budget": budget}, str(toml_path) if toml_path else "config",
                             flags={k: v for k, v in overrides.items() if k != "budget"})


def config_from_dict(cls, d: dict, source: str, skip: tuple[str, ...] = (), flags: dict | None = None):
    """Build the config dataclass `cls` from a plain dict (TOML file, CLI flags): unknown keys refused,
    each value coerced to its field's type by `coerce`. The one coercer of SearchConfig and TrainConfig.
    `flags` (command-line options) win over `d`; a bad value is blamed on where it came from."""
    known = {f.name: f for f in fields(cls) if f.name not in skip}
    flags = flags or {}
    values = {}
    for part, where in (({k: v for k, v in d.items() if k not in flags}, source), (flags, "options")):
        unknown = sorted(set(part) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values.update({k: coerce(k, v, known[k].type, where) for k, v in part.items()})
    return cls(**values)


def coerce(key: str, value, type_str, source: str):
    """`value` as the type named by a dataclass annotation ("int", "float | None", "bool", "str").
    bool: true/false (TOML) only; int: no bool, no fractional float; float: finite numbers only (NaN and
    inf are refused here, so that no range check downstream can let them pass)."""
    t = str(type_str)
    try:
        if value is None:
            if "None" in t:
                return None
            raise ValueError("must not be empty")
        if t.startswith("bool"):
            if isinstance(value, bool):
                return value
            raise ValueError(f"expected true or false, got {value!r}")
        if t.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"expected an integer, got {value!r}")
            return int(value)
        if t.startswith("tuple[str"):  # tuple[str, ...]: a list of names
            if isinstance(value, (str, bytes)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"expected a list of names, got {value!r}")
            return tuple(value)
        if t.startswith("tuple"):  # tuple[int, ...]: a list of integers
            if isinstance(value, (str, bytes)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"expected a list of cell indices (integers), got {value!r}")
            return tuple(value)
        if t.startswith("float"):
            if isinstance(value, bool):
                raise ValueError(f"expected a number, got {value!r}")
            v = float(value)
            if not math.isfinite(v):
                raise ValueError(f"expected a finite number, got {value!r}")
            return v
        if isinstance(value, (dict, list)):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return str(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ConfigError(f"{source}: {key}: {e}") from None

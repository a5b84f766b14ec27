"""Final training of a genotype (METHOD.md section 7): the evaluation network trained from scratch.

The authors' two-stage recipe for the 1-bit network: stage 1 with binary activations and real weights,
stage 2 fully binary, initialised from stage 1 (beta re-initialised to mean |w|); each stage AdamW with
a cosine schedule from lr to 0 (lr 5e-3 by default, see TrainConfig). Loss: KL(teacher softmax ||
student softmax) when a teacher (the real-valued network of the same genotype, trained by
`train(..., binary=False)` = `dcpnas train --float`) is given, cross-entropy on the labels otherwise.
The test split is used only for reporting: the network kept is the last one (or, with stage2_ema, the average of
stage 2's weights fixed in advance by the config), no model selection.

Out folder: model.pt (dcpnas.checkpoint), checkpoint.pt (each epoch; `resume=True` continues from it
exactly), stage1.pt (a 1-bit run's checkpoint at the end of stage 1: another run that differs only in its
stage-2 settings starts stage 2 from it, `start_from`), metrics.jsonl (one record per epoch), train.json
(schema dcpnas.train/1), curves.png.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dcpnas.binary import BinaryConv2d, set_binary_weights
from dcpnas.checkpoint import load_model, load_torch, save_model, save_torch
from dcpnas.config import DEVICES, MAX_CELLS, MAX_CHANNELS, check_seed, config_from_dict
from dcpnas.cuda_graph import GraphedStep, capturable_adamw, eager_step, set_lr
from dcpnas.errors import ArtifactError, ConfigError, DeviceError
from dcpnas.genotype import Genotype
from dcpnas.io import atomic_write_text, make_folder, to_json, write_json
from dcpnas.model import Network
from dcpnas.progress import ProgressFn, no_progress
from dcpnas.space import POLICIES, STEMS, STEPS, SearchSpace
from dcpnas.weight_average import WeightEMA

# Default evaluation network (more cells than the default 3-cell, 8-channel supernet),
# sized so that `dcpnas train` on the embedded data fits 15 minutes on 2 shared CPU cores.
EVAL_CELLS = 6
EVAL_CHANNELS = 8
# training images (spread evenly over the training set, not augmented) on which an averaged network's BatchNorm
# statistics are measured again (stage2_ema)
RECALIBRATION_IMAGES = 4096
RESULT_SCHEMA = "dcpnas.train/1"
CHECKPOINT_SCHEMA = "dcpnas.train-checkpoint/1"


def default_eval_space(input_shape=(1, 28, 28), num_classes: int = 10, policy: str = "book",
                       cells: int | None = None, channels: int | None = None,
                       reductions: tuple[int, ...] | None = None, steps: int = STEPS,
                       stem: str = "cifar") -> SearchSpace:
    """The evaluation network's SearchSpace (cells, channels default to EVAL_CELLS, EVAL_CHANNELS;
    reductions: indices of the reduction cells, default cells//3 and 2*cells//3 as in DARTS; steps: the
    genotype's nodes per cell; stem: space.STEMS)."""
    return SearchSpace(cells=EVAL_CELLS if cells is None else cells,
                       channels=EVAL_CHANNELS if channels is None else channels,
                       input_shape=tuple(input_shape), num_classes=int(num_classes), policy=policy,
                       reductions=tuple(reductions or ()), steps=steps, stem=stem)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (written to train.json; resume checks it is unchanged).

    epochs: total epochs; a binary run gives round(stage1_fraction * epochs) to stage 1 and the rest
    (at least 1) to stage 2; a float run (binary=False) trains one stage. lr: AdamW peak lr, cosine to
    0 within each stage; 5e-3 because the authors' 1e-3 belongs to their long ImageNet schedules and
    learns too slowly in a few epochs (embedded default, DDPNAS_MCN_2, 6 epochs: final test accuracy
    72.9% at 5e-3 vs 57.4% at 1e-3). weight_decay applies to stage 1 / float
    only (stage 2: 0, as binary latent weights should not shrink). temperature: of the KL to the
    teacher. stage2_lr: the peak lr of stage 2 (None: lr). stage2_ema: the decay of an exponential moving
    average of stage 2's weights, updated after every step (0: none); the network kept is then the average, with
    its BatchNorm statistics measured again on training images (dcpnas.weight_average), and the last weights'
    accuracy is reported beside it. augment: random +-2 px shifts and horizontal flips. train_subset/test_subset: stratified
    subsets (None = all).
    """

    epochs: int = 6
    stage1_fraction: float = 0.5
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 1e-5
    temperature: float = 1.0
    stage2_lr: float | None = None  # stage 2's peak lr (binary weights); None: lr
    stage2_ema: float = 0.0  # decay of the EMA of stage 2's weights; 0: keep the last weights
    augment: bool = True
    binary: bool = True
    cells: int | None = None
    channels: int | None = None
    reductions: tuple[int, ...] | None = None  # None: DARTS placement (cells//3, 2*cells//3)
    policy: str | None = None  # None: the policy the genotype was searched with (else book)
    stem: str = "cifar"  # space.STEMS: `imagenet` for large inputs (DARTS' stride-8 stem; sides multiples of 8)
    data: str = "embedded"
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    eval_batch_size: int = 500
    device: str = "cpu"

    def __post_init__(self) -> None:
        # written as `not (x >= lo)` so that NaN fails too
        if not self.epochs >= 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not 0.0 <= self.stage1_fraction < 1.0:
            raise ConfigError(f"stage1_fraction must be in [0, 1), got {self.stage1_fraction}")
        if not (self.batch_size >= 2 and self.eval_batch_size >= 1):
            raise ConfigError("batch_size must be >= 2 and eval_batch_size >= 1")
        if not (0 < self.lr < math.inf and 0 <= self.weight_decay < math.inf and 0 < self.temperature < math.inf):
            raise ConfigError("lr and temperature must be finite and > 0, weight_decay finite and >= 0")
        if self.stage2_lr is not None and not 0 < self.stage2_lr < math.inf:
            raise ConfigError(f"stage2_lr must be finite and > 0, got {self.stage2_lr}")
        if not 0.0 <= self.stage2_ema < 1.0:
            raise ConfigError(f"stage2_ema must be in [0, 1) (0: no average), got {self.stage2_ema}")
        if self.stage2_ema and not self.binary:
            raise ConfigError("stage2_ema averages stage 2 of a 1-bit run; a float run has no stage 2")
        for name, hi in (("cells", MAX_CELLS), ("channels", MAX_CHANNELS)):
            v = getattr(self, name)
            if v is not None and not 1 <= v <= hi:
                raise ConfigError(f"{name} must be in 1..{hi}, got {v}")
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None and not getattr(self, name) >= 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reductions is not None:
            cells = self.cells or EVAL_CELLS
            if not self.reductions or any(not 0 <= r < cells for r in self.reductions) or \
                    len(set(self.reductions)) != len(self.reductions):
                raise ConfigError(f"reductions must be distinct cell indices in [0, {cells}), got {list(self.reductions)}")
            object.__setattr__(self, "reductions", tuple(sorted(int(r) for r in self.reductions)))
        if self.policy is not None and self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if self.stem not in STEMS:
            raise ConfigError(f"unknown stem {self.stem!r}; choose one of {', '.join(STEMS)}")
        check_seed(self.seed)
        if self.device not in DEVICES:
            raise ConfigError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")

    def stages(self) -> list[tuple[str, int, bool | None, float]]:
        """[(name, epochs, binary_weight, weight_decay)]; binary_weight None for the float network."""
        if not self.binary:
            return [("float", self.epochs, None, self.weight_decay)]
        e1 = min(round(self.stage1_fraction * self.epochs), self.epochs - 1)
        out = [("stage1", e1, False, self.weight_decay)] if e1 > 0 else []
        return out + [("stage2", self.epochs - e1, True, 0.0)]

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["stem"] == "cifar":  # configs (and checkpoints) from before stems had a choice still match
            del d["stem"]
        if d["stage2_ema"] == 0.0:  # the same for runs from before the weight average
            del d["stage2_ema"]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "train config", flags: dict | None = None) -> "TrainConfig":
        return config_from_dict(cls, d, source, flags=flags)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: dict | None = None) -> "TrainConfig":
        """Keys at the top level or under [train]; `overrides` (e.g. CLI flags) win."""
        from dcpnas.io import read_toml

        path = Path(path)
        d = read_toml(path, ConfigError)
        d = d.get("train", d)
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: [train] must be a table of keys, found {type(d).__name__}")
        return cls.from_dict(d, str(path), flags=overrides)


def eval_space(genotype: Genotype, config: TrainConfig, input_shape, num_classes: int) -> SearchSpace:
    """The evaluation network's space: config.cells/channels (or the defaults) and config.policy, or
    when that is None the binarisation policy recorded by the search that found `genotype` (book if none)."""
    searched = genotype.search.get("space", {}) if isinstance(genotype.search, dict) else {}
    policy = config.policy or (searched.get("policy") if isinstance(searched, dict) else None) or "book"
    return default_eval_space(input_shape, num_classes, policy, config.cells, config.channels, config.reductions,
                              genotype.steps, config.stem)


def run_folder(genotype_file: str | Path, binary: bool = True) -> Path:
    """Where `dcpnas train GENOTYPE_FILE` writes by default, so that compile finds the weights of the
    same run: the genotype's folder / train (1-bit) or train-float (the real-valued twin)."""
    return Path(genotype_file).parent / ("train" if binary else "train-float")


def trained_weights(genotype_file: str | Path, binary: bool = True) -> Path | None:
    """model.pt of the finished training run of this genotype file (see run_folder), or None."""
    p = run_folder(genotype_file, binary) / "model.pt"
    return p if p.is_file() else None


@dataclass
class TrainResult:
    """test_accuracy in [0, 1] of the final network; seconds: training wall time (summed over resumes);
    last_weights: with stage2_ema, {test_accuracy, test_loss} of the last (not averaged) weights."""

    out_dir: Path
    model_path: Path
    test_accuracy: float
    test_loss: float
    seconds: float
    history: list[dict] = field(default_factory=list)
    space: SearchSpace | None = None
    last_weights: dict | None = None


# -- pieces -----------------------------------------------------------------------------------------

def augment_batch(x: torch.Tensor, gen: torch.Generator, fill: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Random shift by up to `pad` pixels (uncovered pixels = `fill` [C], the normalised black) and
    random horizontal flip, per image. x [N, C, H, W] -> same shape."""
    n, c, h, w = x.shape
    big = fill.to(x.device).view(1, c, 1, 1).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    big[:, :, pad:pad + h, pad:pad + w] = x
    # the random draws come from `gen` (a CPU generator) whatever the device: the same data on CPU and GPU
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    rows = dy[:, None] + torch.arange(h)
    cols = dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(x.device)
    rows = rows.to(x.device)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return big[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def cosine_lr(base: float, step: int, total: int) -> float:
    """lr at `step` of `total` steps: base * (1 + cos(pi * step / total)) / 2."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """KL(softmax(t/T) || softmax(s/T)) * T^2, mean over the batch. logits [N, classes]."""
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


def training_loss(model: torch.nn.Module, teacher: torch.nn.Module | None = None, teacher_in=None,
                  temperature: float = 1.0):
    """loss_fn(x, y) -> (loss, logits) of one batch: KL to `teacher`'s softmax (its input passed through
    `teacher_in` when given) or, without a teacher, cross-entropy on the labels y."""

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        if teacher is None:
            return F.cross_entropy(logits, y), logits
        with torch.no_grad():
            t_logits = teacher(teacher_in(x) if teacher_in else x)
        return distillation_loss(logits, t_logits, temperature), logits

    return loss_fn


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             device: str = "cpu") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in [0, 1]) of `model` in eval mode on x [N, C, H, W], y [N]."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        logits = model(xb)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    return loss_sum / max(len(y), 1), correct / max(len(y), 1)


def _set_stage(model: torch.nn.Module, binary_weight: bool | None, fresh: bool) -> None:
    if binary_weight is None:
        return
    if fresh:
        set_binary_weights(model, binary_weight)  # re-initialises beta when switching to binary
    else:
        for m in model.modules():
            if isinstance(m, BinaryConv2d):
                m.binary_weight = binary_weight


def _load_teacher(teacher, genotype: Genotype, space: SearchSpace, norm: dict, device: str):
    """(teacher module, input transform) from a model.pt path or a module (assumed same normalisation)."""
    if teacher is None:
        return None, None
    if isinstance(teacher, torch.nn.Module):
        return teacher.to(device).eval(), None
    net, meta = load_model(teacher, genotype=genotype)
    if meta["binary"]:
        raise ArtifactError(f"{teacher}: a 1-bit network; the teacher is the real-valued twin "
                            f"(`dcpnas train GENOTYPE --float` writes it)")
    t_space: SearchSpace = meta["space"]
    if t_space.input_shape != space.input_shape or t_space.num_classes != space.num_classes:
        raise ArtifactError(f"{teacher}: teacher takes {t_space.input_shape} -> {t_space.num_classes} classes, "
                            f"the data is {space.input_shape} -> {space.num_classes}")
    m_s, s_s = torch.tensor(norm["mean"]).view(1, -1, 1, 1), torch.tensor(norm["std"]).view(1, -1, 1, 1)
    m_t = torch.tensor(meta["normalization"]["mean"]).view(1, -1, 1, 1)
    s_t = torch.tensor(meta["normalization"]["std"]).view(1, -1, 1, 1)
    # our inputs are (x - m_s) / s_s; the teacher expects (x - m_t) / s_t
    a, b = (s_s / s_t).to(device), ((m_s - m_t) / s_t).to(device)
    return net.to(device).eval(), (lambda x: x * a + b)


# -- the run ----------------------------------------------------------------------------------------

# config fields in which a run may differ from the run whose stage1.pt it starts from: stage 1 does not read
# stage2_lr or stage2_ema, and the device changes where the arithmetic runs, not what it is (a CPU stage 1 can go on on a GPU)
STAGE1_FREE = ("stage2_lr", "stage2_ema", "device")


RUN_FILES = ("model.pt", "train.json", "metrics.jsonl", "checkpoint.pt", "stage1.pt")


def _refuse_earlier_run(out_dir: Path) -> None:
    """A new (not resumed) training run must not mix with, or overwrite, an earlier run's results (nor a
    search's metrics.jsonl)."""
    found = [n for n in RUN_FILES if (out_dir / n).is_file()]
    if found:
        raise ConfigError(f"{out_dir} holds an earlier run ({', '.join(found)}); continue it with --resume, "
                          f"or choose a new -o folder")


DAMAGE = (KeyError, IndexError, TypeError, ValueError, RuntimeError)  # what a damaged checkpoint's fields raise


def _damaged(source: Path, e: Exception, part: str = "") -> ArtifactError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return ArtifactError(f"{source}: damaged checkpoint ({part}{type(e).__name__}: {first}); move it away to "
                         f"start afresh")


def _load_checkpoint(path: Path) -> dict:
    ck = load_torch(path)
    if ck.get("schema") != CHECKPOINT_SCHEMA or not isinstance(ck.get("config"), dict):
        raise ArtifactError(f"{path}: expected schema {CHECKPOINT_SCHEMA!r}, found {ck.get('schema')!r}")
    return ck


def _own_checkpoint(path: Path, genotype: Genotype, config: TrainConfig) -> dict:
    """out_dir/checkpoint.pt for `resume`: written by this very config and genotype."""
    ck = _load_checkpoint(path)
    if ck["config"] != config.to_dict() or ck.get("genotype_digest") != genotype.digest():
        raise ConfigError(f"{path}: was written with another config or genotype; "
                          f"use the same options to --resume, or a new -o folder")
    return ck


def teacher_digest(net: torch.nn.Module | None) -> str | None:
    """A fingerprint of a teacher's weights (None without a teacher): a stage 2 distils from the teacher of its
    stage 1, and a checkpoint records which one that was."""
    if net is None:
        return None
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_stage1_teacher(ck: dict, path: str | Path, digest: str | None) -> None:
    """Refuse a stage1.pt whose stage 1 learnt from another teacher (or from the labels) than this run's stage 2
    would; a snapshot from before teachers were recorded is taken as it is."""
    if "teacher" not in ck or ck["teacher"] == digest:
        return
    if ck["teacher"] is None:
        raise ConfigError(f"{path}: its stage 1 learnt from the labels, this run distils from a teacher; "
                          f"give --no-teacher, or start from a distilled run's stage1.pt")
    if digest is None:
        raise ConfigError(f"{path}: its stage 1 was distilled from a teacher, this run has none; give that --teacher")
    raise ConfigError(f"{path}: its stage 1 was distilled from another teacher (weights {ck['teacher']}, "
                      f"this run's {digest}); give the teacher of that run")


def stage1_snapshot(path: str | Path, genotype: Genotype, config: TrainConfig) -> dict:
    """The stage1.pt checkpoint at `path`, validated for `config`: written by a run of the same genotype whose
    config differs at most in STAGE1_FREE, at the end of its stage 1 (of this config's length)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such stage-1 checkpoint (a 1-bit run writes stage1.pt when its stage 1 ends)")
    ck = _load_checkpoint(path)
    mine = {k: v for k, v in config.to_dict().items() if k not in STAGE1_FREE}
    theirs = {k: v for k, v in ck["config"].items() if k not in STAGE1_FREE}
    if theirs != mine or ck.get("genotype_digest") != genotype.digest():
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)) or ["genotype"]
        raise ConfigError(f"{path}: its run differs in {', '.join(diff)}; only {', '.join(STAGE1_FREE)} may differ "
                          f"from the run that starts stage 2 from it")
    stages = config.stages()
    if len(stages) < 2 or ck.get("stage") != 0 or ck.get("epoch_in_stage") != stages[0][1]:
        raise ArtifactError(f"{path}: not a checkpoint at the end of stage 1 of this recipe")
    return ck


def train(genotype: Genotype, config: TrainConfig, out_dir: str | Path, *, progress: ProgressFn | None = None,
          resume: bool = False, teacher=None, cuda_graph: bool = True, start_from: str | Path | None = None
          ) -> TrainResult:
    """Train the evaluation network of `genotype` (see the module docstring); returns the final result.

    teacher: None, a model.pt path (validated: same genotype, same input shape and classes) or a module.
    resume: continue from out_dir/checkpoint.pt (config and genotype must be unchanged); without a
    checkpoint it starts afresh. start_from: a stage1.pt of another run (`stage1_snapshot`): without a checkpoint
    of its own the run starts stage 2 from it (its stage-1 history and time are kept in the records), and
    train.json names it. progress(phase, done, total, **metrics) is called per batch and, with
    test_acc, after each epoch (after the checkpoint is written). cuda_graph: on a CUDA device, replay
    each stage's training step as one CUDA graph (dcpnas.cuda_graph; the same arithmetic, launched at
    once); False runs it eagerly. The data then lives on the device too.
    """
    from dcpnas.data import load_dataset

    progress = progress or no_progress
    if not resume:
        _refuse_earlier_run(Path(out_dir))
    out_dir = make_folder(out_dir)
    genotype.validate()
    data = load_dataset(config.data)
    if config.train_subset or config.test_subset:
        data = data.subset(config.train_subset, config.test_subset, seed=config.seed)
    space = eval_space(genotype, config, data.input_shape, data.num_classes)
    norm = data.normalization()
    x_train, y_train = data.tensors("train")
    x_test, y_test = data.tensors("test")
    fill = ((0.0 - torch.tensor(norm["mean"])) / torch.tensor(norm["std"])).float()
    dev = config.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA device is visible to PyTorch")
    graphed = dev == "cuda" and cuda_graph
    if dev == "cuda" and _fits_on_device(x_train, y_train, x_test, y_test):  # no host gather and copy per step
        x_train, y_train, x_test, y_test = (t.to(dev) for t in (x_train, y_train, x_test, y_test))
    fill = fill.to(x_train.device)  # where the batches are augmented

    torch.manual_seed(config.seed)
    model = Network(genotype, space, binary=config.binary).to(dev)
    # channels_last: about 1.2-2x faster depthwise convs and batch norms on CPU (same numbers)
    fmt = torch.channels_last if dev == "cpu" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    gen = torch.Generator().manual_seed(config.seed)
    teacher_net, teacher_in = _load_teacher(teacher, genotype, space, norm, dev)
    stages = config.stages()
    n = len(y_train)
    bs = min(config.batch_size, n)
    steps = max(n // bs, 1)

    def recalibration_batches():  # whole batches only: with momentum None every batch weighs the same
        k = max(bs, min(n, RECALIBRATION_IMAGES) // bs * bs)
        idx = torch.linspace(0, n - 1, k).long().to(x_train.device)
        for i in range(0, len(idx), bs):
            yield x_train[idx[i:i + bs]].to(dev).contiguous(memory_format=fmt)

    state = {"stage": 0, "epoch_in_stage": 0, "history": [], "seconds": 0.0}
    ckpt_path = out_dir / "checkpoint.pt"
    opt_state = ema_state = None
    teacher_id = teacher_digest(teacher_net)
    snapshot = None
    if start_from is not None:
        snapshot = stage1_snapshot(start_from, genotype, config)
        check_stage1_teacher(snapshot, start_from, teacher_id)
    ck = _own_checkpoint(ckpt_path, genotype, config) if resume and ckpt_path.is_file() else snapshot
    if ck is not None and ck is not snapshot and start_from is None:  # a resumed run keeps its source's name
        start_from = ck.get("stage1_from")
    if ck is not None:
        source = ckpt_path if ck is not snapshot else Path(start_from)
        try:
            _set_stage(model, stages[ck["stage"]][2], fresh=False)
            model.load_state_dict(ck["model"])
            gen.set_state(ck["rng"])
            state = {k: ck[k] for k in state}
            if not (isinstance(state["history"], list) and 0 <= int(state["epoch_in_stage"])
                    and math.isfinite(float(state["seconds"]))):
                raise ValueError("history, epoch or seconds out of range")
        except DAMAGE as e:
            raise _damaged(source, e) from None
        opt_state, ema_state = ck["optimizer"], ck.get("ema")
        write_metrics(out_dir, state["history"])  # drop lines written after the checkpoint

    t_start = time.perf_counter() - state["seconds"]
    model.train()
    ema = None
    for si in range(state["stage"], len(stages)):
        name, epochs, binary_weight, wd = stages[si]
        fresh = not (si == state["stage"] and (state["epoch_in_stage"] > 0 or opt_state is not None))
        _set_stage(model, binary_weight, fresh=fresh and state["epoch_in_stage"] == 0)
        lr = config.stage2_lr if name == "stage2" and config.stage2_lr is not None else config.lr
        # fused: one kernel over all ~600 parameter tensors (the default loops in Python on CPU: 28 ms vs 4 ms
        # a step of the demo network, ~5% of a training step)
        # on CUDA the capturable variant with or without the graph: the same optimiser arithmetic either way
        on_cuda = dev == "cuda"
        opt = (capturable_adamw(model.parameters(), lr, wd, dev) if on_cuda else
               torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, fused=True))
        if not fresh and opt_state is not None and state["epoch_in_stage"] < epochs:
            try:
                for g in opt_state["param_groups"]:  # a checkpoint from before the fused optimiser resumes fused
                    g.update(fused=True, foreach=None, capturable=on_cuda)
                    g["lr"] = float(g["lr"])  # set again below, before every step
                opt.load_state_dict(opt_state)
            except DAMAGE as e:
                raise _damaged(source, e, "optimizer state: ") from None
            if on_cuda:
                for g in opt.param_groups:
                    g["lr"] = torch.tensor(g["lr"], device=dev)

        ema = None
        if name == "stage2" and config.stage2_ema:
            ema = WeightEMA(model, config.stage2_ema, state=None if fresh else ema_state)
        loss_fn = training_loss(model, teacher_net, teacher_in, config.temperature)
        step_fn = None  # the graphed step is captured on the stage's first batch
        start_epoch = state["epoch_in_stage"] if si == state["stage"] else 0
        for epoch in range(start_epoch, epochs):
            # running sums stay on the device; read (a host sync) only every REPORT_EVERY steps: on a GPU a sync
            # a step stalls the launch queue
            loss_sum, correct, seen = torch.zeros((), device=dev), torch.zeros((), device=dev, dtype=torch.long), 0
            perm = torch.randperm(n, generator=gen).to(x_train.device)  # one copy an epoch, not one a step
            for b in range(steps):
                idx = perm[b * bs:(b + 1) * bs]
                xb, yb = x_train[idx], y_train[idx]
                if config.augment:
                    xb = augment_batch(xb, gen, fill)
                xb, yb = xb.to(dev).contiguous(memory_format=fmt), yb.to(dev)
                set_lr(opt, cosine_lr(lr, epoch * steps + b, epochs * steps))
                if step_fn is None:
                    step_fn = GraphedStep(model, opt, loss_fn, xb, yb) if graphed else eager_step(opt, loss_fn)
                loss, logits = step_fn(xb, yb)
                if ema is not None:
                    ema.update()
                loss_sum += loss.detach() * len(yb)
                correct += (logits.detach().argmax(1) == yb).sum()
                seen += len(yb)
                if b == 0 or (b + 1) % REPORT_EVERY == 0 or b + 1 == steps:
                    progress(name, epoch * steps + b + 1, epochs * steps, epoch=f"{epoch + 1}/{epochs}",
                             loss=float(loss_sum) / seen, acc=int(correct) / seen)
            loss_sum, correct = float(loss_sum), int(correct)
            test_loss, test_acc = evaluate(model, x_test, y_test, config.eval_batch_size, dev)
            record = {"epoch": len(state["history"]) + 1, "stage": name, "epoch_in_stage": epoch + 1,
                      "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                      "test_loss": test_loss, "test_accuracy": test_acc}
            if ema is not None:
                with ema.swapped_in(model, recalibration_batches()):
                    record["test_loss_ema"], record["test_accuracy_ema"] = evaluate(
                        model, x_test, y_test, config.eval_batch_size, dev)
            record["seconds"] = time.perf_counter() - t_start
            state["history"].append(record)
            state.update(stage=si, epoch_in_stage=epoch + 1, seconds=record["seconds"])
            ck = {"schema": CHECKPOINT_SCHEMA, "config": config.to_dict(), "genotype_digest": genotype.digest(),
                  "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": gen.get_state(),
                  "teacher": teacher_id, "stage1_from": None if start_from is None else str(start_from), **state}
            if ema is not None:
                ck["ema"] = ema.state()
            save_torch(ckpt_path, ck)
            if name == "stage1" and epoch + 1 == epochs and si + 1 < len(stages):
                save_torch(out_dir / "stage1.pt", ck)  # where runs that differ only in stage 2 can start
            write_metrics(out_dir, state["history"])
            progress(name, (epoch + 1) * steps, epochs * steps, epoch=f"{epoch + 1}/{epochs}",
                     loss=record["train_loss"], acc=record["train_accuracy"], test_acc=test_acc)
        state.update(stage=si + 1, epoch_in_stage=0)
        opt_state = step_fn = None  # the next stage's forward differs: a new graph

    test_loss, test_acc = evaluate(model, x_test, y_test, config.eval_batch_size, dev)
    last = None
    if ema is not None:  # the network kept is the average; the last weights' accuracy is reported beside it
        last = {"test_accuracy": test_acc, "test_loss": test_loss}
        t0 = time.perf_counter()
        ema.load_into(model, recalibration_batches())
        state["seconds"] += time.perf_counter() - t0  # measuring the average's BatchNorm is part of training
        test_loss, test_acc = evaluate(model, x_test, y_test, config.eval_batch_size, dev)
    seconds = state["seconds"]
    info = {"dataset": data.name, "test_accuracy": test_acc, "epochs": config.epochs, "seed": config.seed,
            "teacher": str(teacher) if isinstance(teacher, (str, Path)) else None}
    model_path = save_model(out_dir / "model.pt", model.cpu(), norm, info)
    write_json(out_dir / "train.json", {
        "schema": RESULT_SCHEMA, "genotype": genotype.to_dict(), "genotype_digest": genotype.digest(),
        "space": space.to_dict(), "config": config.to_dict(), "dataset": data.name,
        "n_train": n, "n_test": len(y_test), "test_accuracy": test_acc, "test_loss": test_loss,
        "seconds": seconds, "teacher": info["teacher"], "history": state["history"],
        "stage1_from": str(start_from) if start_from is not None else None, "last_weights": last})
    if state["history"]:
        from dcpnas.train_plots import plot_history

        kind = "1-bit" if config.binary else "float"
        plot_history(state["history"], out_dir / "curves.png", f"{kind} network {genotype.digest()[:8]}")
    return TrainResult(out_dir, model_path, test_acc, test_loss, seconds, state["history"], space, last)


REPORT_EVERY = 10  # training steps between progress reports (and host syncs)


def _fits_on_device(*tensors: torch.Tensor) -> bool:
    """Whether the data takes at most a quarter of the CUDA device's free memory (Fashion-MNIST: 0.2 GB,
    CIFAR-10: 0.7 GB); a larger image folder stays on the host and each batch is copied."""
    free, _ = torch.cuda.mem_get_info()
    return sum(t.element_size() * t.nelement() for t in tensors) <= free // 4


def write_metrics(out_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl: one JSON line per finished epoch (rewritten whole, atomically)."""
    atomic_write_text(Path(out_dir) / "metrics.jsonl", "".join(to_json(h) + "\n" for h in history))


__all__ = ["TrainConfig", "TrainResult", "train", "default_eval_space", "evaluate", "distillation_loss", "training_loss",
           "augment_batch", "cosine_lr", "eval_space", "run_folder", "trained_weights", "EVAL_CELLS", "EVAL_CHANNELS"]

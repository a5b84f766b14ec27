"""The DCP-NAS search loop (METHOD.md section 5, Algorithm 10) with checkpoints, resume and outputs.

    run_search(config, out_dir, *, progress=None, resume=False, table=None) -> Genotype

writes into out_dir: genotype.json (schema dcpnas.genotype/1 with the "search" record), metrics.jsonl
(one line per step and per phase-epoch), config.toml (the config used), alphas.png, losses.png and
checkpoints/epoch_NNN.pt (one per epoch; `resume=True` continues from the newest one and, with the same
config, ends bit-identical to an uninterrupted run: batch order is a function of (seed, epoch, phase)).

Modes: dcp (Parent + Child with tangent propagation), cp (the same with lambda = 0), direct
(real-valued DARTS: Parent only; the genotype is binarised at training), random (alphas drawn from the
seed, no training). The latency term is used when `table` is given or config.target names a target.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dcpnas.checkpoint import load_torch
from dcpnas.config import SearchConfig
from dcpnas.data import load_dataset
from dcpnas.distributed import DistContext
from dcpnas.errors import ArtifactError, ConfigError, DeviceError, LutError
from dcpnas.genotype import Genotype
from dcpnas.io import append_jsonl, atomic_write_bytes, atomic_write_text, make_folder, parse_json
from dcpnas.latency import LatencyLookup, genotype_latency
from dcpnas.parent_child import LatencyTerm, ParentChild, alpha_entropy, binary_signs
from dcpnas.progress import ProgressFn, no_progress
from dcpnas.space import SearchSpace

CHECKPOINT_SCHEMA = "dcpnas.search-checkpoint/1"
# keys that may differ between an interrupted run and its resumption
RESUME_FREE_KEYS = {"name", "device", "threads"}

__all__ = ["run_search", "ParentChild", "SearchData", "prepare_data"]


@dataclass
class SearchData:
    """Normalised float tensors: w_* train the weights, a_* the alphas (two halves of the train split),
    e_* (from the test split) give the reported val accuracy. x: [N, C, H, W], y: [N]."""

    name: str
    w_x: torch.Tensor
    w_y: torch.Tensor
    a_x: torch.Tensor
    a_y: torch.Tensor
    e_x: torch.Tensor
    e_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.w_x.shape[1:])


def prepare_data(config: SearchConfig, device="cpu") -> SearchData:
    """A stratified subset of config.data, resized to config.image_size, split half/half."""
    ds = load_dataset(config.data)
    sub = ds.subset(config.n_train or None, config.n_eval or None, seed=config.seed)
    x, y = sub.tensors("train", ds.mean, ds.std)
    ex, ey = sub.tensors("test", ds.mean, ds.std)
    if config.image_size and x.shape[-1] != config.image_size:
        size = (config.image_size, config.image_size)
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        ex = F.interpolate(ex, size=size, mode="bilinear", antialias=True, align_corners=False)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed))
    half = len(y) // 2
    w, a = perm[:half], perm[half:]
    if half < 1:
        raise ConfigError(f"n_train = {config.n_train} leaves no images for the search")
    to = lambda t: t.contiguous().to(device)  # noqa: E731
    return SearchData(ds.name, to(x[w]), to(y[w]), to(x[a]), to(y[a]), to(ex), to(ey), ds.num_classes)


def _batches(n: int, steps: int, batch: int, seed: int, epoch: int, phase: int) -> list[torch.Tensor]:
    """Index batches for one phase of one epoch: a permutation drawn from (seed, epoch, phase), wrapped."""
    g = torch.Generator().manual_seed(1_000_003 * seed + 1009 * epoch + phase)
    reps = -(-steps * batch // n) or 1
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]


def _resolve_table(config: SearchConfig, table) -> tuple[LatencyLookup | None, dict]:
    """The LUT to use and what the genotype should record about it."""
    info = {"target": config.target, "lut_method": None, "lut_device": None}
    if table is not None:
        info["lut_method"] = getattr(table, "method", "custom")
        info["lut_device"] = getattr(table, "device", None)
        return table, info
    if config.target is None:
        return None, info
    from dcpnas.targets import get_target  # lazy: the target registry is optional for a plain search

    target = get_target(config.target)
    table = target.load_lut()
    info.update(target=target.name, lut_method=getattr(table, "method", None), lut_device=getattr(table, "device", None),
                lut_threads=getattr(table, "threads", None))  # the expected latency holds at this thread count
    return table, info


def _latest_checkpoint(out_dir: Path) -> Path | None:
    files = sorted((out_dir / "checkpoints").glob("epoch_*.pt"))
    return files[-1] if files else None


def _save_checkpoint(out_dir: Path, state: dict) -> Path:
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(out_dir / "checkpoints" / f"epoch_{state['epoch']:03d}.pt", buf.getvalue())


def _load_checkpoint(path: Path, config: SearchConfig) -> dict:
    try:  # weights_only: a checkpoint received from someone else must not run code
        state = load_torch(path)
    except ArtifactError as e:
        raise ArtifactError(f"{e}; delete it to resume from the previous one") from None
    if state.get("schema") != CHECKPOINT_SCHEMA:
        raise ArtifactError(f"{path}: expected schema {CHECKPOINT_SCHEMA!r}, found {state.get('schema')!r}")
    missing = [k for k in ("epoch", "config", "pc", "elapsed_s", "final") if k not in state]
    if missing or not isinstance(state["config"], dict):
        raise ArtifactError(f"{path}: damaged search checkpoint (missing {', '.join(missing) or 'config'})")
    diff = _config_diff(state["config"], config)
    if diff:
        raise ConfigError(f"{path}: --resume needs the same config; differs in {', '.join(diff)}")
    return state


def _config_diff(saved: dict, config: SearchConfig) -> list[str]:
    """The keys (besides RESUME_FREE_KEYS) in which a saved config differs from `config`. A key the saved one
    lacks was added since, with the default that keeps the old behaviour."""
    saved, now = {**type(config)().to_dict(), **saved}, config.to_dict()
    return sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE_KEYS and saved.get(k) != now.get(k))


def _resume_without_checkpoint(out_dir: Path, config: SearchConfig) -> None:
    """--resume where no checkpoint exists starts afresh, unless the folder holds a run it would overwrite: one
    of another config, or a finished one whose checkpoints are gone (a random run, which has none, is drawn
    again from its seed: the same genotype)."""
    if not any((out_dir / n).is_file() for n in ("genotype.json", "metrics.jsonl")):
        return
    try:
        diff = _config_diff(SearchConfig.load(out_dir / "config.toml").to_dict(), config)
    except (ConfigError, ArtifactError):
        diff = ["config.toml (missing or unreadable)"]
    if diff:
        raise ConfigError(f"{out_dir} holds a run of another config (differs in {', '.join(diff)}); --resume needs "
                          f"the same config, or choose a new -o folder")
    if config.mode != "random":
        raise ConfigError(f"{out_dir} holds a finished run without checkpoints/: nothing to resume; choose a new "
                          f"-o folder")


def _rewrite_metrics(path: Path, keep_before_epoch: int) -> None:
    """Drop metric lines of the epochs an interrupted run did not finish."""
    if not path.is_file():
        return
    kept = []
    for ln in path.read_text().splitlines():
        try:
            r = parse_json(ln) if ln.strip() else None
        except ValueError:  # a line cut short by the interruption
            continue
        if isinstance(r, dict) and r.get("epoch", 0) < keep_before_epoch:
            kept.append(ln)
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))


def _alphas_record(pc: ParentChild, mode: str) -> dict:
    model = pc.parent if mode == "direct" else pc.child
    a_n, a_r = (a.detach().cpu() for a in model.arch_parameters())
    return {"normal": a_n.tolist(), "reduce": a_r.tolist()}


def _diagnostics(epoch: int, final: dict, pc: ParentChild, mode: str, flips: float | None) -> dict:
    """The per-epoch health record of a search (issue 12 / METHOD.md "Scaling"): val accuracy of both
    supernets on the fixed held-out set, the fraction of the Child's binary weight signs that flipped in
    this epoch's child phase, ||2 lambda H v|| / ||g_C||, psi's step / the optimiser's step (mean over the
    phase's arch steps), and the mean alpha entropy per cell type as a fraction of uniform."""
    parent, child = final.get("parent", {}), final.get("child", {})
    model = pc.parent if mode == "direct" else pc.child
    a_n, a_r = model.arch_parameters()
    return {"epoch": epoch, "child_val_acc": child.get("val_acc"), "parent_val_acc": parent.get("val_acc"),
            "sign_flip_fraction": flips, "tangent_ratio": child.get("mean_tangent_ratio"),
            "psi_step_ratio_parent": parent.get("mean_psi_step_ratio"),
            "psi_step_ratio_child": child.get("mean_psi_step_ratio"),
            "entropy_normal": alpha_entropy(a_n), "entropy_reduce": alpha_entropy(a_r)}


def run_search(config: SearchConfig, out_dir: str | Path, *, progress: ProgressFn | None = None,
               resume: bool = False, table: LatencyLookup | None = None) -> Genotype:
    """Run (or resume) a search; return the genotype (also written to out_dir/genotype.json).

    table: a LatencyLookup (anything with .query(key) -> ms, optionally .method/.device) that overrides
    config.target's LUT. progress(phase, done, total, **metrics) is called per step with phase
    "parent" or "child". Under torchrun every rank returns the same genotype; rank 0 writes the files.
    """
    progress = progress or no_progress
    out_dir = Path(out_dir)
    dist = DistContext.current()
    if config.device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA device is visible to PyTorch")
    device = torch.device(f"cuda:{dist.rank % max(1, torch.cuda.device_count())}") if config.device == "cuda" else torch.device("cpu")
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    elif dist.enabled:  # ranks on one machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world))
    # 1-bit nets drive BN/PReLU/Adam values into denormal floats, which are ~100x slower on x86 CPUs
    flush = torch.set_flush_denormal(True)
    try:
        return _run(config, out_dir, progress, resume, table, dist, device)
    finally:
        torch.set_num_threads(old_threads)
        if flush:
            torch.set_flush_denormal(False)


def _refuse_earlier_run(out_dir: Path) -> None:
    """A new (not resumed) search must not mix with, or overwrite, an earlier run's results."""
    found = [n for n in ("genotype.json", "metrics.jsonl") if (out_dir / n).is_file()]
    if _latest_checkpoint(out_dir) is not None:
        found.append("checkpoints/")
    if found:
        raise ConfigError(f"{out_dir} holds an earlier run ({', '.join(found)}); continue it with --resume, "
                          f"or choose a new -o folder")


def _run(config, out_dir, progress, resume, table, dist, device) -> Genotype:
    t0, c0 = time.perf_counter(), time.process_time()
    if not resume:
        _refuse_earlier_run(out_dir)
    created = dist.is_main and not out_dir.exists()
    if dist.is_main:
        make_folder(out_dir)  # before the data: a bad -o fails at once
    try:
        table, lut_info = _resolve_table(config, table)
        data = prepare_data(config, device)
    except BaseException:  # a bad --data or LUT leaves no empty run folder behind
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    space: SearchSpace = config.space(data.input_shape, data.num_classes)
    metrics_path = out_dir / "metrics.jsonl"
    checkpoint = _latest_checkpoint(out_dir) if resume else None
    state = _load_checkpoint(checkpoint, config) if checkpoint is not None else None  # before config.toml changes
    if resume and checkpoint is None:
        _resume_without_checkpoint(out_dir, config)
    if dist.is_main:
        config.save(out_dir / "config.toml")
        if checkpoint is None and metrics_path.exists():
            metrics_path.unlink()

    latency = None
    if table is not None:
        latency = LatencyTerm(space, table, config.latency_ms, config.latency_form, config.latency_gamma,
                              config.latency_beta, device)
    n_steps = config.steps_per_epoch or max(1, len(data.w_y) // config.batch_size)
    phases = ["parent"] if config.mode == "direct" else ["parent", "child"]
    pc = ParentChild(space, config, total_steps=config.epochs * n_steps, device=device, latency=latency, dist_ctx=dist)
    if latency is not None and latency.target_ms is None:
        with torch.no_grad():  # T defaults to the expected latency of the initial (near-uniform) supernet
            latency.target_ms = float(latency.expected(*pc.parent.arch_parameters()))
        if not (0 < latency.target_ms < float("inf")):
            raise LutError(f"the latency table predicts {latency.target_ms} ms for the initial supernet (are its "
                           f"entries all 0?); a latency term needs positive timings: rebuild it with `dcpnas lut build`")

    start_epoch, elapsed_before, cpu_before, final, diagnostics = 0, 0.0, 0.0, {}, []
    if state is not None:
        pc.load_state_dict(state["pc"])
        start_epoch, elapsed_before, final = state["epoch"], state["elapsed_s"], state["final"]
        diagnostics = list(state.get("diagnostics", []))
        cpu_before = state.get("cpu_s", 0.0)
        if latency is not None:
            latency.target_ms = state["latency_target_ms"]
        if dist.is_main:
            _rewrite_metrics(metrics_path, start_epoch)

    def log(record: dict) -> None:
        if dist.is_main:
            append_jsonl(metrics_path, record)

    if config.mode == "random":
        g = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            for a in (*pc.parent.arch_parameters(), *pc.child.arch_parameters()):
                a.copy_(torch.randn(a.shape, generator=g))
        start_epoch = config.epochs  # nothing to train

    total = config.epochs * n_steps
    for epoch in range(start_epoch, config.epochs):
        t_epoch = time.perf_counter()
        search_alpha = epoch >= config.warmup_epochs
        for k, phase in enumerate(phases):
            model = pc.parent if phase == "parent" else pc.child
            if phase == "child":
                pc.copy_alphas(pc.parent, pc.child)  # alpha_hat <- alpha
                if epoch == 0 and config.child_from_parent:
                    pc.inherit_child_weights()
                signs_before = binary_signs(pc.child)
            w_batches = _batches(len(data.w_y), n_steps, config.batch_size, config.seed, epoch, 2 * k)
            a_batches = _batches(len(data.a_y), n_steps, config.batch_size, config.seed, epoch, 2 * k + 1)
            sums: dict[str, float] = {}
            for i, (wb, ab) in enumerate(zip(w_batches, a_batches)):
                wx, wy = dist.shard(data.w_x[wb]), dist.shard(data.w_y[wb])
                m = pc.parent_weight_step(wx, wy) if phase == "parent" else pc.child_weight_step(wx, wy)
                if search_alpha:
                    ax, ay = dist.shard(data.a_x[ab]), dist.shard(data.a_y[ab])
                    m.update(pc.parent_arch_step(ax, ay) if phase == "parent" else pc.child_arch_step(ax, ay))
                for key, v in m.items():
                    sums[key] = sums.get(key, 0.0) + v
                log({"kind": "step", "epoch": epoch, "phase": phase, "step": epoch * n_steps + i, **m})
                shown = {key: m[key] for key in ("loss", "acc", "lat_ms") if key in m}
                progress(phase, epoch * n_steps + i + 1, total, epoch=f"{epoch + 1}/{config.epochs}", **shown)
            if phase == "parent" and config.mode != "direct" and config.effective_lambda > 0:
                tb = _batches(len(data.a_y), 1, config.batch_size, config.seed, epoch, 99)[0]
                pc.set_tangent(dist.shard(data.a_x[tb]), dist.shard(data.a_y[tb]))
            if phase == "child":
                pc.copy_alphas(pc.child, pc.parent)  # alpha <- alpha_hat
                flips = float((binary_signs(pc.child) != signs_before).float().mean())
            e_x, e_y = data.e_x, data.e_y
            if config.eval_batches:
                e_x, e_y = e_x[:config.eval_batches * config.batch_size], e_y[:config.eval_batches * config.batch_size]
            val_acc = pc.evaluate(model, e_x, e_y, calib=data.w_x[:config.bn_calibration])
            record = {"kind": "epoch", "epoch": epoch, "phase": phase, "val_acc": val_acc,
                      **{f"mean_{key}": v / n_steps for key, v in sums.items()},
                      "genotype": model.genotype().to_darts()}
            if latency is not None:
                with torch.no_grad():
                    record["lat_ms"] = float(latency.expected(*model.arch_parameters()))
            final[phase] = record
            log(record)
        diag = _diagnostics(epoch, final, pc, config.mode, flips if "child" in phases else None)
        diagnostics.append(diag)
        log({"kind": "diagnostics", **diag})
        progress("diagnostics", epoch + 1, config.epochs, **{k: v for k, v in diag.items() if v is not None and k != "epoch"})
        elapsed = elapsed_before + time.perf_counter() - t0
        cpu = cpu_before + time.process_time() - c0
        elapsed_before, t0, cpu_before, c0 = elapsed, time.perf_counter(), cpu, time.process_time()
        if dist.is_main:
            _save_checkpoint(out_dir, {"schema": CHECKPOINT_SCHEMA, "epoch": epoch + 1, "config": config.to_dict(),
                                       "pc": pc.state_dict(), "elapsed_s": elapsed, "cpu_s": cpu, "final": final,
                                       "diagnostics": diagnostics,
                                       "latency_target_ms": None if latency is None else latency.target_ms})
        log({"kind": "time", "epoch": epoch, "epoch_s": time.perf_counter() - t_epoch + 0.0, "cpu_s": cpu})
        dist.barrier()

    winner = pc.parent if config.mode == "direct" else pc.child
    genotype = winner.genotype()
    last = final.get("parent" if config.mode == "direct" else "child", {})
    search = {
        **lut_info,
        "expected_latency_ms": None if table is None else genotype_latency(genotype, space, table),
        "supernet_expected_latency_ms": None if latency is None else float(latency.expected(*winner.arch_parameters()).detach()),
        "latency_target_ms": None if latency is None else latency.target_ms,
        "latency_form": config.latency_form if latency is not None else None,
        "val_accuracy": last.get("val_acc"),
        "parent_val_accuracy": final.get("parent", {}).get("val_acc"),
        "dataset": data.name, "epochs": config.epochs, "seed": config.seed, "mode": config.mode,
        "space": space.to_dict(), "config": config.to_dict(), "alphas": _alphas_record(pc, config.mode),
        "diagnostics": diagnostics,
        "time_s": elapsed_before + time.perf_counter() - t0,
        "cpu_s": cpu_before + time.process_time() - c0,  # this process's CPU time (the machine may be shared)
    }
    genotype = Genotype(genotype.normal, genotype.normal_concat, genotype.reduce, genotype.reduce_concat, search)
    if dist.is_main:
        genotype.save(out_dir / "genotype.json")
        from dcpnas.plots import plot_alphas, plot_losses

        plot_alphas(search["alphas"], space.primitives, space.steps, out_dir / "alphas.png")
        plot_losses(metrics_path, out_dir / "losses.png")
    return genotype


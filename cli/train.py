"""`dcpnas train GENOTYPE`: train the evaluation network of a genotype from scratch (METHOD.md section 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcpnas.cli.common import Resumable, console, handle_errors, require, rich_progress

BUILTIN_GENOTYPES = ("DDPNAS_MCN_2",)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)


def resolve_genotype(arg: str):
    """A genotype.json / DARTS-string file, or the name of a built-in genotype (DDPNAS_MCN_2)."""
    from dcpnas import genotype as G

    if not Path(arg).exists() and arg.upper() in BUILTIN_GENOTYPES:
        return getattr(G, arg.upper())
    return G.load_genotype(arg)


@handle_errors
def train_cmd(
    genotype: str = typer.Argument(..., help="genotype.json, a file with a DARTS Genotype(...) string, or DDPNAS_MCN_2."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder \\[default: beside a genotype file, its folder/train (or train-float), where `dcpnas compile` looks; runs/train-<hash> (or train-<hash>-float) for a built-in]."),
    float_net: bool = typer.Option(False, "--float", help="Train the real-valued twin (a teacher for --teacher)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="model.pt of the real-valued network of the same genotype: KL loss to its softmax \\[default: GENOTYPE's folder/train-float/model.pt when `dcpnas train --float` wrote it]."),
    no_teacher: bool = typer.Option(False, "--no-teacher", help="Labels as targets even where a trained float twin exists."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Total epochs (split between the two stages of a 1-bit run)."),
    cells: Optional[int] = typer.Option(None, "--cells", help="Cells of the evaluation network."),
    channels: Optional[int] = typer.Option(None, "--channels", help="Channels of the first cell."),
    reductions: Optional[str] = typer.Option(None, "--reductions", help="Reduction cell indices, e.g. 0,2 \\[default: cells//3 and 2*cells//3]."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Binarisation policy: book | authors (default: the one the genotype was searched with, else book)."),
    stem: Optional[str] = typer.Option(None, "--stem", help="cifar (default: a 3x3 conv, cells at the image size) or imagenet (DARTS' stride-8 stem, for large images)."),
    data: Optional[str] = typer.Option(None, "--data", help="embedded | fashion-mnist:DIR | cifar10:DIR | imagefolder:DIR"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Add the LUT latency of each layer of this target to the summary."),
    stage2_lr: Optional[float] = typer.Option(None, "--stage2-lr", help="Peak lr of stage 2 (binary weights) \\[default: the lr of stage 1]."),
    stage2_ema: Optional[float] = typer.Option(None, "--stage2-ema", help="Keep an exponential moving average of stage 2's weights with this decay (e.g. 0.9995; BatchNorm measured again) as the network; the last weights' accuracy is reported beside it \\[default: 0, none]."),
    stage1_from: Optional[Path] = typer.Option(None, "--stage1-from", help="stage1.pt (or the folder) of an earlier 1-bit run of the same recipe and teacher (only --stage2-lr, --stage2-ema and --device may differ): skip stage 1 and train stage 2 from it."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoint.pt."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of TrainConfig keys (top level or a \\[train] table); flags win."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) or cuda."),
    cuda_graph: bool = typer.Option(True, "--cuda-graph/--no-cuda-graph", help="On cuda, replay each training step as one CUDA graph (same arithmetic, far fewer launches); --no-cuda-graph runs it eagerly."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for PyTorch (1 is fastest on a busy machine)."),
    no_progress: bool = typer.Option(False, "--no-progress", "-q", help="No progress bars."),
) -> None:
    """Train a genotype's network: 1-bit two-stage recipe (or --float), writes model.pt, metrics.jsonl, curves.png."""
    from dcpnas.errors import ConfigError
    from dcpnas.train import TrainConfig, train

    from dcpnas.config import MAX_THREADS

    require("--threads", threads, 1, MAX_THREADS)
    geno = resolve_genotype(genotype)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    red = None
    if reductions is not None:
        try:
            red = [int(r) for r in reductions.split(",") if r.strip()]
        except ValueError:
            raise ConfigError(f"--reductions {reductions!r}: expected cell indices like 0,2") from None
    overrides = {k: v for k, v in {
        "reductions": red,
        "epochs": epochs, "cells": cells, "channels": channels, "policy": policy, "stem": stem, "data": data, "seed": seed,
        "batch_size": batch_size, "device": device, "stage2_lr": stage2_lr,
        "stage2_ema": stage2_ema}.items() if v is not None}
    if float_net:
        overrides["binary"] = False
    cfg = TrainConfig.from_toml(config, overrides) if config else TrainConfig.from_dict(overrides, "options")
    if teacher is not None and not cfg.binary:
        raise ConfigError("--teacher distils into the 1-bit network; drop --float or --teacher")
    if stage1_from is not None and not cfg.binary:
        raise ConfigError("--stage1-from starts stage 2 of a 1-bit run; a --float run has no stages")
    if teacher is not None and no_teacher:
        raise ConfigError("--teacher and --no-teacher contradict each other; give one")
    if teacher is None and cfg.binary and not no_teacher and Path(genotype).is_file():
        from dcpnas.train import trained_weights

        teacher = trained_weights(genotype, binary=False)
        if teacher is not None:
            console.print(f"teacher {teacher} (the float twin of this run; --teacher or --no-teacher override)")
    if stage1_from is not None:  # checked before anything is printed or written: a misfit fails in a second
        from dcpnas.checkpoint import load_model
        from dcpnas.train import check_stage1_teacher, stage1_snapshot, teacher_digest

        stage1_from = stage1_from / "stage1.pt" if stage1_from.is_dir() else stage1_from
        ck = stage1_snapshot(stage1_from, geno, cfg)
        check_stage1_teacher(ck, stage1_from, teacher_digest(load_model(teacher, genotype=geno)[0]) if teacher else None)
    table = None
    if target is not None:  # load the LUT first so that a bad target fails before training
        from dcpnas.targets import get_target

        table = get_target(target).load_lut()
    if out is None:
        from dcpnas.train import run_folder

        builtin = not Path(genotype).exists()
        out = (Path("runs") / f"train-{geno.digest()[:8]}{'' if cfg.binary else '-float'}" if builtin
               else run_folder(genotype, cfg.binary))
    kind = "1-bit" if cfg.binary else "real-valued"
    console.print(f"training the {kind} network of genotype {geno.digest()[:8]} on {cfg.data} -> {out}")
    try:
        with rich_progress(not no_progress) as progress:
            result = train(geno, cfg, out, progress=progress, resume=resume, teacher=teacher,
                           cuda_graph=cuda_graph, start_from=stage1_from)
    except KeyboardInterrupt:
        raise Resumable(out) from None

    from dcpnas.checkpoint import load_model
    from dcpnas.summary import summarize

    net, _ = load_model(result.model_path, genotype=geno)
    print_summary(summarize(net, table), target, table)
    if result.last_weights is not None:
        console.print(f"the stage-2 weight average is the network kept; the last weights: "
                      f"{100 * result.last_weights['test_accuracy']:.2f}%")
    console.print(f"test accuracy [bold]{100 * result.test_accuracy:.2f}%[/] on "
                  f"the held-out test split; {result.seconds:.0f} s of training; wrote {result.model_path}, "
                  f"{out / 'metrics.jsonl'}, {out / 'curves.png'}")


def print_summary(s, target: str | None, table) -> None:
    """The larq-style table: per layer binary or float, parameters, bits, memory, LUT latency."""
    from rich.table import Table

    from rich import box

    t = Table(title="network summary", show_footer=True, box=box.SIMPLE_HEAD,
              caption="1-bit / 32-bit: parameter counts; KiB: their memory (1 bit or 32 bits each)")
    cols = ["layer", "op", "kind", "1-bit", "32-bit", "KiB"]
    if table is not None:
        cols.append("LUT ms")
    foot = ["total", "", "", str(s.params_1bit), str(s.params_32bit), f"{s.memory_kib:.2f}"]
    if table is not None:
        foot.append(f"{s.latency_ms:.4f}")
    for c, f in zip(cols, foot):
        numeric = c not in ("layer", "op", "kind")
        t.add_column(c, footer=f, justify="right" if numeric else "left", no_wrap=not numeric)
    for r in s.rows:
        row = [r.name, r.op, "1-bit" if r.binary else "float", str(r.params_1bit), str(r.params_32bit),
               f"{r.memory_kib:.2f}"]
        if table is not None:
            row.append("-" if r.latency_ms is None else f"{r.latency_ms:.4f}")
        t.add_row(*row)
    console.print(t)
    console.print(f"memory {s.memory_kib:.1f} KiB vs {s.float_memory_kib:.1f} KiB all 32-bit "
                  f"({s.compression:.1f}x smaller)")
    if table is not None:
        method = getattr(table, "method", "")
        note = f" ({method} LUT)" if method else ""
        console.print(f"LUT latency on {target}{note}: {s.latency_ms:.3f} ms over the layers it holds")
        if s.missing_keys:
            console.print(f"[yellow]{len(s.missing_keys)} of {len(s.rows)} layers are not in the LUT[/] "
                          f"(it covers the shapes of the search space; build one for this network size with "
                          f"`dcpnas lut build`)")

"""`dcpnas compile INPUT --target T`: genotype / DARTS string / dcpnas .onnx -> build folder with parity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcpnas.cli.common import console, handle_errors, require, rich_progress


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_cmd)


def default_target(genotype_file: Path | None) -> tuple[str, str]:
    """(target name, why): the target recorded by the search that found the genotype, else this host's."""
    if genotype_file is not None and genotype_file.is_file():
        from dcpnas.genotype import load_genotype

        from dcpnas.targets.registry import is_builtin_target

        searched = load_genotype(genotype_file).search
        recorded = searched.get("target") if isinstance(searched, dict) else None
        if recorded and is_builtin_target(str(recorded)):
            return str(recorded), "the genotype was searched for it"
        if recorded:  # a target file named by a received genotype is never loaded (its cross compiler would run)
            return host_target(), (f"this host; the genotype was searched for {str(recorded)[:80]!r}, not a built-in "
                                   "target: give it with --target to compile for it")
    return host_target(), "this host; the genotype records no target"


def host_target() -> str:
    """The built-in target that matches this machine: x86-avx512 with VPOPCNTDQ, else x86-avx2; arm-a72 on aarch64."""
    import platform

    arch = platform.machine().lower()
    if arch in ("aarch64", "arm64"):
        return "arm-a72"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "x86-avx512" if "avx512_vpopcntdq" in flags else "x86-avx2"


@handle_errors
def compile_cmd(
    input: Path = typer.Argument(..., help="genotype.json, a text file with a DARTS Genotype(...) string, or a dcpnas .onnx."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target name (see `dcpnas targets`) or target .toml file \\[default: the target the genotype was searched for, else this host's]."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Build folder \\[default: build/<name>-<target>]."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Trained model.pt of this genotype \\[default: GENOTYPE's folder/train/model.pt written by `dcpnas train`, else fresh weights]."),
    fresh: bool = typer.Option(False, "--fresh", help="Freshly initialised weights even where a trained model.pt exists."),
    float_: bool = typer.Option(False, "--float", help="Build the real-valued twin (for `dcpnas bench`)."),
    data: str = typer.Option("embedded", "--data", help="Dataset for BatchNorm calibration and parity inputs."),
    parity_inputs: int = typer.Option(16, "--parity-inputs", help="Test images compared PyTorch vs ORT vs TVM."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Binarisation policy for fresh weights: book | authors."),
    cells: Optional[int] = typer.Option(None, "--cells", help="Cells of a fresh network \\[default: the train default]."),
    channels: Optional[int] = typer.Option(None, "--channels", help="Channels of a fresh network \\[default: the train default]."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="C,H,W of a fresh network's input when no "
                                              "dataset fixes it (e.g. 3,224,224); BatchNorm calibrated on random images."),
    stem: str = typer.Option("cifar", "--stem", help="Stem of a fresh network: cifar (a 3x3 conv; cells at the input size) "
                             "or imagenet (DARTS' stride-8 ImageNet stem, e.g. for 3,224,224)."),
    no_progress: bool = typer.Option(False, "--no-progress", "-q", help="No progress bars."),
) -> None:
    """Export to ONNX (dcpnas domain), lower through TVM for the target, check parity, write the build folder."""
    from dcpnas.compiler.pipeline import compile_genotype
    from dcpnas.config import MAX_CELLS, MAX_CHANNELS
    from dcpnas.errors import ConfigError

    require("--parity-inputs", parity_inputs, 1, 100_000)
    require("--cells", cells, 1, MAX_CELLS)
    require("--channels", channels, 1, MAX_CHANNELS)
    from dcpnas.space import STEMS

    if stem not in STEMS:
        raise ConfigError(f"--stem {stem!r}: choose one of {', '.join(STEMS)}")

    is_genotype = input.suffix.lower() != ".onnx"
    if fresh and weights is not None:
        raise ConfigError("--fresh and --weights contradict each other; give one")
    if target is None:
        target, why = default_target(input if is_genotype else None)
        console.print(f"target {target} ({why}; --target overrides)")
    if weights is None and is_genotype and not fresh and input.is_file():
        from dcpnas.train import run_folder, trained_weights

        weights = trained_weights(input)
        if weights is not None:
            console.print(f"weights {weights} (the trained network of this run; --weights or --fresh override)")
        elif run_folder(input).is_dir():
            console.print(f"[yellow]{run_folder(input)} holds no finished model.pt yet (`dcpnas train` still running "
                          f"or interrupted?)[/]")
    shape = None
    if input_shape is not None:
        try:
            shape = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"--input-shape must be C,H,W with positive integers (e.g. 3,32,32), got {input_shape!r}")
        if weights is not None:
            raise ConfigError("--input-shape is for a fresh network; a trained model.pt fixes its own input shape")
    if stem != "cifar" and (weights is not None or not is_genotype):
        raise ConfigError("--stem is for a fresh network; a trained model.pt or an .onnx file fixes its own stem "
                          "(--fresh builds a fresh one of a trained run's genotype)")
    with rich_progress(not no_progress) as progress:
        art = compile_genotype(input, target, out, weights=weights, float_=float_, data=data,
                               parity_inputs=parity_inputs, policy=policy, cells=cells, channels=channels, input_shape=shape,
                               stem=stem, progress=progress)
    m = art.manifest
    p = m["parity"]
    f = m["files"]
    if weights is None and input.suffix.lower() != ".onnx":
        console.print("[yellow]no --weights given: compiled freshly initialised weights "
                      "(BatchNorm calibrated on the training images); accuracy is meaningless[/]")
    console.print(f"[green]built[/] {art.path}  ({'1-bit' if m['binary'] else 'float'}, target {m['target']['name']}, "
                  f"TVM {m['tvm_version']})")
    console.print(f"  model.onnx {f['onnx']['bytes'] / 1024:.1f} KiB, model.so {f['lib']['bytes'] / 1024:.1f} KiB; "
                  f"compile {sum(m['compile_s'].values()):.1f} s")
    tvm_d = p["max_abs_diff_tvm"]
    ref = p.get("reference", "torch")
    how = "" if p["tvm_run"] == "ran" or tvm_d is None else f" ({p['tvm_run']})"
    console.print(f"  parity on {p['inputs']}: top-1 agreement {p['top1_agreement']:.3f}, "
                  f"max |ORT-{ref}| {p['max_abs_diff_ort']:.3g}, max |TVM-{ref}| "
                  f"{'n/a (' + p['tvm_run'] + ')' if tvm_d is None else f'{tvm_d:.3g}'}{how}")
    flips = {k: p[k]["benign_flips"] for k in ("ort", "tvm") if isinstance(p.get(k), dict)}
    if flips:
        console.print("  benign sign flips (pre-sign value within "
                      f"{p['eps_rel']:g} x max|x| of its threshold, traced): "
                      + ", ".join(f"{k.upper()} {v}" for k, v in flips.items()))
    acc = m.get("accuracy")
    if acc:
        tvm_acc = "n/a (TVM did not run here)" if acc["tvm"] is None else f"{100 * acc['tvm']:.2f}%"
        console.print(f"  top-1 accuracy on the {acc['n']} {acc['dataset']} test images: ONNX Runtime "
                      f"{100 * acc['ort']:.2f}%, TVM {tvm_acc}")
    if m["expected_latency_ms"] is not None:
        console.print(f"  expected latency {m['expected_latency_ms']:.3f} ms ({m['expected_latency_source']})")

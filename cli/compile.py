"""`dcpnas compile INPUT --target T`: genotype / DARTS string / dcpnas .onnx -> build folder with parity."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcpnas.cli.common import console, handle_errors, rich_progress


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_cmd)


@handle_errors
def compile_cmd(
    input: Path = typer.Argument(..., help="genotype.json, a text file with a DARTS Genotype(...) string, or a dcpnas .onnx."),
    target: str = typer.Option(..., "--target", "-t", help="Target name (see `dcpnas targets`) or target .toml file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Build folder [default: build/<name>-<target>]."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Trained model.pt of this genotype [default: fresh weights]."),
    float_: bool = typer.Option(False, "--float", help="Build the real-valued twin (for `dcpnas bench`)."),
    data: str = typer.Option("embedded", "--data", help="Dataset for BatchNorm calibration and parity inputs."),
    parity_inputs: int = typer.Option(16, "--parity-inputs", help="Test images compared PyTorch vs ORT vs TVM."),
    policy: Optional[str] = typer.Option(None, "--policy", help="Binarisation policy for fresh weights: book | authors."),
    cells: Optional[int] = typer.Option(None, "--cells", help="Cells of a fresh network [default: the train default]."),
    channels: Optional[int] = typer.Option(None, "--channels", help="Channels of a fresh network [default: the train default]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Export to ONNX (dcpnas domain), lower through TVM for the target, check parity, write the build folder."""
    from dcpnas.compiler.build import compile_genotype

    if weights is None and input.suffix.lower() != ".onnx":
        console.print("[yellow]no --weights given: compiling freshly initialised weights "
                      "(BatchNorm calibrated on the training images); accuracy is meaningless[/]")
    with rich_progress(not quiet) as progress:
        art = compile_genotype(input, target, out, weights=weights, float_=float_, data=data,
                               parity_inputs=parity_inputs, policy=policy, cells=cells, channels=channels,
                               progress=progress)
    m = art.manifest
    p = m["parity"]
    f = m["files"]
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
    if m["expected_latency_ms"] is not None:
        console.print(f"  expected latency {m['expected_latency_ms']:.3f} ms ({m['expected_latency_source']})")

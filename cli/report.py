"""`dcpnas report RUN`: the short summary a pipeline run ends with (also RUN/summary.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcpnas.cli.common import console, handle_errors


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


@handle_errors
def report_cmd(
    run: Path = typer.Argument(..., help="The run folder of `dcpnas search -o RUN` (genotype.json, train/)."),
    build: Optional[Path] = typer.Option(None, "--build", help="Build folder \\[default: the newest 1-bit build of this genotype under build/]."),
) -> None:
    """Summarise a run (search -> train -> compile -> bench): accuracy as compiled, size, latency; writes RUN/summary.json."""
    from dcpnas.run_report import run_summary, write_run_summary

    s = run_summary(run, build)
    path = write_run_summary(run, s)
    console.print(f"[bold]run {s['run']}[/] (genotype {s['genotype'][:8]}, target {s['target'] or '-'})")
    t = s["train"]
    if t is not None:
        console.print(f"  trained 1-bit network: {_pct(t['test_accuracy_torch'])} test accuracy in PyTorch "
                      f"({_fmt(t['epochs'], '.0f')} epochs, {_fmt(t['seconds'], '.0f')} s on {t['dataset'] or '-'})")
    if s["test_accuracy_ort"] is not None:
        goal = "meets" if min(v for v in (s["test_accuracy_ort"], s["test_accuracy_tvm"]) if v is not None) \
            >= s["accuracy_goal"] else "below"
        console.print(f"  as compiled, on the {_fmt(s['accuracy_images'], '.0f')} {s['accuracy_dataset']} test images: "
                      f"ONNX Runtime {_pct(s['test_accuracy_ort'])}, TVM {_pct(s['test_accuracy_tvm'])} "
                      f"({goal} the {s['accuracy_goal']:.0%} goal)")
    m = s["model_size"]
    if m is not None:
        console.print(f"  model size: {m['binary_kib']:.1f} KiB 1-bit vs {m['float_kib']:.1f} KiB float "
                      f"({m['compression']:.1f}x smaller)")
    lat = s["latency"]
    if lat is not None and lat["binary_ms"] is not None:
        best = f", best float {lat['best_float']} {lat['best_float_ms']:.4f} ms" if lat["best_float_ms"] else ""
        sp = "-" if s["speedup_vs_best_float"] is None else f"{s['speedup_vs_best_float']:.2f}x"
        console.print(f"  latency: 1-bit {lat['binary_ms']:.4f} ms{best}; speedup vs best float {sp}")
        for w in lat.get("warnings") or []:
            console.print(f"  [bold red]WARNING (bench): {w}[/]")
    for m in s["missing"]:
        console.print(f"  [yellow]missing[/] {m}")
    console.print(f"wrote {path}")

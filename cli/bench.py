"""`dcpnas bench [DIR]`: 1-bit TVM vs the float network (OpenVINO, ONNX Runtime, TVM twin) and vs the 1-bit network
on OpenVINO, end to end (interleaved rounds in one process) and per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcpnas.cli.common import console, err_console, handle_errors, require, rich_progress, writable_output
from dcpnas.io import to_json


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)


def _ms(v) -> str:
    return "-" if v is None else f"{v:.4f}"


@handle_errors
def bench_cmd(
    build_dir: Optional[Path] = typer.Argument(None, help="A build folder of `dcpnas compile` (with manifest.json) "
                                                        "\\[default: the newest 1-bit build under ./build]."),
    rpc: Optional[str] = typer.Option(None, "--rpc", help="HOST:PORT of a TVM RPC tracker (time on a board)."),
    key: Optional[str] = typer.Option(None, "--key", help="Device key on the tracker \\[default: the target's rpc_key]."),
    no_tracker: bool = typer.Option(False, "--no-tracker", help="--rpc is an RPC server itself (e.g. the emulated aarch64 one), not a tracker."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Thread count \\[default: the target's]."),
    target_name: Optional[str] = typer.Option(None, "--target", "-t", help="Target name or .toml \\[default: the build's]."),
    repeat: int = typer.Option(15, "--repeat", help="Timing samples (median and IQR over them)."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed runs first."),
    min_repeat_ms: float = typer.Option(20.0, "--min-repeat-ms", help="Length of one timing sample (ms)."),
    no_layers: bool = typer.Option(False, "--no-layers", help="End to end only (skip per-layer timing)."),
    emulated: bool = typer.Option(False, "--emulated", help="The RPC device is an emulator (qemu): label the timings."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where bench.json and bench.png go \\[default: DIR]."),
    json_out: bool = typer.Option(False, "--json", help="Print the DESIGN.md JSON summary on stdout."),
    no_progress: bool = typer.Option(False, "--no-progress", "-q", help="No progress bars."),
) -> None:
    """Time a compiled 1-bit network against the float network (OpenVINO, ONNX Runtime, TVM twin) and the
    1-bit network on OpenVINO, side by side; write bench.json and bench.png."""
    from dcpnas.compiler.artifact import Artifact
    from dcpnas.config import MAX_THREADS
    from dcpnas.errors import TargetError
    from dcpnas.targets import get_target
    from dcpnas.targets.registry import is_builtin_target
    from dcpnas.targets.bench import bench, json_summary, write_outputs
    from dcpnas.targets.profiler import Profiler

    require("--threads", threads, 1, MAX_THREADS)
    require("--repeat", repeat, 1)
    require("--warmup", warmup, 0)
    require("--min-repeat-ms", min_repeat_ms, positive=True)
    writable_output("--out", out, folder=True)
    if emulated and not rpc:
        from dcpnas.errors import ConfigError
        raise ConfigError("--emulated describes an RPC device: give --rpc")
    if build_dir is None:
        from dcpnas.targets.bench import newest_build

        build_dir = newest_build(Path("build"))
        err_console.print(f"benching the newest build: {build_dir}")
    art = Artifact.load(build_dir, verify_hashes=False)
    if target_name is None:  # a received build folder never names a target file to load (its compiler would run)
        target_name = art.manifest["target"]["name"]
        if not is_builtin_target(target_name):
            raise TargetError(f"{build_dir} was built for {target_name[:80]!r}, not a built-in target: "
                              "give its target file with --target")
    target = get_target(target_name, threads=threads)
    prof = Profiler(target, rpc=rpc, key=key, direct=no_tracker, threads=threads, warmup=warmup, repeat=repeat,
                    min_repeat_ms=min_repeat_ms)
    with rich_progress(not no_progress) as progress:
        report = bench(build_dir, prof, per_layer=not no_layers, emulated=emulated, progress=progress)
    js, png = write_outputs(report, out or build_dir)
    for w in report["warnings"]:
        err_console.print(f"[bold red]WARNING: {w}[/]")
    if json_out:
        typer.echo(to_json(json_summary(report)))
        return
    from rich.table import Table

    tag = " [magenta](EMULATED: not device speed)[/]" if emulated else ""
    table = Table(title=f"{target.name}, {report['threads']} threads, {report['device']}{tag}")
    for col in ("layer", "kind", "ms 1-bit", "% of 1-bit", "ms float", "speedup", "LUT ms"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for r in report["layers"]:
        table.add_row(r["layer"], r["kind"], _ms(r["binary_ms"]), _pct(r.get("share")), _ms(r["float_ms"]),
                      "-" if r["speedup"] is None else f"{r['speedup']:.1f}x", _ms(r["lut_ms"]))
    if report["layers"]:
        console.print(table)
    console.print(f"end to end (interleaved rounds, one process): 1-bit TVM {report['binary_ms']:.4f} ms "
                  f"(IQR {report['binary_iqr_ms']:.4f}); float: TVM twin {report['float_tvm_ms']:.4f} ms, "
                  f"ONNX Runtime {_ms(report['float_ort_ms'])} ms, OpenVINO {_ms(report['float_openvino_ms'])} ms; "
                  f"1-bit on OpenVINO {_ms(report['binary_openvino_ms'])} ms")
    console.print(f"[bold]speedup vs the best float ({report['best_float']}): {_x(report['speedup_vs_best_float'])}[/] "
                  f"(vs ORT {_x(report['speedup_vs_float_ort'])}, vs float TVM {_x(report['speedup_vs_float_tvm'])}, "
                  f"vs 1-bit OpenVINO {_x(report['speedup_vs_binary_openvino'])})")
    if report.get("openvino_binary_kernels"):
        console.print(f"OpenVINO {report['openvino']}: float at {report['openvino_float_precision']}; 1-bit network runs "
                      f"{report['openvino_binary_kernels']}")
    if report.get("lut_predicted_ms") is not None:
        console.print(f"LUT ({report['lut']}) predicts {report['lut_predicted_ms']:.4f} ms end to end")
    elif report.get("lut_missing_layers"):
        miss = report["lut_missing_layers"]
        console.print(f"LUT ({report['lut']}): no end-to-end prediction, {len(miss)} layers have ops outside "
                      f"the LUT (e.g. {miss[0]}): it covers the search space's sizes, not this network's")
    elif report.get("lut"):
        console.print(f"LUT: {report['lut']}")
    if report.get("breakdown_ms"):
        for line in breakdown_lines(report):
            console.print(line)
    if report.get("notes"):
        console.print(report["notes"])
    console.print(f"wrote {js} and {png}")


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def breakdown_lines(report: dict, top: int = 6) -> list[str]:
    """Where the 1-bit time goes, in words (Rich markup)."""
    b = report["breakdown_ms"]
    if b.get("method") != "in_run":
        return [f"per layer (PrimFuncs timed alone, hot in cache): binary conv layers {b['binary_conv_layers']:.4f} ms, "
                f"other layers {b['other_layers']:.4f} ms; no VM dispatch term: times taken alone do not add up "
                f"to the end to end"]
    e2e = b["end_to_end"]

    def part(label, v):
        return f"{label} {v:.4f} ms ({100 * v / e2e:.1f}%)"
    parts = [part("binary conv layers", b["binary_conv_layers"]), part("other layers", b["other_layers"]),
             part("VM builtins", b["vm_builtins"])]
    if b.get("unattributed_kernels"):
        parts.append(part("kernels no layer lists", b["unattributed_kernels"]))
    parts.append(part("VM dispatch", b["vm_dispatch"]))
    calls = b["calls"]
    lines = [f"[bold]where the 1-bit time goes[/] (timed inside the network's own run; the rows sum to the end to "
             f"end {e2e:.4f} ms): " + ", ".join(parts),
             f"  by kernel: " + ", ".join(part(k, v) for k, v in list(b["by_kernel"].items())[:top])
             + (", ..." if len(b["by_kernel"]) > top else ""),
             f"  per run: {calls['kernels']} kernel calls, {calls['builtins']} VM builtin calls"
             + (f", {calls['unattributed']} calls of kernels no layer lists" if calls["unattributed"] else "")
             + f"; the instrumented run took {100 * b['instrumentation_overhead']:+.1f}% vs the plain one "
               f"(the timer's cost, between calls: not in the rows)"]
    if b["scale"] < 1.0:
        lines.append(f"  in-run times summed to {b['in_run_sum']:.4f} ms, above the end to end: scaled by {b['scale']:.3f}")
    fb = report.get("float_breakdown_ms") or {}
    if fb.get("method") == "in_run":
        lines.append(f"  float TVM twin: layers {fb['binary_conv_layers'] + fb['other_layers']:.4f} ms, VM builtins "
                     f"{fb['vm_builtins']:.4f} ms, VM dispatch {fb['vm_dispatch']:.4f} ms of {fb['end_to_end']:.4f} ms")
    return lines

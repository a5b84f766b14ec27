"""`dcpnas lut build | show | check`: latency lookup tables of a target."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from dcpnas.cli.common import console, err_console, handle_errors, require, rich_progress, writable_output
from dcpnas.io import to_json

lut_app = typer.Typer(help="Latency lookup tables: build (measure or model), show, check against end-to-end timings.",
                      no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(lut_app, name="lut")


def _spaces(cells, channels, input_shape, policy, coverage, stem="cifar"):
    from dcpnas.errors import ConfigError
    from dcpnas.space import SearchSpace
    from dcpnas.targets.modeled import coverage_spaces

    if coverage:
        return coverage_spaces()
    try:
        shape = tuple(int(v) for v in input_shape.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be C,H,W like 1,28,28, got {input_shape!r}") from None
    return [SearchSpace(cells=c, channels=ch, input_shape=shape, policy=policy, stem=stem) for c in cells for ch in channels]


CELLS = typer.Option(None, "--cells", help="Cells of the search space (repeat for several) \\[default: 5].")
CHANNELS = typer.Option(None, "--channels", help="Channels C of the search space (repeat for several) \\[default: 8].")
SHAPE = typer.Option("1,28,28", "--input-shape", help="Input C,H,W.")
POLICY = typer.Option("book", "--policy", help="Binarisation policy: book | authors.")
STEM = typer.Option("cifar", "--stem", help="Stem of the networks: cifar | imagenet (DARTS' stride-8 stem, large inputs).")
STAT = typer.Option("median", "--statistic", help="median | min (min on a shared, loaded host: contention only adds time).")


@lut_app.command("build")
@handle_errors
def build_cmd(
    target: str = typer.Option(..., "--target", "-t", help="Target name or target .toml file."),
    rpc: Optional[str] = typer.Option(None, "--rpc", help="HOST:PORT of a TVM RPC tracker (a board)."),
    key: Optional[str] = typer.Option(None, "--key", help="Device key on the tracker \\[default: the target's rpc_key]."),
    no_tracker: bool = typer.Option(False, "--no-tracker", help="--rpc is an RPC server itself (e.g. the emulated aarch64 one), not a tracker."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Thread count \\[default: the target's]."),
    modeled: bool = typer.Option(False, "--modeled", help="Write a modeled LUT from the cost model (no device)."),
    emulated: bool = typer.Option(False, "--emulated", help="The RPC device is emulated (qemu): label the LUT 'emulated'."),
    coverage: bool = typer.Option(False, "--coverage", help="Cover the shipped set of spaces (cells 3-8, channels 4-16, 2 inputs, 2 policies)."),
    cells: Optional[list[int]] = CELLS, channels: Optional[list[int]] = CHANNELS,
    input_shape: str = SHAPE, policy: str = POLICY, stem: str = STEM,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="LUT file \\[default: the target's LUT; emulated: ./<target>.emulated.json]."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Keep entries already measured."),
    refine: bool = typer.Option(False, "--refine", help="Time existing entries again, keep the lower (with --statistic min)."),
    repeat: int = typer.Option(15, "--repeat", help="Timing samples per op."),
    min_repeat_ms: float = typer.Option(20.0, "--min-repeat-ms", help="Length of one timing sample (ms)."),
    statistic: str = STAT,
    no_progress: bool = typer.Option(False, "--no-progress", "-q", help="No progress bars."),
) -> None:
    """Measure (or model) every candidate op at every supernet position, plus stem, preprocessing, classifier."""
    from dcpnas.config import MAX_CELLS, MAX_CHANNELS, MAX_THREADS
    from dcpnas.targets import get_target
    from dcpnas.targets.modeled import build_modeled_lut, keys_of

    require("--threads", threads, 1, MAX_THREADS)
    require("--repeat", repeat, 1)
    require("--min-repeat-ms", min_repeat_ms, positive=True)
    for c in cells or ():
        require("--cells", c, 1, MAX_CELLS)
    for c in channels or ():
        require("--channels", c, 1, MAX_CHANNELS)
    if statistic not in ("median", "min"):
        from dcpnas.errors import ConfigError
        raise ConfigError(f"--statistic must be median or min, got {statistic!r}")
    t = get_target(target, threads=threads)
    _refuse_foreign_output(out)
    spaces = _spaces(cells or [5], channels or [8], input_shape, policy, coverage or (modeled and not (cells or channels)), stem)
    if modeled:
        if out is None:
            _refuse_replacing_measurements(t.lut_path)
        lut = build_modeled_lut(t, spaces)
        path = lut.save(out or t.lut_path)
        console.print(f"[yellow]modeled[/] LUT of {t.name}: {len(lut.entries)} entries ({lut.costmodel['source']}) -> {path}")
        return
    from dcpnas.errors import ConfigError
    from dcpnas.targets.measure import build_lut
    from dcpnas.targets.profiler import Profiler

    if emulated and not rpc:
        raise ConfigError("--emulated describes an RPC device: give --rpc")
    if not emulated and t.arch == "aarch64" and rpc and rpc.split(":")[0] in ("127.0.0.1", "localhost"):
        console.print("[yellow]warning[/]: an aarch64 server on this host is an emulator; add --emulated")
    path = out or (Path(f"{t.name}.emulated.json") if emulated else _measured_lut_path(t, threads))
    prof = Profiler(t, rpc=rpc, key=key, direct=no_tracker, threads=threads, repeat=repeat, min_repeat_ms=min_repeat_ms, statistic=statistic)
    keys = keys_of(spaces)
    with rich_progress(not no_progress) as progress:
        lut = build_lut(t, keys, path, prof, resume=resume, method="emulated" if emulated else "measured",
                        progress=progress, refine=refine)
    console.print(f"[green]{lut.method}[/] LUT of {t.name} on {lut.device}, {lut.threads} threads: "
                  f"{len(lut.entries)} entries -> {path}")
    if lut.measurement:
        ms = lut.measurement
        console.print(f"stability: median IQR/median of the ops {ms.get('median_rel_iqr')}, reference kernel "
                      f"{ms.get('reference_key')} {ms.get('reference_ms')} ms (IQR/median per chunk up to "
                      f"{ms.get('reference_rel_iqr_max')}), {ms.get('retimed')} ops timed again")


def _refuse_foreign_output(out: Path | None) -> None:
    """ConfigError where --out names an existing file that is not a dcpnas LUT (a build would overwrite it)."""
    from dcpnas.errors import ConfigError, DcpnasError
    from dcpnas.targets.lut import LatencyTable

    if out is None or not Path(out).exists():
        return
    try:
        LatencyTable.load(out)
    except DcpnasError:
        raise ConfigError(f"{out} exists and is not a dcpnas LUT: choose another --out (nothing was written)") from None


def _refuse_replacing_measurements(path: Path) -> None:
    """ConfigError where `path` (the target's LUT, where `--modeled` writes by default) holds anything but a
    modeled LUT: a measured table, or a file that is no LUT at all, is not replaced by a model's figures."""
    from dcpnas.errors import ConfigError, DcpnasError
    from dcpnas.targets.lut import LatencyTable

    if not Path(path).exists():
        return
    try:
        method = LatencyTable.load(path).method
    except DcpnasError:
        method = None
    if method != "modeled":
        what = f"a {method} LUT" if method else "a file that is not a dcpnas LUT"
        raise ConfigError(f"{path} holds {what}; a modeled LUT would replace it: give -o FILE (nothing was written)")


def _measured_lut_path(t, threads: int | None) -> Path:
    """Where `lut build` writes by default: the target's LUT file, unless it holds another thread count
    than the build measures (--threads, else the target's): then the per-thread table beside it
    (Target.threads_lut_path), so that a build at another count never replaces the shipped table."""
    from dcpnas.errors import DcpnasError
    from dcpnas.targets.lut import LatencyTable

    threads = threads or t.threads
    if not t.lut_path.is_file():
        return t.lut_path
    try:
        held = LatencyTable.load(t.lut_path, expect_target=t.name).threads
    except DcpnasError:
        return t.lut_path  # build_lut refuses to replace what it cannot read (unless --no-resume)
    return t.lut_path if held == threads else t.threads_lut_path(threads)


@lut_app.command("show")
@handle_errors
def show_cmd(
    target: str = typer.Argument(..., help="Target name or target .toml file."),
    json_out: bool = typer.Option(False, "--json", help="Print the LUT as JSON."),
    top: int = typer.Option(25, "--top", help="Show the N slowest entries (0: all)."),
    filter_: Optional[str] = typer.Option(None, "--filter", help="Only keys containing this text."),
) -> None:
    """Show a target's LUT: method, device, threads, glue and the entries."""
    from dcpnas.targets import get_target

    require("--top", top, 0)

    lut = get_target(target).load_lut()
    entries = {k: v for k, v in lut.entries.items() if not filter_ or filter_ in k}
    if json_out:
        typer.echo(to_json({**lut.to_dict(), "entries": entries}, indent=2))
        return
    from rich.table import Table

    color = {"measured": "green", "modeled": "yellow", "emulated": "magenta"}[lut.method]
    console.print(f"LUT of [bold]{lut.target}[/]: [{color}]{lut.method}[/] on {lut.device}, {lut.threads} threads, "
                  f"TVM {lut.tvm_version}, {lut.created}, {len(lut.entries)} entries ({lut.path})")
    if lut.glue:
        console.print("glue: " + ", ".join(f"{k} {v}" for k, v in lut.glue.items()))
    if lut.method == "modeled":
        console.print("[yellow]modeled: from the cost model, not timed on the device[/]")
    rows = sorted(entries.items(), key=lambda kv: -kv[1]["mean_ms"])
    table = Table()
    for col in ("op", "cin", "cout", "h", "w", "stride", "ms", "std ms", "n"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for k, e in rows[: top or None]:
        table.add_row(*k.split("|"), f"{e['mean_ms']:.4f}", f"{e['std_ms']:.4f}", str(e["count"]))
    console.print(table)


@lut_app.command("check")
@handle_errors
def check_cmd(
    target: str = typer.Option(..., "--target", "-t", help="Target name or target .toml file."),
    n: int = typer.Option(20, "--n", help="Random genotypes to compile and time."),
    rpc: Optional[str] = typer.Option(None, "--rpc", help="HOST:PORT of a TVM RPC tracker."),
    key: Optional[str] = typer.Option(None, "--key", help="Device key on the tracker."),
    no_tracker: bool = typer.Option(False, "--no-tracker", help="--rpc is an RPC server itself, not a tracker."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Thread count \\[default: the LUT's; another is refused]."),
    fit_glue: bool = typer.Option(False, "--fit-glue", help="Fit the per-cell glue and save it into the LUT."),
    seed: int = typer.Option(0, "--seed"),
    cells: int = typer.Option(5, "--cells"), channels: int = typer.Option(8, "--channels"),
    input_shape: str = SHAPE, policy: str = POLICY, stem: str = STEM,
    statistic: str = STAT,
    repeat: int = typer.Option(15, "--repeat", help="Timing samples per genotype."),
    min_repeat_ms: float = typer.Option(20.0, "--min-repeat-ms", help="Length of one timing sample (ms)."),
    json_out: bool = typer.Option(False, "--json", help="Print {n, mape, spearman, ...} as JSON on stdout."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the full report (rows) to this JSON file."),
    build_dir: Optional[Path] = typer.Option(None, "--build-dir", help="Keep the compiled networks here (reused by a later check)."),
    no_progress: bool = typer.Option(False, "--no-progress", "-q", help="No progress bars."),
) -> None:
    """Compile N random genotypes end to end, time them, and compare with the LUT's predictions (MAPE, Spearman)."""
    from dcpnas.io import write_json
    from dcpnas.targets import get_target
    from dcpnas.config import MAX_CELLS, MAX_CHANNELS, MAX_SEED, MAX_THREADS
    from dcpnas.targets.check import check_lut
    from dcpnas.targets.profiler import Profiler

    require("--n", n, 1)
    require("--seed", seed, 0, MAX_SEED)
    writable_output("--build-dir", build_dir, folder=True)
    writable_output("--out", out, folder=False, schema="dcpnas.lutcheck/1")
    require("--threads", threads, 1, MAX_THREADS)
    require("--repeat", repeat, 1)
    require("--min-repeat-ms", min_repeat_ms, positive=True)
    require("--cells", cells, 1, MAX_CELLS)
    require("--channels", channels, 1, MAX_CHANNELS)
    lut = get_target(target).load_lut(threads)  # the table of that thread count where one is shipped
    if threads is not None:
        lut.check_threads(threads, "a check")
    t = get_target(target, threads=lut.threads)  # the LUT's thread count: predictions hold for it only
    space = _spaces([cells], [channels], input_shape, policy, False, stem)[0]
    prof = Profiler(t, rpc=rpc, key=key, direct=no_tracker, threads=lut.threads, repeat=repeat,
                    min_repeat_ms=min_repeat_ms, statistic=statistic)
    if lut.method == "measured" and lut.statistic != statistic:
        err_console.print(f"[yellow]warning[/]: the LUT holds {lut.statistic} figures, this check measures {statistic}")
    with rich_progress(not no_progress) as progress:
        report = check_lut(t, lut, space, n, prof, seed=seed, fit_glue=fit_glue, progress=progress, build_dir=build_dir)
    if fit_glue:
        lut.save()
    for k in ("spearman", "spearman_uncalibrated"):  # one genotype, or equal latencies: no rank correlation (JSON null)
        if not math.isfinite(report[k]):
            report[k] = None
    if out:
        write_json(out, {"schema": "dcpnas.lutcheck/1", **report})
    if json_out:
        typer.echo(to_json({k: v for k, v in report.items() if k != "rows"}))
        return
    console.print(f"{t.name} ({lut.method} LUT), {report['n']} genotypes, {report['threads']} threads: "
                  f"MAPE {report['mape']:.1f}%  Spearman "
                  f"{'n/a' if report['spearman'] is None else format(report['spearman'], '.3f')}  (without glue: MAPE "
                  f"{report['mape_raw']:.1f}%; glue {report['glue_per_cell_ms']:.4f} ms/cell"
                  + (f"; leave-one-out MAPE {report['mape_loo']:.1f}%" if report["mape_loo"] is not None else "") + ")")
    hs = report["host_speed"]
    if hs:
        console.print(f"timed beside the LUT's reference kernel ({hs['reference_key']}): the host ran {hs['median']:.2f}x "
                      f"the LUT build's time (range {hs['min']:.2f}-{hs['max']:.2f}x); uncalibrated MAPE "
                      f"{report['mape_uncalibrated']:.1f}%, Spearman "
                      + ("n/a" if report["spearman_uncalibrated"] is None else f"{report['spearman_uncalibrated']:.3f}"))

"""`dcpnas search`: the hardware-aware DCP-NAS search (METHOD.md sections 3-6)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcpnas.cli.common import Resumable, console, err_console, handle_errors, rich_progress
from dcpnas.io import to_json


def register(app: typer.Typer) -> None:
    app.command("search")(search_cmd)


@handle_errors
def search_cmd(
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Target whose LUT gives the latency term: a name (x86-avx512, arm-a72, ...) or a target .toml file."),
    latency_ms: Optional[float] = typer.Option(None, "--latency-ms", help="Target latency T in ms (default: the initial supernet's expected latency)."),
    latency_form: Optional[str] = typer.Option(None, "--latency-form", help="add: L + g (E[LAT]-T)/T;  mul: L (E[LAT]/T)^b."),
    lam: Optional[float] = typer.Option(None, "--lambda", help="Weight of the tangent-propagation term D (0 = off; paper 5e-3)."),
    mu: Optional[float] = typer.Option(None, "--mu", help="Weight of the reconstruction loss L_R (paper 0.2)."),
    no_decoupled: bool = typer.Option(False, "--no-decoupled", help="Plain first-order alpha updates (no psi backtracking)."),
    curvature: Optional[str] = typer.Option(None, "--curvature", help="exact | ggn | fisher."),
    mode: Optional[str] = typer.Option(None, "--mode", help="dcp | cp (lambda 0) | direct (real-valued DARTS) | random."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    data: Optional[str] = typer.Option(None, "--data", help="embedded | fashion-mnist:DIR | cifar10:DIR | imagefolder:DIR"),
    budget: Optional[str] = typer.Option(None, "--budget", help="Preset: default (2-core CPU, < 10 min) | smoke | paper."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file of SearchConfig keys (top level or a \\[search] table); flags win."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) | cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="PyTorch CPU threads (0 = torch default)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Output folder (default runs/<name>/)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default <mode>-<target>-seed<seed>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in the output folder."),
    no_progress: bool = typer.Option(False, "--no-progress", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print the genotype.json content on stdout."),
    pareto: int = typer.Option(0, "--pareto", help="Run N searches at latency targets from the default down to half of it; "
                               "write pareto.json and pareto.png (accuracy vs latency, Pareto front)."),
) -> None:
    """Search a 1-bit cell architecture; writes genotype.json, metrics.jsonl, config.toml, PNGs, checkpoints."""
    from dcpnas.config import SearchConfig
    from dcpnas.distributed import init_from_env
    from dcpnas.search import run_search

    overrides = {
        "target": target, "latency_ms": latency_ms,
        "latency_form": latency_form, "lam": lam, "mu": mu, "decoupled": False if no_decoupled else None,
        "curvature": curvature, "mode": mode, "epochs": epochs, "seed": seed, "data": data, "budget": budget,
        "device": device, "threads": threads, "name": name,
    }
    cfg = SearchConfig.load(config, overrides)
    dist = init_from_env(cfg.device)
    out_dir = out or Path("runs") / cfg.run_name
    show = dist.is_main and not no_progress and not as_json
    lut_note = None
    if cfg.target and dist.is_main:
        from dcpnas.targets import get_target

        t = get_target(cfg.target)
        lut = t.load_lut()
        method = getattr(lut, "method", "?")
        lut_note = f"target {t.name}: LUT {method}" + (f" on {lut.device}" if getattr(lut, "device", None) else "")
        if method != "measured":
            err_console.print(f"[yellow]note:[/yellow] the {t.name} LUT is [bold]{method}[/bold], not measured on the "
                              f"device: expected latencies are estimates", highlight=False)
    if show:
        err_console.print(f"search {cfg.run_name}: mode {cfg.mode}, curvature {cfg.curvature}, lambda "
                          f"{cfg.effective_lambda:g}, mu {cfg.mu:g}, decoupled {cfg.decoupled}, {cfg.epochs} epochs, "
                          f"budget {cfg.budget} -> {out_dir}" + (f"; {lut_note}" if lut_note else ""), highlight=False)
    if pareto:
        from dcpnas.pareto import run_pareto

        try:
            with rich_progress(show) as progress:
                record = run_pareto(cfg, out_dir, pareto, progress=progress, resume=resume)
        except KeyboardInterrupt:
            raise Resumable(out_dir) from None
        if dist.is_main:
            if as_json:
                print(to_json(record, indent=2))
                return
            for r in record["runs"]:
                mark = "*" if r["run"] in record["front"] else " "
                console.print(f"{mark} run {r['run']}: target {r['latency_target_ms']:.3f} ms -> expected "
                              f"{r['expected_latency_ms']:.3f} ms, val accuracy {r['val_accuracy']:.3f}", highlight=False)
            console.print(f"* = Pareto front; wrote {out_dir / 'pareto.json'} and {out_dir / 'pareto.png'}", highlight=False)
        return
    try:
        with rich_progress(show) as progress:
            genotype = run_search(cfg, out_dir, progress=progress, resume=resume)
    except KeyboardInterrupt:
        raise Resumable(out_dir) from None
    if not dist.is_main:
        return
    if as_json:
        print(to_json(genotype.to_dict(), indent=2))
        return
    s = genotype.search
    diagnostics = s.get("diagnostics") or []
    if diagnostics:
        console.print("epoch  acc child parent  flipped  tangent  psi/opt P     C  entropy n     r", highlight=False)
        console.print("  (acc: fixed held-out set; flipped: Child binary weight signs; tangent: ||2 lambda H v|| / "
                      "||g_C||; psi/opt: backtrack / optimiser step; entropy of softmax(alpha) / uniform)",
                      highlight=False, style="dim")
    for d in diagnostics:
        console.print(f"{d['epoch'] + 1:>5}  {_fmt(d['child_val_acc'], '9.3f')} {_fmt(d['parent_val_acc'], '6.3f')}  "
                      f"{_fmt(d['sign_flip_fraction'], '7.4f')}  {_fmt(d['tangent_ratio'], '7.3f')}  "
                      f"{_fmt(d['psi_step_ratio_parent'], '9.3f')} {_fmt(d['psi_step_ratio_child'], '5.3f')}  "
                      f"{_fmt(d['entropy_normal'], '9.3f')} {_fmt(d['entropy_reduce'], '5.3f')}", highlight=False)
    lat = s.get("expected_latency_ms")
    console.print(f"[bold]genotype[/bold] {genotype.to_darts()}", highlight=False, soft_wrap=True)
    acc = s.get("val_accuracy")
    console.print(
        f"val accuracy {'-' if acc is None else f'{acc:.3f}'} ({'parent' if cfg.mode == 'direct' else 'child'}), "
        f"expected latency {'-' if lat is None else f'{lat:.3f} ms'}"
        + (f" ({s.get('lut_method')} LUT)" if lat is not None else "")
        + f", {s.get('time_s', 0):.0f} s wall, {s.get('cpu_s') or 0:.0f} s CPU -> {out_dir / 'genotype.json'}",
        highlight=False)


def _fmt(value, spec: str) -> str:
    """A number in `spec`, or '-' right-aligned to its width when the search did not measure it."""
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, spec)

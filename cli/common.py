"""What every command shares: error handling (DcpnasError -> one red line, exit 1) and Rich progress."""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)


def handle_errors(fn: Callable) -> Callable:
    """Turn DcpnasError (and Ctrl-C) into one line on stderr and exit code 1 (130 for Ctrl-C)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dcpnas.errors import DcpnasError

        try:
            return fn(*args, **kwargs)
        except DcpnasError as e:
            err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]: partial results were saved where the command supports --resume")
            raise typer.Exit(130) from None

    return wrapper


@contextlib.contextmanager
def rich_progress(enabled: bool = True) -> Iterator[Callable]:
    """Yield a ProgressFn (phase, done, total, **metrics) that draws one Rich bar per phase on stderr
    (so that --json output on stdout stays clean). Disabled, it does nothing."""
    if not enabled:
        yield lambda phase, done, total, **metrics: None
        return
    progress = Progress(
        TextColumn("[bold]{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
        console=Console(stderr=True),
        transient=False,
    )
    tasks: dict[str, int] = {}

    def update(phase: str, done: int, total: int, **metrics) -> None:
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total, metrics=text)
        progress.update(tasks[phase], completed=done, total=total, metrics=text)

    with progress:
        yield update

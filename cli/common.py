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
    """Turn DcpnasError into one line on stderr and exit code 1; Ctrl-C exits 130 (with the command that
    resumes, for a Resumable interrupt)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from dcpnas.errors import DcpnasError

        try:
            return fn(*args, **kwargs)
        except DcpnasError as e:
            from rich.markup import escape

            err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Resumable as e:
            from pathlib import Path

            out = Path(e.out_dir)  # train: checkpoint.pt; search: checkpoints/epoch_NNN.pt
            saved = (out / "checkpoint.pt").is_file() or any((out / "checkpoints").glob("epoch_*.pt"))
            what = (f": partial results are saved in {out}; resume with" if saved else
                    " before the first checkpoint (nothing to keep); start again with")
            err_console.print(f"[yellow]interrupted[/yellow]{what}:\n  {resume_command(e.out_dir)}",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


class Resumable(KeyboardInterrupt):
    """Ctrl-C in a command that can continue: handle_errors prints the exact command that resumes it."""

    def __init__(self, out_dir):
        super().__init__(str(out_dir))
        self.out_dir = out_dir


def resume_command(out_dir) -> str:
    """This process's command line with --resume (and -o out_dir when it was not given)."""
    import shlex
    import sys
    from pathlib import Path

    args = sys.argv[1:]
    if not any(a in ("-o", "--out") or a.startswith("--out=") for a in args):
        args += ["-o", str(out_dir)]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join([Path(sys.argv[0]).name or "dcpnas"] + args)


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
        if not tasks:  # started with the first bar: a command that fails before it prints its error line alone
            progress.start()
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total, metrics=text)
        progress.update(tasks[phase], completed=done, total=total, metrics=text)

    try:
        yield update
    except BaseException:  # a failed command leaves its error line, not half-drawn bars (nor a blank line in a log)
        progress.live.transient = True
        progress.console.quiet = not progress.console.is_terminal
        raise
    finally:
        if tasks:
            progress.stop()


def writable_output(flag: str, path, *, folder: bool, schema: str | None = None) -> None:
    """Refuse, before any work, an output that cannot be written: a folder where a file goes (or a file where
    a folder goes), a file in the way of its parent folder, or (with `schema`) an existing file of another kind
    that writing would destroy. None (an option not given) passes."""
    from pathlib import Path

    from dcpnas.errors import ConfigError

    if path is None:
        return
    path = Path(path)
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{flag} {path}: {blocker} is a file, not a folder (nothing was done)")
    if path.exists() and path.is_dir() != folder:
        raise ConfigError(f"{flag} {path} is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'}"
                          " (nothing was done)")
    if schema is not None and path.is_file():
        from dcpnas.errors import DcpnasError
        from dcpnas.io import read_json

        try:
            read_json(path, schema=schema)
        except DcpnasError:
            raise ConfigError(f"{flag} {path} exists and is not a {schema} file: choose another (nothing was "
                              "written)") from None


def require(flag: str, value, lo=None, hi=None, *, positive: bool = False) -> None:
    """Refuse an option value outside [lo, hi] (or <= 0 with positive; NaN and inf always) with one
    ConfigError line naming the flag. None (an option not given) passes."""
    import math

    from dcpnas.errors import ConfigError

    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value}")
    if positive and not value > 0:
        raise ConfigError(f"{flag} must be > 0, got {value}")
    if (lo is not None and not value >= lo) or (hi is not None and not value <= hi):
        bound = f"in {lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
        raise ConfigError(f"{flag} must be {bound}, got {value}")

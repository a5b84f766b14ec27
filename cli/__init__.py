"""The `dcpnas` command line: a Typer app with one module per command.

Each command module defines `register(app)`; heavy libraries (torch, tvm, onnx) are imported
inside the command functions so that `dcpnas --help` stays fast.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="dcpnas",
    help="Hardware-aware DCP-NAS for 1-bit CNNs: search, train, compile (ONNX + TVM), bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

COMMANDS = ("search", "train", "compile", "bench", "report", "targets", "lut", "tune")

for _name in COMMANDS:
    importlib.import_module(f"dcpnas.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> int:
    """The `dcpnas` console entry point. A usage error (unknown command or option, a missing argument, a
    value of the wrong type) is one line on stderr and exit 1, like every other user error; the help of
    a bare `dcpnas` goes to stdout, exit 0."""
    import sys

    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        rc = app(args=argv, prog_name="dcpnas", standalone_mode=False)
    except usage_error as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `dcpnas`: its help was asked for, in effect
            print(e.format_message())
            return 0
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        print(f"error: {' '.join(e.format_message().split())}{where}", file=sys.stderr)
        return 1
    except typer.Abort:  # end of input at a prompt (Ctrl-C inside a command: cli.common.handle_errors, 130)
        print("error: aborted", file=sys.stderr)
        return 1
    return rc if isinstance(rc, int) else 0

"""The `dcpnas` command line: a Typer app with one module per command.

Each command module defines `register(app)`; heavy libraries (torch, tvm, onnx) are imported
inside the command functions so that `dcpnas --help` stays fast.
"""

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


def main() -> None:  # pragma: no cover - console entry point
    app()

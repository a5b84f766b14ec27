"""`dcpnas targets`: the built-in targets and the state of their latency tables."""

from __future__ import annotations

from typing import Optional

import typer

from dcpnas.cli.common import console, handle_errors
from dcpnas.io import to_json


def register(app: typer.Typer) -> None:
    app.command("targets")(targets_cmd)


@handle_errors
def targets_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the table as JSON on stdout."),
    extra: Optional[list[str]] = typer.Option(None, "--target", "-t", help="Also show this target .toml file (repeatable)."),
) -> None:
    """List targets: name, arch, threads, RPC key and LUT state (measured on what device, when, entries / modeled / missing)."""
    from dcpnas.targets import describe, get_target, list_targets

    targets = list_targets() + [get_target(p) for p in (extra or [])]
    rows = [describe(t) for t in targets]
    if json_out:
        typer.echo(to_json(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="dcpnas targets")
    for col in ("target", "arch", "threads", "rpc key", "LUT", "entries", "date"):
        table.add_column(col, no_wrap=True)
    style = {"measured": "green", "modeled": "yellow", "emulated": "magenta", "missing": "red", "invalid": "red"}
    notes = []
    for r in rows:
        state = r["lut"]
        table.add_row(r["target"], r["arch"], str(r["threads"]), r["rpc_key"], f"[{style.get(state, 'white')}]{state}[/]",
                      str(r["lut_entries"]), (r.get("lut_created") or "")[:10])
        if state in ("measured", "emulated"):
            counts = r.get("lut_thread_counts") or [r["lut_threads"]]
            notes.append(f"{r['target']}: {state} on {r['lut_device']}, {r['lut_threads']} thread(s)"
                         + (f"; tables for {', '.join(map(str, counts))} threads" if len(counts) > 1 else ""))
            if r["threads"] not in counts:
                notes.append(f"[yellow]{r['target']}: the LUT holds {r['lut_threads']}-thread figures, the target runs "
                             f"{r['threads']} threads: `dcpnas lut check` runs at the LUT's count, `dcpnas bench` "
                             f"shows no LUT column at another[/]")
        elif state == "invalid":
            notes.append(f"{r['target']}: [red]{r['lut_error']}[/]")
    console.print(table)
    for line in notes:
        console.print(line)
    if any(r["lut"] == "modeled" for r in rows):
        console.print("[yellow]modeled[/] LUTs come from a cost model, not from timings on the device; "
                      "measure with `dcpnas lut build --target T [--rpc HOST:PORT --key KEY]`.")

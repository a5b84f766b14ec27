"""`dcpnas tune`: refresh the binary conv tuning records of a target (best register tile per conv shape)."""

from __future__ import annotations

from typing import Optional

import typer

from dcpnas.cli.common import console, handle_errors, rich_progress, writable_output

# the benchmark's convs (benchmarks/kernels.py): (kernel, H, C) with C_in = C_out = C, stride 1, same padding
DEFAULT_SHAPES = [(k, h, c) for k in (3, 1) for h, c in ((56, 64), (28, 128), (14, 256), (7, 512))]


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)


@handle_errors
def tune_cmd(
    target: str = typer.Option("x86-avx512", "--target", "-t", help="Target name (dcpnas targets) or target TOML file; x86 only (measured here)."),
    shape: Optional[list[str]] = typer.Option(None, "--shape", help="K,H,C (kernel, size, channels); repeatable. Default: the benchmark's 8 convs."),
    records_dir: Optional[str] = typer.Option(None, "--records-dir", help="Where to write <family>-<mcpu>.json (default: the package's compiler/records)."),
    no_progress: bool = typer.Option(False, "--no-progress", "-q", help="No progress bars."),
) -> None:
    """Time every valid register tile of the hand-scheduled binary conv (each checked bit-exact first) and save the best per shape."""
    from pathlib import Path

    from dcpnas.compiler.kernels import BinaryConvAttrs
    from dcpnas.compiler.kernels.binary_conv import ConvGeometry
    from dcpnas.compiler.kernels.tuning import RECORDS_DIR, save_records, tunable, tune_conv, workload_key
    from dcpnas.errors import ConfigError
    from dcpnas.targets import get_target

    writable_output("--records-dir", records_dir, folder=True)

    tgt = get_target(target)
    shapes = DEFAULT_SHAPES
    if shape:
        try:
            shapes = [tuple(int(v) for v in s.split(",")) for s in shape]
        except ValueError:
            shapes = []
        if len(shapes) != len(shape) or not all(len(s) == 3 and 1 <= s[0] <= s[1] <= 4096 and 1 <= s[2] <= 4096
                                                and s[0] % 2 for s in shapes):
            raise ConfigError(f"--shape takes K,H,C (odd kernel K <= size H <= 4096, 1 <= channels C <= 4096), "
                              f"got {', '.join(shape)}")
    entries = {}
    with rich_progress(not no_progress) as progress:
        for k, h, c in shapes:
            attrs = BinaryConvAttrs((k, k), (1, 1), (k // 2,) * 4, (1, 1), 1, c)
            geo = ConvGeometry(1, c, h, h, c, attrs)
            if not tunable(geo, tgt.tvm):
                console.print(f"{workload_key(geo)}: skipped (a pixels-in-lanes kernel serves this conv: no tile to tune)")
                continue
            rec = tune_conv(geo, tgt.tvm, progress)
            entries[workload_key(geo)] = rec
            console.print(f"{workload_key(geo)}: tile {rec['tile']} {rec['ms']:.4f} ms (default tile {rec['default_ms']:.4f} ms)")
    if not entries:
        console.print("nothing to tune: no records written")
        return
    path = save_records(tgt.tvm, entries, Path(records_dir) if records_dir else RECORDS_DIR)
    console.print(f"wrote {path}")

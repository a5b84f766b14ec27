"""Tuning records for the CPU binary conv: the best register tile per conv shape, measured on this machine.

meta-schedule (TVM 0.27) did not help here: on the conv PrimFunc all 16 candidates of a first round failed
to build and a round took ~7 minutes on 2 cores, so tuning is a small exhaustive search over the hand
schedule's knobs instead (form, vector width fv, vectors per tile fn, pixels per tile xt), each candidate
checked bit-exact against the numpy reference before it is timed.

Records: compiler/records/<family>-<mcpu>.json, {"schema": "dcpnas.kernel_records/1", "target", "tvm_version",
"entries": {"<workload key>": {"tile": [form, fv, fn, xt], "ms", "default_ms"}}}. CI never tunes; it reads
the committed records (or uses the default tile where a shape has none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from dcpnas.errors import ArtifactError, CompileError, TargetError
from dcpnas.io import read_json, write_json

from .binary_conv import ConvGeometry
from .records import (RECORDS_DIR, SCHEMA, load_records, lookup_tile, records_path,  # noqa: F401
                      save_records, workload_key)
from .targets import as_target, cpu_params, family

def candidate_tiles(geo: ConvGeometry, target: Any) -> list[tuple]:
    """Valid tiles for this conv on this CPU (register budget respected)."""
    cpu = cpu_params(target)
    ow = geo.out_hw[1]
    out = []
    for fv in sorted({cpu.lanes, max(4, cpu.lanes // 2)}):
        if geo.cog % fv:
            continue
        for fn in (1, 2, 4):
            if (geo.cog // fv) % fn:
                continue
            for xt in range(1, min(ow, cpu.max_xt) + 1):
                if ow % xt == 0 and xt * fn <= cpu.regs and xt * fn >= 4:
                    out.append(("channel", fv, fn, xt))
    return out


def tunable(geo: ConvGeometry, target: Any) -> bool:
    """False for the convs that the pixels-in-lanes kernels serve (pointwise.py, pixel_rows.py: no register tile
    to choose)."""
    from .emit import conv_output_shape

    return conv_output_shape(geo, target) != geo.out_shape  # CUDA: always the 5-d output, tunable


def tune_conv(geo: ConvGeometry, target: Any, progress: Callable | None = None, number: int = 50) -> dict:
    """Time every candidate tile (after a bit-exact check) -> {"tile", "ms", "default_ms"} for the best."""
    from .build import BinaryConvModule
    from .reference import binary_conv2d_reference, pack_weights
    from .schedule_cpu import conv_tile

    if family(target) == "cuda" or as_target(target).attrs.get("mtriple", "").startswith("aarch64"):
        raise TargetError("dcpnas tune measures on this machine: only x86 targets can be tuned here")
    if not tunable(geo, target):
        raise CompileError(f"{workload_key(geo)}: this conv runs a pixels-in-lanes kernel (pointwise kernel or "
                           f"pixel rows), which has no register tile to tune")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((geo.n, geo.c_in, geo.h, geo.w)).astype(np.float32)
    wb = pack_weights(rng.standard_normal((geo.c_out, geo.cg) + geo.attrs.kernel_shape))
    ones, zeros = np.ones(geo.c_out, np.float32), np.zeros(geo.c_out, np.float32)
    ref = binary_conv2d_reference(x, wb, ones, zeros, geo.attrs)
    default = tuple(conv_tile(geo, cpu_params(target)))
    cands = candidate_tiles(geo, target)
    if default not in cands:
        cands.append(default)
    timed = {}
    for i, tile in enumerate(cands):
        m = BinaryConvModule(x.shape, wb, ones, zeros, geo.attrs, target, records={workload_key(geo): {"tile": list(tile)}})
        if not np.array_equal(m.run(x), ref):
            raise CompileError(f"tile {tile} gives a wrong result for {workload_key(geo)} (a schedule bug: nothing "
                               f"was saved; please report it with this line)")
        timed[tile] = m.time_ms(x, number=number)["binconv"]
        if progress:
            progress("tiles", i + 1, len(cands), ms=timed[tile])
    best = min(timed, key=timed.get)
    return {"tile": list(best), "ms": timed[best], "default_ms": timed[default]}



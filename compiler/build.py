"""Build: ONNX -> Relax (onnx_import) -> tvm.compile for a target -> deployable library. The whole
`dcpnas compile` (genotype or .onnx -> build folder with parity) is pipeline.compile_genotype.

Public API (stable; used by `dcpnas compile`, `dcpnas bench`, `dcpnas lut build`):
    resolve_target(name | path | Target) -> Target
    build_model(onnx_path, target, out_dir, *, lib_name="model.so", progress=None) -> Path   (library)
    build_module_library(module, input_shape, target, out_dir) -> Path   (torch module -> library)
The library loads with tvm.runtime.load_module and runs with relax.VirtualMachine(lib, dev)["main"].
CUDA targets embed an nvcc-compiled fatbin, also on a host without a GPU (cuda_host.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcpnas.compiler.cuda_host import enable_cuda_fatbins
from dcpnas.errors import CompileError, DcpnasError, TargetError
from dcpnas.progress import ProgressFn, no_progress


def resolve_target(target: Any):
    """A dcpnas Target from a builtin name, a .toml path or a Target."""
    from dcpnas.targets import Target, get_target

    return target if isinstance(target, Target) else get_target(target)


def tvm_target(target):
    """The tvm.target.Target of a dcpnas Target (CUDA gets an x86 host)."""
    from dcpnas.compiler.kernels.targets import as_target

    return as_target(dict(target.tvm))


def unscheduled_funcs(mod) -> list[str]:
    """PrimFuncs of `mod` that would reach codegen without a schedule (after legalisation; reshapes
    that become runtime views are not counted)."""
    import tvm
    from tvm import relax

    seq = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.RewriteDataflowReshape(),
                                    relax.transform.DeadCodeElimination()])
    lowered = seq(mod)
    bad = []
    for gv, f in lowered.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc) and not (f.attrs and f.attrs.get("tir.is_scheduled", False)):
            bad.append(gv.name_hint)
    return sorted(bad)


def relax_pipeline(tt):
    """CPU: TVM's default build pipeline (no op fusion; every PrimFunc arrives scheduled).
    CUDA: the default CUDA pipeline without FuseOps/FuseTIR (which mis-fuse the importer's reshape views
    with its elementwise PrimFuncs in TVM 0.27); dlight schedules the float PrimFuncs."""
    import tvm

    if tt.kind.name != "cuda":
        return "default"
    from tvm import relax
    from tvm.relax.backend.cuda import pipeline as cp
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with tt:
            passes = cp.library_dispatch_passes(tt) + [
                relax.transform.LegalizeOps(),
                dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                        dl.gpu.GeneralReduction(), dl.gpu.Fallback()),
            ] + cp.dataflow_lower_passes(tt) + cp.finalize_passes(tt)
            return tvm.transform.Sequential(passes)(mod)
    return _pipeline


@dataclass
class Built:
    lib_path: Path
    imported: Any  # onnx_import.Imported
    import_s: float
    build_s: float


def build_onnx_model(model, target, lib_path: Path) -> Built:
    """Import an in-memory ONNX model and compile it for `target` into lib_path (export_library)."""
    import tvm

    from dcpnas.compiler.onnx_import import import_onnx

    t0 = time.perf_counter()
    imported = import_onnx(model, dict(target.tvm))
    t1 = time.perf_counter()
    if target.tvm.get("kind") != "cuda":
        bad = unscheduled_funcs(imported.mod)
        if bad:
            raise CompileError(f"internal: unscheduled PrimFuncs would be built: {', '.join(bad[:8])}")
    try:
        tt = tvm_target(target)
        if tt.kind.name == "cuda":
            enable_cuda_fatbins()
        with tt:  # nvcc reads the CUDA arch from the current target
            ex = tvm.compile(imported.mod, target=tt, relax_pipeline=relax_pipeline(tt))
    except DcpnasError:
        raise
    except Exception as e:  # TVM's own errors: keep one line
        raise CompileError(f"TVM build for {target.name} failed: {str(e).strip().splitlines()[-1][:300]}") from None
    from dcpnas.compiler.kernels.targets import export_library

    lib_path = Path(export_library(ex, lib_path, target.cross_compiler, target.name))
    return Built(lib_path, imported, t1 - t0, time.perf_counter() - t1)


def build_model(onnx_path, target, out_dir, *, lib_name: str = "model.so", progress: ProgressFn | None = None) -> Path:
    """Compile the ONNX file at onnx_path for `target` into out_dir/lib_name; returns the library path."""
    import onnx

    progress = progress or no_progress
    progress("build", 0, 1)
    model = onnx.load(str(onnx_path))
    path = build_onnx_model(model, resolve_target(target), Path(out_dir) / lib_name).lib_path
    progress("build", 1, 1)
    return path


def build_module_library(module, input_shape, target, out_dir) -> Path:
    """torch module (eval mode, dcpnas modules) -> out_dir/model.onnx -> out_dir/model.so (the LUT path)."""
    from dcpnas.compiler.export import build_onnx

    model = build_onnx(module, tuple(input_shape))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from dcpnas.io import atomic_write_bytes

    atomic_write_bytes(out_dir / "model.onnx", model.SerializeToString())
    return build_onnx_model(model, resolve_target(target), out_dir / "model.so").lib_path


def runs_here(target) -> tuple[bool, str]:
    """Whether TVM code for `target` can run on this machine (for parity), and why not."""
    kind = target.tvm.get("kind")
    if kind == "cuda":
        import tvm

        return (True, "") if tvm.cuda().exist else (False, "no CUDA GPU on this machine")
    if target.arch == "aarch64":
        from dcpnas.compiler.kernels.arm_emu import missing

        why = missing()
        return (True, "qemu") if why is None else (False, f"{target.name} needs qemu here: {why}")
    if target.arch != "x86_64":
        return False, f"{target.name} ({target.arch}) does not run on this host; run parity on the device"
    return True, ""


def tvm_runner(lib_path: Path, target, out_shape=None):
    """x [n, C, H, W] -> logits, running the exported library with the plain TVM runtime, one image at a time."""
    import tvm
    from tvm import relax

    if target.arch == "aarch64":  # emulated: the whole VM library under qemu-user (slow, numbers only)
        from dcpnas.compiler.arm_parity import run_under_qemu

        def run_qemu(x: np.ndarray) -> np.ndarray:
            y = run_under_qemu(Path(lib_path), x, n_out=-1)
            return y.reshape((len(x),) + tuple(out_shape[1:])) if out_shape is not None else y
        return run_qemu
    dev = tvm.cuda() if target.tvm.get("kind") == "cuda" else tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), dev)

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[i:i + 1]), dev)).numpy()
                               for i in range(len(x))])
    return run


__all__ = ["resolve_target", "build_model", "build_module_library", "build_onnx_model",
           "unscheduled_funcs", "runs_here", "tvm_runner", "TargetError"]

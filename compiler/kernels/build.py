"""Build one binary conv (pack + conv) as a standalone TVM module: run it, time it, export it.

The module has two functions: "binpack" (x[, in_scale, in_shift], P) and "binconv" (P, Wt, corr, ycls,
xcls, scale, bias[, slope], out: [N, G, Cog, OH, OW] or NCHW, emit.conv_output_shape). Used by the tests, benchmarks/kernels.py and the latency tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm

from .emit import conv_constants, conv_output_shape, kernel_funcs
from .shapes import geometry
from .reference import BinaryConvAttrs
from .targets import as_target


class BinaryConvModule:
    """A compiled binary conv for fixed shapes and weights.

    x_shape: (N, C_in, H, W); w_bits: schema uint8 weights; scale/bias/prelu: [C_out];
    in_affine: the pack kernel takes in_scale/in_shift [C_in] (the BatchNorm before the sign).
    records: tuned tiles (tuning.py); None: the target's committed records.
    mma: CUDA b1 tensor-core kernel "xor" | "and", "" for the popcount kernels; None: the compiler's rule.
    """

    def __init__(self, x_shape, w_bits, scale, bias, attrs: BinaryConvAttrs, target: Any, *, prelu=None,
                 in_affine: bool = False, schedule: bool = True, records: dict | None = None, mma: str | None = None):
        self.geo = geometry(x_shape, w_bits, attrs, target, mma=mma)
        self.target = as_target(target)
        self.in_affine = in_affine
        pack_f, conv_f = kernel_funcs(self.geo, target, affine=in_affine, prelu=prelu is not None, schedule=schedule,
                                      records=records)
        self.ir_module = tvm.IRModule({"binpack": pack_f.with_attr("global_symbol", "binpack"),
                                       "binconv": conv_f.with_attr("global_symbol", "binconv")})
        self.consts = conv_constants(self.geo, w_bits, scale, bias, prelu)
        # the conv's output array: the scheduled kernel's (NCHW for the pixels-in-lanes ones), else the TE's
        self.conv_out_shape = conv_output_shape(self.geo, target) if schedule else self.geo.out5_shape
        with self.target:
            self.executable = tvm.compile(self.ir_module, target=self.target)
        self._rt = None

    def export(self, path, cross_compiler: str | None = None) -> str:
        """Write the compiled module as a shared library (for `remote.upload` over TVM RPC, or qemu);
        cross_compiler: e.g. "aarch64-linux-gnu-gcc" for an aarch64 target. Returns the path."""
        from .targets import export_library

        return export_library(self.executable, path, cross_compiler, "one kernel")

    def runtime(self):
        """The module loaded in this process (CPU targets of this machine only)."""
        if self._rt is None:
            self._rt = self.executable.jit()
        return self._rt

    def arrays(self, x: np.ndarray, in_scale=None, in_shift=None) -> dict[str, list[np.ndarray]]:
        """numpy arguments of binpack and binconv (outputs zero-filled), for any runner."""
        geo = self.geo
        pack = [np.ascontiguousarray(x, np.float32)]
        if self.in_affine:
            pack += [np.asarray(in_scale, np.float32).reshape(-1), np.asarray(in_shift, np.float32).reshape(-1)]
        p = np.zeros(geo.packed_shape, geo.word_dtype)
        out = np.zeros(self.conv_out_shape, np.float32)
        return {"binpack": pack + [p], "binconv": [p] + self.consts + [out]}

    def run(self, x: np.ndarray, in_scale=None, in_shift=None) -> np.ndarray:
        """Run pack + conv on the local CPU: float32 NCHW in, float32 [N, C_out, OH, OW] out."""
        dev = tvm.cpu()
        rt = self.runtime()
        arrs = self.arrays(x, in_scale, in_shift)
        pack = [tvm.runtime.tensor(a, dev) for a in arrs["binpack"]]
        rt["binpack"](*pack)
        conv = [pack[-1]] + [tvm.runtime.tensor(a, dev) for a in arrs["binconv"][1:]]
        rt["binconv"](*conv)
        return conv[-1].numpy().reshape(self.geo.out_shape)

    def time_ms(self, x: np.ndarray, number: int = 50, repeat: int = 7, in_scale=None, in_shift=None,
                stat: str = "median") -> dict[str, float]:
        """Wall time (ms) per call of binpack and binconv on the local CPU: the median (or min, stat="min")
        over `repeat` runs of `number` calls."""
        dev = tvm.cpu()
        rt = self.runtime()
        arrs = self.arrays(x, in_scale, in_shift)
        pack = [tvm.runtime.tensor(a, dev) for a in arrs["binpack"]]
        conv = [pack[-1]] + [tvm.runtime.tensor(a, dev) for a in arrs["binconv"][1:]]
        rt["binpack"](*pack)
        out = {}
        for name, args in (("binpack", pack), ("binconv", conv)):
            ev = rt.time_evaluator(name, dev, number=number, repeat=repeat, min_repeat_ms=20)
            res = ev(*args).results
            out[name] = float(np.min(res) if stat == "min" else np.median(res)) * 1e3
        return out


def build_binary_conv(x_shape, c_out: int, attrs: BinaryConvAttrs, target: Any, *, prelu: bool = False,
                      in_affine: bool = False, seed: int = 0) -> BinaryConvModule:
    """A BinaryConvModule with random weights/scale/bias (for timing: latency does not depend on the values).
    x_shape: (N, C_in, H, W); use .time_ms(x) locally, or .export(path, cross_compiler) + .arrays(x) for RPC."""
    from .reference import pack_weights

    rng = np.random.default_rng(seed)
    kh, kw = attrs.kernel_shape
    wb = pack_weights(rng.standard_normal((c_out, attrs.channels_per_group, kh, kw)))
    scale = rng.uniform(0.5, 2.0, c_out).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    slope = rng.uniform(0.0, 0.3, c_out).astype(np.float32) if prelu else None
    return BinaryConvModule(x_shape, wb, scale, bias, attrs, target, prelu=slope, in_affine=in_affine)

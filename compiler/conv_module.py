"""One fp32 conv compiled exactly as the float TVM twin compiles it (float_schedule.conv2d_nchw, CPU targets),
for fixed shapes and weights: run and time it alone. benchmarks/kernels.py's `fp32_tvm` column and the tests
use it, so the kernel benchmark times the conv the float twin runs."""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm

from dcpnas.compiler import float_schedule as fs
from dcpnas.compiler.lowering import cpu_sched
from dcpnas.errors import CompileError


class FloatConvModule:
    """conv2d(x, w) + bias for x_shape [N, C, H, W], w [Co, C/group, kh, kw] (function "fconv").

    strides, pads (top, left, bottom, right), dilations, group: the conv's attributes; bias [Co] or None."""

    def __init__(self, x_shape, w: np.ndarray, bias, target: Any, *, strides=(1, 1), pads=(0, 0, 0, 0),
                 dilations=(1, 1), group: int = 1):
        cpu = cpu_sched(target)
        if cpu is None:
            raise CompileError("FloatConvModule: CPU targets only (the float twin schedules CUDA with dlight)")
        w = np.asarray(w, np.float32)
        co = w.shape[0]
        n, _, h, wd = (int(v) for v in x_shape)
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = w.shape[2:], strides, dilations, pads
        self.out_shape = (n, co, (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1)
        f = fs.conv2d_nchw(tuple(x_shape), w.shape, strides=tuple(strides), pads=tuple(pads),
                           dilations=tuple(dilations), group=group, name="fconv", cpu=cpu, bias=True)
        self.target = tvm.target.Target(target) if isinstance(target, dict) else target
        with self.target:
            self.executable = tvm.compile(tvm.IRModule({"fconv": f}), target=self.target)
        b = np.zeros(co, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(-1)
        self.consts = [w, np.ones(co, np.float32), b]  # weights, scale, bias
        self._rt = None

    def _args(self, x):
        dev = tvm.cpu()
        if self._rt is None:
            self._rt = self.executable.jit()
        return [tvm.runtime.tensor(np.ascontiguousarray(x, np.float32), dev)] + [
            tvm.runtime.tensor(c, dev) for c in self.consts] + [
            tvm.runtime.tensor(np.zeros(self.out_shape, np.float32), dev)]

    def run(self, x: np.ndarray) -> np.ndarray:
        args = self._args(x)
        self._rt["fconv"](*args)
        return args[-1].numpy()

    def time_ms(self, x: np.ndarray, number: int = 20, repeat: int = 7, stat: str = "median") -> float:
        """ms per call: median (or min, stat="min") over `repeat` runs of `number` calls."""
        args = self._args(x)
        ev = self._rt.time_evaluator("fconv", tvm.cpu(), number=number, repeat=repeat, min_repeat_ms=20)
        res = ev(*args).results
        return float(np.min(res) if stat == "min" else np.median(res)) * 1e3

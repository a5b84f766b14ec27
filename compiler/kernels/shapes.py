"""The static geometry of one binary conv, checked against the ONNX schema (word size and CUDA kernel
chosen per target), and per-channel vector arguments. Shared by emit.py, depthwise.py and build.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from dcpnas.errors import CompileError

from .binary_conv import ConvGeometry
from .bmma_cuda import choose_mma
from .reference import BinaryConvAttrs
from .targets import family, word_bits


def per_channel(v, n: int, name: str, default: float | None = None) -> np.ndarray:
    """v as float32 [n] (default everywhere when v is None and a default is given)."""
    if v is None:
        if default is None:
            raise CompileError(f"binary conv: {name} is required")
        return np.full(n, default, np.float32)
    v = np.asarray(v, np.float32).reshape(-1)
    if v.shape != (n,):
        raise CompileError(f"binary conv: {name} must have {n} values, got {v.size}")
    return v


def geometry(x_shape, w_bits: np.ndarray, attrs: BinaryConvAttrs, target: Any = None, mma: str | None = None
             ) -> ConvGeometry:
    """Validate shapes against the schema and return the conv geometry (word size and, on CUDA, the b1
    tensor-core kernel chosen for `target` by bmma_cuda.choose_mma unless `mma` says: "", "xor", "and";
    target None: 32-bit words, popcount kernels)."""
    if len(x_shape) != 4:
        raise CompileError(f"binary conv: input must be NCHW, got shape {tuple(x_shape)}")
    n, c, h, w = (int(s) for s in x_shape)
    if c != attrs.channels_in:
        raise CompileError(f"binary conv: input has {c} channels, channels_in is {attrs.channels_in}")
    w_bits = np.asarray(w_bits)
    cg = attrs.channels_per_group
    want = (-(-cg // 8),) + attrs.kernel_shape
    if w_bits.ndim != 4 or tuple(w_bits.shape[1:]) != want or w_bits.shape[0] % attrs.group:
        raise CompileError(f"binary conv: W must be uint8 [C_out, {want[0]}, {want[1]}, {want[2]}] with C_out a "
                           f"multiple of group {attrs.group}, got {tuple(w_bits.shape)}")
    co = int(w_bits.shape[0])
    bits = 32 if target is None else word_bits(target, co // attrs.group)
    geo = ConvGeometry(n, c, h, w, co, attrs, bits)
    geo.out_hw  # raises on too small inputs
    if mma is None:
        mma = "" if target is None or family(target) != "cuda" else choose_mma(geo, target)
    if mma not in ("", "xor", "and") or (mma and (geo.g != 1 or bits != 32)):
        raise CompileError(f"binary conv: the b1 MMA kernel takes mma 'xor' or 'and' on dense convs, got {mma!r}")
    return replace(geo, mma=mma)

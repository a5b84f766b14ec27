"""Binary (XNOR-popcount) conv kernels for TVM 0.27: numpy references, TE compute, per-target schedules.

Public API (used by the compiler's ONNX importer, the latency tables and benchmarks/kernels.py):
BinaryConvAttrs, pack_weights, unpack_weights, binary_conv2d_reference, emit_binary_conv2d,
BinaryConvModule / build_binary_conv (build, run, time, export one conv), kernel_funcs (scheduled PrimFuncs), family (target family).
"""

from .build import BinaryConvModule, build_binary_conv
from .emit import conv_constants, emit_binary_conv2d, kernel_funcs
from .shapes import geometry
from .reference import BinaryConvAttrs, binary_conv2d_reference, pack_weights, unpack_weights
from .targets import family

__all__ = ["BinaryConvAttrs", "BinaryConvModule", "binary_conv2d_reference", "build_binary_conv", "conv_constants", "emit_binary_conv2d",
           "family", "geometry", "kernel_funcs", "pack_weights", "unpack_weights"]

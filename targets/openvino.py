"""OpenVINO as a peer runtime on x86: the float network, and the 1-bit network through a frontend
conversion extension that maps `dcpnas::BinaryConv2d` to OpenVINO's own binary kernels.

    ext = binary_conv_extension()                 # ONNX frontend ConversionExtension
    c = compile_onnx(onnx_bytes, threads=2)       # float or 1-bit (dcpnas domain) model.onnx
    y = c.run(x)                                  # x (float32 NCHW) -> logits (numpy); c.kernels

The conversion of Y = scale * sum_valid_taps sign(X) * sign(W) + bias (DESIGN.md schema), as
found on OpenVINO 2026.4's CPU plugin (tests/test_openvino.py checks each case against ONNX Runtime):
  - group 1, C_in a multiple of 8: opset1 BinaryConvolution (xnor-popcount) on the float input,
    which the plugin binarises itself as x > 0 (x is shifted by the smallest normal float so that
    sign(0) = +1), u1 weights packed LSB first with bit 1 = +1, pad_value +1; the padded taps then
    add sum(sign(W)) over the taps that fall outside, a constant per output position that is
    subtracted (the schema's zero padding). A FakeQuantize(levels=2) binarisation in front, as
    OpenVINO's docs show, gave wrong results here, and so did other channel counts;
  - otherwise (the depthwise convs: opset1 BinaryConvolution has no groups): a GroupConvolution of
    sign(x) as +-1 floats with +-1 float weights and zero padding: integer sums, exact in float32;
  - then the per-channel scale and bias.
A whole network is compiled with BinaryConvolution first and checked against ONNX Runtime; should
the plugin refuse or miscompute it, every binary conv runs as a float conv of +-1 values instead
and Compiled.kernels says so (a safety net: the networks of tests/test_openvino.py do not need it).
openvino is a dependency of the package but optional at runtime: OpenVINOMissing says how to get it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dcpnas.errors import CompileError, DcpnasError, DeviceError


class OpenVINOMissing(DcpnasError):
    """The openvino package is not importable."""


def available() -> str | None:
    """None when OpenVINO can be used here, else the reason (one line)."""
    try:
        import openvino  # noqa: F401
    except ImportError as e:
        return f"OpenVINO is not installed ({e}); `pip install openvino` (a dependency of dcpnas) to time it"
    return None


def _require():
    why = available()
    if why:
        raise OpenVINOMissing(why)
    import openvino as ov

    return ov


def unpack_signs(bits: np.ndarray, cin_g: int) -> np.ndarray:
    """W bits [C_out, ceil(C_in/g/8), kH, kW] (LSB first, 1 = -1) -> signs [C_out, C_in/g, kH, kW] as +-1 int8."""
    from dcpnas.compiler.export import unpack_sign_bits

    return unpack_sign_bits(bits, cin_g).astype(np.int8)


def border_correction(signs: np.ndarray, in_hw: tuple[int, int], strides, pads, dilations,
                      pad_value: float) -> np.ndarray:
    """[1, C_out, Ho, Wo]: pad_value * sum of sign(W) over the taps of each output that fall in the
    padding (what a conv padded with pad_value adds over one padded with zeros). Slow and obvious:
    a float conv of an indicator of the padded area."""
    import torch

    h, w = in_hw
    top, left, bottom, right = pads
    mask = torch.ones(1, signs.shape[1], h + top + bottom, w + left + right)
    mask[:, :, top:top + h, left:left + w] = 0.0
    y = torch.nn.functional.conv2d(mask, torch.from_numpy(signs.astype(np.float32)), stride=tuple(strides),
                                   dilation=tuple(dilations))
    return (pad_value * y).numpy().astype(np.float32)


def binary_conv(x, signs: np.ndarray, scale: np.ndarray, bias, in_hw, strides, pads, dilations, group: int,
                binary_kernels: bool = True):
    """OpenVINO nodes of Y = scale * sum_valid_taps sign(x) * signs + bias (see the module doc).
    x: an ov Output [N, C_in, H, W] (H, W = in_hw); signs: +-1 [C_out, C_in/group, kH, kW];
    pads [top, left, bottom, right]. Returns the ov node of Y."""
    import openvino as ov
    from openvino import opset1 as o1

    strides, dil, pads = list(strides), list(dilations), list(pads)
    cin_g = signs.shape[1]
    cin, k = cin_g * group, list(signs.shape[2:])
    begin, end = pads[:2], pads[2:]
    if group == 1 and binary_kernels and cin % 8 == 0:  # the plugin (2026.4) miscomputes other channel counts
        # an OpenVINO-owned buffer: a Tensor over a numpy array shares that array's memory, which
        # is freed when the array goes (Constant(t) keeps the Tensor's buffer, not the array)
        t = ov.Tensor(ov.Type.u1, ov.Shape(list(signs.shape)))
        t.data[:] = np.packbits((signs.reshape(-1) > 0).astype(np.uint8), bitorder="little")
        # the plugin binarises its float input itself as x > 0; sign(0) is +1 here: shift by the
        # smallest normal float32, which leaves every normal x unchanged (only denormals in
        # (-2^-126, 0) would differ, and the CPU flushes those to 0 anyway)
        xs = o1.add(x, o1.constant(np.float32(np.finfo(np.float32).tiny)))
        y = o1.binary_convolution(xs, ov.op.Constant(t), strides, begin, end, dil, "xnor-popcount", 1.0)
        if any(pads):
            y = o1.subtract(y, o1.constant(border_correction(signs, tuple(in_hw), strides, pads, dil, 1.0)))
    else:  # +-1 values in a float (group) conv with zero padding: integer sums, exact in float32
        cout = signs.shape[0]
        xb = o1.select(o1.greater_equal(x, o1.constant(np.float32(0))), o1.constant(np.float32(1)),
                       o1.constant(np.float32(-1)))
        wg = signs.astype(np.float32).reshape(group, cout // group, cin_g, *k)
        y = o1.group_convolution(xb, o1.constant(wg), strides, begin, end, dil)
    y = o1.multiply(y, o1.constant(np.asarray(scale, np.float32).reshape(1, -1, 1, 1)))
    if bias is not None:
        y = o1.add(y, o1.constant(np.asarray(bias, np.float32).reshape(1, -1, 1, 1)))
    return y


def _convert_binary_conv(ctx, binary_kernels: bool) -> list:
    def ints(name, default):
        return [int(v) for v in ctx.get_attribute(name)] if ctx.has_attribute(name) else list(default)

    x = ctx.get_input(0)
    consts = []
    for i in range(1, ctx.get_input_size()):
        node = ctx.get_input(i).get_node()
        if node.get_type_name() != "Constant":
            raise CompileError("dcpnas::BinaryConv2d: weights, scale and bias must be initializers for OpenVINO")
        consts.append(node.get_data())
    bits, scale = consts[0], consts[1].astype(np.float32)
    bias = consts[2].astype(np.float32) if len(consts) > 2 else None
    k = ints("kernel_shape", bits.shape[2:])
    strides, dil = ints("strides", (1, 1)), ints("dilations", (1, 1))
    pads = ints("pads", (0, 0, 0, 0))
    group = int(ctx.get_attribute("group")) if ctx.has_attribute("group") else 1
    cin = int(ctx.get_attribute("channels_in"))
    cin_g = cin // group
    signs = unpack_signs(bits, cin_g)
    if list(signs.shape[2:]) != k:
        raise CompileError(f"dcpnas::BinaryConv2d: weights of kernel {list(signs.shape[2:])}, attribute kernel_shape {k}")
    shape = x.get_partial_shape()
    if shape.is_dynamic:
        raise CompileError("dcpnas::BinaryConv2d in OpenVINO needs a static input shape")
    hw = (shape[2].get_length(), shape[3].get_length())
    y = binary_conv(x, signs, scale, bias, hw, strides, pads, dil, group, binary_kernels)
    return [y.output(0)]


def binary_conv_extension(binary_kernels: bool = True):
    """The ONNX frontend extension for dcpnas::BinaryConv2d (see module doc). binary_kernels=False:
    every binary conv as a float (group) conv of +-1 values (see `compile_onnx`)."""
    _require()
    from openvino.frontend.onnx import ConversionExtension

    return ConversionExtension("BinaryConv2d", "dcpnas", lambda ctx: _convert_binary_conv(ctx, binary_kernels))


def core(binary_kernels: bool = True):
    """An ov.Core with the dcpnas extension added."""
    ov = _require()
    c = ov.Core()
    c.add_extension(binary_conv_extension(binary_kernels))
    return c


def _one_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


@dataclass
class Compiled:
    """A compiled OpenVINO model: run(x) -> first output; kernels: how the binary convs run."""

    run: Callable[[np.ndarray], np.ndarray]
    compiled: object
    kernels: str

    @property
    def precision(self) -> str:
        t = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return t.to_string() if hasattr(t, "to_string") else str(t)


def _ort_reference(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def compile_onnx(onnx_model, threads: int, precision: str | None = "f32", rtol: float = 1e-3) -> Compiled:
    """Read (bytes, path or ModelProto) and compile an ONNX model for the CPU plugin with `threads`
    inference threads and the latency hint. precision: the plugin's inference precision (f32 keeps
    parity; None lets the plugin choose, bf16 on CPUs with AVX512-BF16 such as Zen 4).

    A 1-bit model gets BinaryConvolution for its dense binary convs, checked against ONNX Runtime
    (the model-local function) on one random input: max |diff| <= rtol * max |reference|. Where the
    CPU plugin refuses that graph or computes it wrong, every binary conv becomes a float conv of
    +-1 values instead (exact integer sums), and `kernels` says why."""
    import onnx

    _require()
    if isinstance(onnx_model, onnx.ModelProto):
        onnx_model = onnx_model.SerializeToString()
    elif not isinstance(onnx_model, (bytes, bytearray)):
        from pathlib import Path

        onnx_model = Path(onnx_model).read_bytes()
    cfg = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if precision:
        cfg["INFERENCE_PRECISION_HINT"] = precision
    why = ""
    for binary_kernels in (True, False):
        c = core(binary_kernels)
        try:
            model = c.read_model(bytes(onnx_model), b"")
        except Exception as e:
            raise DeviceError(f"OpenVINO cannot read the model: {_one_line(e)}") from None
        has_binary = any(op.get_type_name() == "BinaryConvolution" for op in model.get_ops())
        try:
            compiled = c.compile_model(model, "CPU", cfg)
        except Exception as e:
            if not has_binary:
                raise DeviceError(f"OpenVINO cannot compile the model: {_one_line(e)}") from None
            why = f"the CPU plugin refused BinaryConvolution here: {_one_line(e)}"
            continue
        req = compiled.create_infer_request()

        def run(x: np.ndarray, req=req) -> np.ndarray:
            return req.infer({0: x})[0]
        if has_binary:
            shape = [d.get_length() for d in model.inputs[0].get_partial_shape()]
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            ref = _ort_reference(bytes(onnx_model), x)
            err = float(np.abs(run(x) - ref).max())
            if err > rtol * float(np.abs(ref).max()):
                why = (f"the CPU plugin's BinaryConvolution graph disagreed with ONNX Runtime "
                       f"(max |diff| {err:.3g} of {float(np.abs(ref).max()):.3g})")
                continue
            kernels = "BinaryConvolution (dense) + float GroupConvolution of +-1 (depthwise)"
        elif why:
            kernels = f"float convs of +-1 values ({why})"
        else:
            kernels = "float network" if b"dcpnas" not in bytes(onnx_model) else "float convs of +-1 values"
        return Compiled(run, compiled, kernels)
    raise DeviceError(f"OpenVINO: {why}")


def kernel_types(compiled: Compiled) -> dict[str, int]:
    """{layer type:primitive type: count} of the compiled model's convs (e.g. 'BinaryConvolution:jit_avx512_u1')."""
    out: dict[str, int] = {}
    for op in compiled.compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        kind = str(rt["layerType"]) if "layerType" in rt else ""
        if kind in ("BinaryConvolution", "Convolution", "GroupConvolution"):
            key = f"{kind}:{rt['primitiveType'] if 'primitiveType' in rt else '?'}"
            out[key] = out.get(key, 0) + 1
    return out

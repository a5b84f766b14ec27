"""Three-way parity: PyTorch module vs ONNX Runtime vs TVM on real inputs.

Passing means identical top-1 on every input and max |a - b| <= rtol * max |reference logits| for
both ORT and TVM against the reference (PyTorch when a module is given, else ORT).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dcpnas.errors import ParityError

RTOL = 1e-4


def run_ort(onnx_bytes: bytes, x: np.ndarray, input_name: str = "input", threads: int = 2) -> np.ndarray:
    """Run an ONNX model (static batch) over every row of x [n, C, H, W]; -> [n, classes] float32."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    batch = sess.get_inputs()[0].shape[0]
    batch = batch if isinstance(batch, int) and batch > 0 else len(x)
    return np.concatenate([sess.run(None, {input_name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def run_torch(module, x: np.ndarray) -> np.ndarray:
    import torch

    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy().astype(np.float32)


def compare(reference: np.ndarray, others: dict[str, np.ndarray | None], rtol: float = RTOL) -> dict:
    """The parity block of manifest.json: {"n_inputs", "top1_agreement", "max_abs_diff_<k>",
    "rel_diff_<k>", "reference_max_abs", "rtol", "passed"} for every k in others (None = not run)."""
    ref = np.asarray(reference, np.float32)
    scale = float(np.abs(ref).max()) or 1.0
    top = ref.argmax(axis=1)
    out = {"n_inputs": int(len(ref)), "reference_max_abs": scale, "rtol": rtol}
    agree, passed = 1.0, True
    for k, y in others.items():
        if y is None:
            out[f"max_abs_diff_{k}"] = None
            out[f"rel_diff_{k}"] = None
            continue
        y = np.asarray(y, np.float32)
        if y.shape != ref.shape:
            raise ParityError(f"{k} output shape {y.shape} differs from the reference {ref.shape}")
        d = float(np.abs(y - ref).max())
        out[f"max_abs_diff_{k}"] = d
        out[f"rel_diff_{k}"] = d / scale
        a = float((y.argmax(axis=1) == top).mean())
        out[f"top1_agreement_{k}"] = a
        agree = min(agree, a)
        passed = passed and a == 1.0 and d <= rtol * scale
    out["top1_agreement"] = agree
    out["passed"] = passed
    return out


def check_parity(x: np.ndarray, *, torch_module=None, onnx_bytes: bytes | None = None,
                 tvm_fn: Callable[[np.ndarray], np.ndarray] | None = None, rtol: float = RTOL,
                 raise_on_fail: bool = True) -> dict:
    """x: float32 [n, C, H, W] (normalised, real data). tvm_fn maps x -> logits (None: not run here).
    Returns the parity block; raises ParityError when it fails and raise_on_fail."""
    ort_y = run_ort(onnx_bytes, x) if onnx_bytes is not None else None
    ref = run_torch(torch_module, x) if torch_module is not None else ort_y
    if ref is None:
        raise ParityError("parity needs a PyTorch module or an ONNX model as reference")
    tvm_y = tvm_fn(x) if tvm_fn is not None else None
    res = compare(ref, {"ort": ort_y if torch_module is not None else None, "tvm": tvm_y}, rtol)
    res["reference"] = "torch" if torch_module is not None else "ort"
    if torch_module is None:
        res["max_abs_diff_ort"] = 0.0
    if raise_on_fail and not res["passed"]:
        raise ParityError(
            f"outputs disagree on {res['n_inputs']} inputs: top-1 agreement {res['top1_agreement']:.3f}, "
            f"max |ORT - ref| {res['max_abs_diff_ort']}, max |TVM - ref| {res['max_abs_diff_tvm']} "
            f"(allowed {rtol:g} x {res['reference_max_abs']:.3g})")
    return res

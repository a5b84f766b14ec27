"""Three-way parity of a 1-bit network: PyTorch module vs ONNX Runtime vs TVM on real inputs.

A 1-bit network amplifies rounding: where a pre-sign value lies within a few ulps of its threshold, two
correct runtimes can take different signs, and the flip propagates to the logits. So the criterion is
not "max |logit diff| small" but "every disagreement is explained":

- Every binary conv is a probe: its input x is compared with a per-channel threshold t (export folds the
  BatchNorm before the sign into t, computed once: export.sign_threshold). PyTorch (folded_signs), the
  ONNX function (Sub, then x >= 0) and TVM (the pack kernel) compare the same float32 x with the same
  float32 t, so each runtime's sign decisions follow exactly from its own x, which is read back (ORT:
  extra graph outputs; TVM: the VM instrument reads the argument of each binary kernel; where a depthwise
  kernel packed its output for the next binary conv, the packed words: the decisions themselves).
- For each input, the runtime's decisions are compared with the reference's probe by probe in graph
  order. At the first probe that differs, every differing position must lie within EPS_REL x max |x|
  (of that probe's tensor, this input) of the threshold: a benign flip. The reference is then run again
  with those positions forced to the runtime's signs (so everything downstream sees what the runtime
  saw), and the walk continues. A differing position farther from the threshold is unexplained.
- When all signs agree, the logits must agree within RTOL x max |reference logits| (float rounding
  only: the popcounts themselves are exact integers, so any integer error shows up here).
- Passing: no unexplained input. Benign flips are counted per layer; top-1 agreement is reported.

EPS_REL: x comes out of float32 conv epilogues, adds, pools and concats whose summation order differs
per runtime; measured drift between runtimes at positions with agreeing signs is ~1e-7 of max |x|
(`max_float_drift_rel` in the report, the evidence on every build); 1e-5 leaves two orders of magnitude
of margin and still names any real bug (a wrong sign lies typically O(max |x|) from its threshold).
Without a PyTorch module (an .onnx input) ORT is the reference and flips cannot be replayed: an input is
then accepted when its first differing probe is benign (criterion "first-flip"). Where TVM only runs
emulated (qemu) its intermediates are not read back: logits within RTOL, top-1 equal (criterion "logits").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from dcpnas.errors import CompileError, ParityError

RTOL = 1e-4
EPS_REL = 1e-5
MAX_REPORTED = 5


@dataclass
class Probe:
    """A binary conv's sign decision: ONNX node `name`, the tensor x it binarises (`tensor`) and
    x * a + b >= 0 per channel (a = 1, b = -t for the export's threshold; a BN's affine otherwise)."""

    name: str
    tensor: str
    a: np.ndarray
    b: np.ndarray

    def value(self, x: np.ndarray) -> np.ndarray:
        """The pre-sign value, in float32 as the runtimes compute it ([N, C, H, W])."""
        sh = (1, -1, 1, 1)
        return np.asarray(x, np.float32) * self.a.reshape(sh) + self.b.reshape(sh)


def probes(model) -> list[Probe]:
    """The probes of an ONNX model, in graph (topological) order."""
    from onnx import numpy_helper

    from dcpnas.compiler.graph import bn_affine

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.domain != "dcpnas" or n.op_type != "BinaryConv2d":
            continue
        pre = producer.get(n.input[0])
        if pre is not None and pre.op_type == "Mul" and pre.input[1] in consts \
                and np.all(consts[pre.input[1]] > 0):  # the export's positive gain: no effect on signs
            below = producer.get(pre.input[0])
            pre = below if below is not None and below.op_type == "Sub" else pre
        if pre is not None and pre.op_type in ("Sub", "BatchNormalization") and all(
                i in consts for i in pre.input[1:] if i):
            a, b = bn_affine(consts, pre)
            out.append(Probe(n.name, pre.input[0], a, b))
        else:
            out.append(Probe(n.name, n.input[0], np.ones(1, np.float32), np.zeros(1, np.float32)))
    return out


@contextlib.contextmanager
def folded_signs(module, names: set[str]):
    """PyTorch eval with the export's folded thresholds: every ConvUnit with a binary conv binarises
    x >= t (export.sign_threshold) instead of sign(bn_in(x)). Yields a controller: `record` (probe name
    -> x of the last forward) and `force` (probe name -> bool mask of positions whose sign is flipped)."""
    import torch

    from dcpnas.binary import BinaryConv2d
    from dcpnas.compiler.export import sign_threshold
    from dcpnas.operations import ConvUnit

    class Control:
        record: dict[str, np.ndarray] = {}
        force: dict[str, np.ndarray] = {}

    ctl = Control()
    ctl.record, ctl.force = {}, {}
    handles, hooked = [], set()
    for path, m in module.named_modules():
        if not (isinstance(m, ConvUnit) and type(m.conv) is BinaryConv2d and m.conv.binary_act
                and m.conv.binary_weight):
            continue
        name = f"{path}.conv"
        t, neg, _gain = sign_threshold(m.bn_in)
        tt = torch.from_numpy(t).view(1, -1, 1, 1)
        s = torch.from_numpy(np.where(neg, -1.0, 1.0).astype(np.float32)).view(1, -1, 1, 1)

        def hook(_mod, inp, _out, name=name, tt=tt, s=s):
            x = inp[0]
            ctl.record[name] = x.detach().numpy().copy()
            d = x >= tt
            f = ctl.force.get(name)
            if f is not None:
                d = d ^ torch.from_numpy(f)
            return torch.where(d, 1.0, -1.0).to(x.dtype) * s
        handles.append(m.bn_in.register_forward_hook(hook))
        hooked.add(name)
    if hooked != set(names):
        for h in handles:
            h.remove()
        missing = sorted(set(names) - hooked)[:3] + sorted(hooked - set(names))[:3]
        raise ParityError(f"internal: the ONNX binary convs and the PyTorch module's do not match ({missing})")
    try:
        yield ctl
    finally:
        for h in handles:
            h.remove()


def ort_session(onnx_bytes: bytes, threads: int = 2, extra_outputs: list[str] = ()):
    """An ONNX Runtime runner for a model of static batch: x [n, C, H, W] -> [logits, *extra outputs]
    (each concatenated over x); extra_outputs name intermediate tensors to read back."""
    import onnx
    import onnxruntime as ort

    if extra_outputs:
        m = onnx.load_from_string(onnx_bytes)
        have = {o.name for o in m.graph.output}
        m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in dict.fromkeys(extra_outputs) if t not in have)
        onnx_bytes = m.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime's own error types (Fail, NotImplemented, InvalidGraph, ...) derive from Exception
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"ONNX Runtime (the parity reference) cannot run this model: {first}") from None
    inp = sess.get_inputs()[0]
    names = [sess.get_outputs()[0].name] + list(extra_outputs)

    def run(x: np.ndarray) -> list[np.ndarray]:
        batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else len(x)
        runs = [sess.run(names, {inp.name: x[i:i + batch]}) for i in range(0, len(x), batch)]
        return [np.concatenate([r[k] for r in runs]) for k in range(len(names))]
    return run


def run_ort(onnx_bytes: bytes, x: np.ndarray, threads: int = 2) -> np.ndarray:
    """Run an ONNX model (static batch) over every row of x [n, C, H, W]; -> [n, classes] float32."""
    return ort_session(onnx_bytes, threads)(x)[0]


def run_torch(module, x: np.ndarray) -> np.ndarray:
    import torch

    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy().astype(np.float32)


def tvm_probe_runner(lib_path, calls: list[tuple[str, str | None, int, tuple[int, int]]]):
    """x [1, C, H, W] -> (logits, {probe: x it binarised}) with the exported library on the local CPU.
    calls: (PrimFunc symbol, probe, parts, (r0, c0)) of the kernel that reads each binary conv's x first
    (its pack or +-1 kernel), with the number of its leading arguments that x is the channel
    concatenation of (a pack that reads a Concat's parts), and the offset of x in them (a pack that
    gathers a Slice [:, :, r0:, c0:] from its source), and probe None for every other call of those
    symbols, all in execution order: identical kernels share a symbol, so calls are matched in order
    (pipeline._probe_symbols)."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), dev)
    symbols = {c[0] for c in calls}
    ran: list[str] = []
    seen: dict[str, np.ndarray] = {}

    def instrument(_func, symbol, before, _ret, *args):
        if before and symbol in symbols:  # read now: the storage may be reused after this call
            i = len(ran)
            ran.append(symbol)
            if i < len(calls) and calls[i][0] == symbol and calls[i][1] is not None:
                k, (r0, c0) = calls[i][2:]
                seen[calls[i][1]] = np.concatenate([a.numpy() for a in args[:k]], axis=1)[:, :, r0:, c0:]
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)

    def run(x: np.ndarray):
        ran.clear()
        seen.clear()
        y = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x), dev)).numpy()
        if ran != [c[0] for c in calls]:
            raise ParityError(f"internal: TVM ran {len(ran)} calls of the binary convs' input kernels in an order "
                              f"the build does not list ({len(calls)} listed)")
        return y, dict(seen)
    return run


def decisions(p: Probe, x: np.ndarray, channels: int) -> np.ndarray:
    """A runtime's sign decisions x * a + b >= 0 at probe p ([N, C, H, W] bool): from the float x it read,
    or from packed words uint32 [N, ceil(C/32), H, W] (bit b of word q: channel 32q + b, set = negative)
    where the producer kernel signed and packed the tensor itself (depthwise_flat.py's packed epilogue)."""
    x = np.asarray(x)
    if x.dtype != np.uint32:
        return p.value(x) >= 0
    bits = (x[:, :, None] >> np.arange(32, dtype=np.uint32)[None, None, :, None, None]) & 1
    n, q, _, h, w = bits.shape
    return bits.reshape(n, q * 32, h, w)[:, :channels] == 0


def _first_difference(ps: list[Probe], xs_ref: dict, xs_run: dict, force: dict):
    """(probe, mask of differing decisions) at the first probe where the decisions differ, else None."""
    for p in ps:
        d_ref = p.value(xs_ref[p.name]) >= 0
        if p.name in force:
            d_ref = d_ref ^ force[p.name]
        diff = d_ref != decisions(p, xs_run[p.name], d_ref.shape[1])
        if diff.any():
            return p, diff
    return None


class _Tally:
    """What one runtime's comparison found, summed over inputs (the report block of that runtime)."""

    def __init__(self, ps: list[Probe]):
        self.flips = {p.name: 0 for p in ps}
        self.inputs_with_flips = 0
        self.max_margin_ratio = 0.0  # the largest |value| / eps among benign flips
        self.drift = 0.0  # max |x_run - x_ref| / max |x_ref| where all earlier signs agree
        self.diff_after = 0.0  # max |logits| difference once the flips are replayed
        self.unexplained: list[dict] = []
        self.n_unexplained = 0

    def fail(self, why: dict):
        self.n_unexplained += 1
        if len(self.unexplained) < MAX_REPORTED:
            self.unexplained.append(why)


def _explain(i: int, p_list: list[Probe], y_run, xs_run, ref: Callable | None, y_ref0, xs_ref0, tol: float,
             tally: _Tally) -> None:
    """Walk input i's sign decisions probe by probe (see the module docstring) and tally the result."""
    force: dict[str, np.ndarray] = {}
    y_ref, xs_ref = y_ref0, xs_ref0
    flipped = False
    for _ in range(len(p_list) + 1):
        first = _first_difference(p_list, xs_ref, xs_run, force)
        upto = p_list if first is None else p_list[:p_list.index(first[0]) + 1]
        for p in upto:
            if xs_run[p.name].dtype == np.uint32:  # packed by its producer: decisions only, no float to compare
                continue
            scale = float(np.abs(xs_ref[p.name]).max()) or 1.0
            tally.drift = max(tally.drift, float(np.abs(xs_run[p.name] - xs_ref[p.name]).max()) / scale)
        if first is None:
            d = float(np.abs(y_run - y_ref).max())
            tally.diff_after = max(tally.diff_after, d)
            if not d <= tol:  # NaN logits fail too
                tally.fail({"input": i, "layer": None, "why": f"all signs agree but logits differ by {d:.3g} "
                            f"(allowed {tol:.3g}): a float or integer error"})
            break
        p, diff = first
        v = p.value(xs_ref[p.name]).astype(np.float64)
        eps = EPS_REL * (float(np.abs(xs_ref[p.name]).max()) or 1.0)
        margin = float(np.abs(v[diff]).max())
        if not margin <= eps:  # a NaN pre-sign value is no benign flip
            tally.fail({"input": i, "layer": p.name, "positions": int(diff.sum()),
                        "why": f"{int(diff.sum())} sign(s) differ, up to {margin:.3g} from the threshold "
                               f"(benign only within {eps:.3g})"})
            break
        tally.flips[p.name] += int(diff.sum())
        tally.max_margin_ratio = max(tally.max_margin_ratio, margin / eps)
        flipped = True
        if ref is None:  # nothing can replay the flip: accept at the first benign flip
            break
        force[p.name] = force.get(p.name, np.zeros_like(diff)) ^ diff
        y_ref, xs_ref = ref(force)
    tally.inputs_with_flips += int(flipped)


def _block(t: _Tally, y, ref_y, top) -> dict:
    return {"top1_agreement": float((y.argmax(axis=1) == top).mean()),
            "max_abs_diff": float(np.abs(y - ref_y).max()),
            "max_abs_diff_after_flips": t.diff_after,
            "benign_flips": int(sum(t.flips.values())), "inputs_with_flips": t.inputs_with_flips,
            "flips_per_layer": {k: v for k, v in t.flips.items() if v},
            "max_flip_margin_over_eps": t.max_margin_ratio, "max_float_drift_rel": t.drift,
            "n_unexplained": t.n_unexplained, "unexplained": t.unexplained}


CHUNK = 16  # inputs per batched reference run at most (the probes of 16 images at 8x32: ~100 MB)
PROBE_BUDGET = 512 * 2**20  # bytes of one runtime's probe tensors held per chunk: a 14x48 network on 224x224
# inputs has ~1 GB of them per image, and 16 at once (three runtimes) ran a 23 GB machine out of memory


def chunk_size(probe_bytes_per_image: int) -> int:
    """Inputs per chunk: CHUNK, fewer where their probes would exceed PROBE_BUDGET (at least 1)."""
    return max(1, min(CHUNK, PROBE_BUDGET // max(1, int(probe_bytes_per_image))))


def check_parity(x: np.ndarray, *, torch_module=None, onnx_bytes: bytes | None = None, tvm_fn=None,
                 tvm_probe: Callable | None = None, rtol: float = RTOL, raise_on_fail: bool = True) -> dict:
    """x: float32 [n, C, H, W] (normalised, real data). onnx_bytes: the exported model (required).
    tvm_probe: x[1] -> (logits, {probe: x}) (tvm_probe_runner); tvm_fn: x -> logits, used instead when
    TVM's intermediates cannot be read (emulated targets); both None: TVM not run here.
    Returns the parity block of manifest.json; raises ParityError when it fails and raise_on_fail."""
    import onnx
    import torch

    if onnx_bytes is None:
        raise ParityError("parity needs the ONNX model")
    x = np.ascontiguousarray(x, np.float32)
    ps = probes(onnx.load_from_string(onnx_bytes))
    ort_run = ort_session(onnx_bytes, extra_outputs=[p.tensor for p in ps])
    traced = torch_module is not None
    with contextlib.ExitStack() as stack:
        if traced:
            torch_module.eval()
            ctl = stack.enter_context(folded_signs(torch_module, {p.name for p in ps}))

        def torch_run(xb, force):
            ctl.force = force
            with torch.no_grad():
                y = torch_module(torch.from_numpy(xb)).numpy().astype(np.float32)
            ctl.force = {}
            return y, dict(ctl.record)

        def split(y, xs: dict):
            return [(y[i:i + 1], {k: v[i:i + 1] for k, v in xs.items()}) for i in range(len(y))]

        first = ort_run(x[:1])
        step = chunk_size(sum(v.nbytes for v in first[1:]))
        del first

        def chunks():
            for c in range(0, len(x), step):
                yield c, x[c:c + step]

        # pass 1: the reference logits (the tolerance scales with the largest over all inputs)
        if traced:
            ref_y = np.concatenate([torch_run(xb, {})[0] for _, xb in chunks()])
        else:
            ref_y = np.concatenate([ort_run(xb)[0] for _, xb in chunks()])
        if not np.isfinite(ref_y).all():
            raise ParityError(f"the reference ({'PyTorch' if traced else 'ONNX Runtime'}) gives non-finite logits "
                              "(NaN or inf): the weights or the input hold non-finite values")
        tol = rtol * (float(np.abs(ref_y).max()) or 1.0)
        # pass 2: run ORT and TVM reading back their probes, explain every input, chunk by chunk
        ys = {"ort": [], "tvm": []}
        tallies = {k: _Tally(ps) for k in ("ort", "tvm")}
        for c, xb in chunks():
            o = ort_run(xb)
            ort_out = split(o[0], {p.name: v for p, v in zip(ps, o[1:])})
            ref = split(*torch_run(xb, {})) if traced else ort_out
            runs = {"ort": ort_out} if traced else {}
            if tvm_probe is not None:
                runs["tvm"] = [tvm_probe(xb[i:i + 1]) for i in range(len(xb))]
            for k, out in runs.items():
                ys[k].extend(r[0] for r in out)
                for i, (y, xs) in enumerate(out):
                    replay = (lambda f, j=c + i: torch_run(x[j:j + 1], f)) if traced else None
                    _explain(c + i, ps, y, xs, replay, ref[i][0], ref[i][1], tol, tallies[k])
        ys = {k: np.concatenate(v) if v else None for k, v in ys.items()}
    if tvm_probe is None and tvm_fn is not None:  # emulated: logits only
        y = ys["tvm"] = np.asarray(tvm_fn(x), np.float32)
        bad = ~(np.abs(y - ref_y).max(axis=1) <= tol)  # NaN logits fail too
        t = tallies["tvm"]
        t.n_unexplained = int(bad.sum())
        t.unexplained = [{"input": int(i), "layer": None, "why": "logits differ (TVM intermediates not read here)"}
                         for i in np.nonzero(bad)[0][:MAX_REPORTED]]
        t.diff_after = float(np.abs(y - ref_y).max())
    scale = float(np.abs(ref_y).max()) or 1.0
    top = ref_y.argmax(axis=1)
    out = {"n_inputs": int(len(x)), "reference": "torch" if traced else "ort", "reference_max_abs": scale,
           "rtol": rtol, "eps_rel": EPS_REL, "binary_layers": len(ps),
           "criterion": ("traced" if traced else "first-flip") + ("" if tvm_probe is not None or tvm_fn is None
                                                                  else " (TVM: logits)")}
    passed, agree = True, 1.0
    for k in ("ort", "tvm"):
        if ys[k] is None or (k == "ort" and not traced):
            out[f"max_abs_diff_{k}"] = 0.0 if k == "ort" else None
            continue
        b = out[k] = _block(tallies[k], ys[k], ref_y, top)
        out[f"max_abs_diff_{k}"] = b["max_abs_diff"]
        out[f"rel_diff_{k}"] = b["max_abs_diff"] / scale
        out[f"top1_agreement_{k}"] = b["top1_agreement"]
        out[f"benign_flips_{k}"] = b["benign_flips"]
        agree = min(agree, b["top1_agreement"])
        passed = passed and b["n_unexplained"] == 0
    out["top1_agreement"] = agree
    out["passed"] = passed
    if raise_on_fail and not passed:
        raise ParityError(failure_line(out))
    return out


def failure_line(p: dict) -> str:
    """One line naming the first unexplained mismatch of a failed parity block."""
    for k in ("ort", "tvm"):
        b = p.get(k)
        if b and b["n_unexplained"]:
            u = b["unexplained"][0]
            where = f" at {u['layer']}" if u.get("layer") else ""
            return (f"{k.upper()} disagrees with {p.get('reference', 'the reference')} on {b['n_unexplained']} of "
                    f"{p['n_inputs']} inputs; first: input {u['input']}{where}: {u['why']}")
    return "parity failed"

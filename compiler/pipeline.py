"""`dcpnas compile` as a library function: genotype (or dcpnas .onnx) -> build folder with parity."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from dcpnas.errors import ArtifactError, ConfigError, DataError, DcpnasError
from dcpnas.progress import ProgressFn, no_progress

PHASES = ("network", "export", "import+build", "parity")


@contextlib.contextmanager
def torch_threads(n: int):
    """Run torch with n intra-op threads, restoring the previous count (these nets are tiny: extra threads
    only contend, badly so on shared cores)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def calibrate_batchnorm(net, x, batches: int = 4, batch_size: int = 64) -> None:
    """Give fresh BatchNorm layers running statistics of real data: train-mode forward passes (no grad)
    with a cumulative average (momentum None), then eval mode. Weights are untouched."""
    from dcpnas.batchnorm import recalibrate_batchnorm

    recalibrate_batchnorm(net, (x[i * batch_size:(i + 1) * batch_size] for i in range(batches)))


def _weight_bytes(model) -> dict:
    """Bytes of the initializers: uint8 (packed binary weights) and float32 (everything else)."""
    out = {"binary": 0, "float": 0}
    for t in model.graph.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if t.data_type == 2:  # UINT8
            out["binary"] += n
        elif t.data_type == 1:  # FLOAT
            out["float"] += 4 * n
    return out


def _network(source: Path, weights, float_: bool, data: str, policy: str | None, cells, channels, input_shape=None,
             stem: str = "cifar"):
    """-> (module, space, genotype, normalization, dataset, weights label). input_shape (C, H, W): a
    fresh network for images no dataset has (BatchNorm calibrated on random normal images; dataset None).
    stem: of a fresh network (a trained model.pt fixes its own)."""
    import torch

    from dcpnas.data import load_dataset
    from dcpnas.genotype import load_genotype
    from dcpnas.model import Network
    from dcpnas.train import default_eval_space

    genotype = load_genotype(source)
    dataset = load_dataset(data)
    if weights is not None:
        from dcpnas.checkpoint import load_model

        net, meta = load_model(weights, genotype)
        space, norm = meta["space"], meta["normalization"]
        if float_ and net.binary:  # the float twin of the trained net: same float weights, real convs
            twin = Network(genotype, space, binary=False)
            sd = twin.state_dict()
            twin.load_state_dict({k: v for k, v in net.state_dict().items() if k in sd and sd[k].shape == v.shape},
                                 strict=False)
            net = twin.eval()
        label = str(weights)
    elif input_shape is not None and tuple(input_shape) != tuple(dataset.input_shape):
        space = default_eval_space(tuple(input_shape), dataset.num_classes, policy or "book", cells, channels,
                                   steps=genotype.steps, stem=stem)
        torch.manual_seed(0)
        net = Network(genotype, space, binary=not float_)
        with torch_threads(1):
            calibrate_batchnorm(net, torch.randn(32, *space.input_shape), batches=4, batch_size=8)
        return net.eval(), space, genotype, None, None, "fresh (BatchNorm calibrated on random normal images)"
    else:
        space = default_eval_space(dataset.input_shape, dataset.num_classes, policy or "book", cells, channels,
                                   steps=genotype.steps, stem=stem)
        torch.manual_seed(0)
        net = Network(genotype, space, binary=not float_)
        norm = dataset.normalization()
        x, _ = dataset.tensors("train", norm["mean"], norm["std"])
        with torch_threads(1):
            calibrate_batchnorm(net, x)
        label = "fresh"
    if tuple(space.input_shape) != tuple(dataset.input_shape):
        raise DataError(f"dataset {dataset.name} has images {dataset.input_shape}, the network expects "
                        f"{tuple(space.input_shape)}; pass --data with matching images")
    return net.eval(), space, genotype, norm, dataset, label


def build_name(source) -> str:
    """The build's name: the run folder of a genotype.json, else the input file's stem."""
    source = Path(source)
    parent = source.resolve().parent.name
    return parent if source.stem == "genotype" and parent else source.stem


def compile_genotype(source, target, out_dir=None, *, float_: bool = False, **kwargs):
    """Compile a genotype.json / DARTS-string file / dcpnas .onnx for `target` into out_dir
    (default build/<name>-<target>, <name>-float-<target> with float_). Fresh weights (BatchNorm
    calibrated on the training images) unless `weights` (model.pt). Parity (PyTorch vs ORT vs TVM on
    `parity_inputs` test images) is recorded in the manifest; with check, a failure raises ParityError.
    Returns the Artifact.

    The build is made in a temporary folder and swapped in at the end (compiler/artifact.StagedFolder):
    a failed or killed compile leaves an earlier build untouched. A build whose parity failed replaces
    only a folder without a passing build; otherwise it is kept beside it as <out>.parity-failed."""
    from dcpnas.compiler.artifact import Artifact, StagedFolder
    from dcpnas.compiler.build import resolve_target
    from dcpnas.errors import ParityError

    if out_dir is None:
        out_dir = Path("build") / f"{build_name(source)}{'-float' if float_ else ''}-{resolve_target(target).name}"
    with StagedFolder(out_dir) as stage:
        try:
            art = _compile_into(source, target, stage.path, float_=float_, **kwargs)
        except ParityError as e:
            dest = stage.out.with_name(stage.out.name + ".parity-failed") if stage.holds_good_build() else None
            tmp = str(stage.path)
            raise ParityError(str(e).replace(tmp, str(stage.commit(dest)))) from None
        where = stage.commit()
    return Artifact(where, art.manifest)


def _compile_into(source, target, out_dir, *, weights=None, float_: bool = False, data: str = "embedded",
                  parity_inputs: int = 16, policy: str | None = None, cells: int | None = None,
                  channels: int | None = None, progress: ProgressFn | None = None, check: bool = True,
                  input_shape: tuple[int, int, int] | None = None, stem: str = "cifar"):
    """compile_genotype's work, into the (temporary) folder out_dir."""
    import onnx
    import tvm

    from dcpnas.compiler.artifact import SCHEMA, Artifact, file_record
    from dcpnas.compiler.build import build_onnx_model, resolve_target, runs_here, tvm_runner
    from dcpnas.compiler.export import build_onnx
    from dcpnas.compiler.parity import check_parity, failure_line, tvm_probe_runner
    from dcpnas.io import atomic_write_bytes

    progress = progress or no_progress
    source = Path(source)
    tgt = resolve_target(target)
    times: dict[str, float] = {}
    is_onnx = source.suffix.lower() == ".onnx"
    name = build_name(source)
    out = Path(out_dir)
    progress("network", 0, 1)
    t0 = time.perf_counter()
    net = space = genotype = norm = dataset = None
    if is_onnx:
        if weights is not None or float_:
            raise ConfigError("--weights and --float apply to a genotype input, not to an .onnx file")
        if not source.is_file():
            raise ArtifactError(f"{source}: file not found")
        try:
            model = onnx.load(str(source))
        except Exception as e:
            raise ArtifactError(f"{source}: not a readable ONNX file ({str(e).splitlines()[0][:200]})") from None
        label = "onnx"
        binary = any(n.domain == "dcpnas" for n in model.graph.node)
    else:
        net, space, genotype, norm, dataset, label = _network(source, weights, float_, data, policy, cells, channels,
                                                                  None if weights is not None else input_shape, stem)
        binary = not float_
    times["network"] = time.perf_counter() - t0
    progress("network", 1, 1)
    progress("export", 0, 1)
    t0 = time.perf_counter()
    if not is_onnx:
        model = build_onnx(net, (1,) + tuple(space.input_shape))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.onnx", model.SerializeToString())
    times["export"] = time.perf_counter() - t0
    progress("export", 1, 1)
    progress("import+build", 0, 1)
    built = build_onnx_model(model, tgt, out / "model.so")
    times["import"], times["build"] = built.import_s, built.build_s
    progress("import+build", 1, 1)
    imp = built.imported
    progress("parity", 0, 1)
    t0 = time.perf_counter()
    x, inputs = _parity_inputs(dataset, norm, imp.input_shape, parity_inputs, data)
    ok, why = runs_here(tgt)
    probe = fn = None
    if ok and why != "qemu" and tgt.tvm.get("kind") != "cuda":
        probe = tvm_probe_runner(built.lib_path, _probe_symbols(imp.layers))
    elif ok:
        fn = tvm_runner(built.lib_path, tgt, imp.output_shape)
    with torch_threads(1):
        parity = check_parity(x, torch_module=net, onnx_bytes=model.SerializeToString(), tvm_fn=fn,
                              tvm_probe=probe, raise_on_fail=False)
    parity["inputs"] = inputs
    parity["tvm_run"] = ("ran under qemu-aarch64 (emulated)" if why == "qemu" else "ran") if ok else f"skipped: {why}"
    times["parity"] = time.perf_counter() - t0
    progress("parity", 1, 1)
    accuracy = None
    if weights is not None and dataset is not None:  # trained weights: top-1 of the compiled network, whole test split
        t0 = time.perf_counter()
        progress("accuracy", 0, 1)
        tvm_fn = tvm_runner(built.lib_path, tgt, imp.output_shape) if ok and why != "qemu" else None
        accuracy = compiled_accuracy(model.SerializeToString(), tvm_fn, dataset, norm)
        times["accuracy"] = time.perf_counter() - t0
        progress("accuracy", 1, 1)
    lat, lat_src = _expected_latency(tgt, genotype, space, binary)
    manifest = {
        "schema": SCHEMA, "name": name, "binary": binary,
        "target": {"name": tgt.name, "arch": tgt.arch, "tvm": dict(tgt.tvm), "threads": tgt.threads},
        "tvm_version": tvm.__version__,
        "genotype": genotype.digest() if genotype is not None else None,
        "space": space.to_dict() if space is not None else None,
        "weights": label,
        "input": {"name": imp.input_name, "shape": list(imp.input_shape)},
        "output": {"name": imp.output_name, "shape": list(imp.output_shape)},
        "normalization": norm,
        "files": {"onnx": file_record(out, "model.onnx"), "lib": file_record(out, "model.so")},
        "onnx_weight_bytes": _weight_bytes(model),
        "parity": parity,
        "accuracy": accuracy,
        "expected_latency_ms": lat, "expected_latency_source": lat_src,
        "compile_s": {k: round(v, 3) for k, v in times.items()},
        "layers": [vars(layer) for layer in imp.layers],
        "op_keys": _op_keys(genotype, space),
    }
    art = Artifact(out, manifest)
    art.save()
    if check and not parity["passed"]:
        from dcpnas.errors import ParityError

        raise ParityError(f"parity failed (manifest written to {out}): {failure_line(parity)}")
    return art


def _probe_symbols(layers) -> list[tuple[str, str | None, int, tuple[int, int]]]:
    """(PrimFunc symbol, binary conv node, input parts, input offset) of the kernel that reads each binary
    conv's input first, and (symbol, None, 0, (0, 0)) for every other call of one of those symbols (identical
    kernels share a symbol: a 1x1 conv that packs its own input may run the PrimFunc another layer uses as
    its separate pack's consumer), all in execution order (the layers' order, each layer's calls in order)."""
    probes = {lay.name: lay for lay in layers if lay.op == "BinaryConv2d" and lay.funcs}
    symbols = {lay.funcs[0]["name"] for lay in probes.values()}
    calls = []
    for lay in layers:
        for k, f in enumerate(lay.funcs):
            if k == 0 and lay.op == "BinaryConv2d" and probes.get(lay.name) is lay:
                calls.append((f["name"], lay.name, lay.input_parts, tuple(lay.input_offset)))
            elif f["name"] in symbols:
                calls.append((f["name"], None, 0, (0, 0)))
    return calls


def compiled_accuracy(onnx_bytes: bytes, tvm_fn, dataset, norm: dict) -> dict:
    """Top-1 accuracy in [0, 1] of the compiled network on the whole test split of `dataset`, run by
    ONNX Runtime and (tvm_fn given) by the TVM library: {"dataset", "split", "n", "ort", "tvm"}."""
    from dcpnas.compiler.parity import run_ort

    x, y = dataset.tensors("test", norm["mean"], norm["std"])
    x, y = x.numpy(), y.numpy()
    with torch_threads(1):
        ort_top1 = run_ort(onnx_bytes, x).argmax(1)
    tvm_top1 = tvm_fn(x).argmax(1) if tvm_fn is not None else None
    return {"dataset": dataset.name, "split": "test", "n": int(len(y)),
            "ort": float((ort_top1 == y).mean()),
            "tvm": None if tvm_top1 is None else float((tvm_top1 == y).mean())}


def _parity_inputs(dataset, norm, shape, n: int, data: str) -> tuple[np.ndarray, str]:
    """n normalised test images of `dataset` (or of load_dataset(data) when the shape matches)."""
    if dataset is None:
        from dcpnas.data import load_dataset

        try:
            dataset = load_dataset(data)
        except DcpnasError:
            dataset = None
        if dataset is not None and tuple(dataset.input_shape) == tuple(shape[1:]):
            norm = dataset.normalization()
        else:
            dataset = None
    if dataset is None:
        rng = np.random.default_rng(0)
        return rng.standard_normal((n,) + tuple(shape[1:])).astype(np.float32), "random normal (no matching dataset)"
    x, _ = dataset.tensors("test", norm["mean"], norm["std"])
    return x[:n].numpy().astype(np.float32), f"{dataset.name} test[:{n}]"


def _op_keys(genotype, space):
    """{layer group: OpKey} of a genotype build (dcpnas.latency.network_keys), None for an .onnx input."""
    if genotype is None or space is None:
        return None
    from dcpnas.latency import network_keys

    return network_keys(genotype, space)


def _expected_latency(tgt, genotype, space, binary: bool) -> tuple[Any, str]:
    if genotype is None or not binary:
        return None, "n/a (" + ("float network" if not binary else "no genotype") + ")"
    try:
        from dcpnas.latency import genotype_latency

        lut = tgt.load_lut()
        return round(genotype_latency(genotype, space, lut), 6), f"lut {tgt.name} ({getattr(lut, 'method', '?')}, {lut.threads} threads)"
    except DcpnasError as e:
        return None, f"unavailable: {e}"

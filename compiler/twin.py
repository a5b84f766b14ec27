"""The float twin of a 1-bit build and the plain kernel library of a build: what `dcpnas bench`
compares and times, made by the compiler (the same pipeline as the build itself).

    float_twin_onnx(model)                   1-bit ONNX -> the same network with float convs
    float_twin(art, target)                  the twin's library: a `dcpnas compile --float` sibling build
                                             when there is one, else derived and built into DIR/float-twin/
    kernels_library(model, target, path)     the build's PrimFuncs as a plain library, callable by name
                                             (per-layer timing over RPC)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcpnas.errors import DcpnasError
from dcpnas.progress import ProgressFn, no_progress

TWIN_SCHEMA = "dcpnas.float-twin/1"  # DIR/float-twin/twin.json: the twin's layers and what it was built from


def float_twin_onnx(model):
    """The float twin of a 1-bit ONNX model: dcpnas::BinaryConv2d(X, W bits, scale[, bias]) -> Conv with
    weights scale * sign(w) (and the bias) on the same real-valued X. Same graph, same node names, no
    custom domain. Where export folded BatchNorm + sign into a threshold (`Sub(x, t)`), the twin's conv
    sees x - t: a float network of the same shape and cost, not the BatchNorm'd values (a `dcpnas
    compile --float` sibling build, preferred by `float_twin`, has the real BatchNorms)."""
    import onnx
    from onnx import helper, numpy_helper

    from dcpnas.compiler.export import unpack_sign_bits

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    new_nodes = []
    for n in g.node:
        if n.domain != "dcpnas" or n.op_type != "BinaryConv2d":
            new_nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        bits = numpy_helper.to_array(inits[n.input[1]])
        scale = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32)
        cin_g = int(attrs["channels_in"]) // int(attrs.get("group", 1))
        w = unpack_sign_bits(bits, cin_g).astype(np.float32) * scale.reshape(-1, 1, 1, 1)
        wname = n.input[1] + "_float"
        g.initializer.append(numpy_helper.from_array(w, wname))
        ins = [n.input[0], wname] + ([n.input[3]] if len(n.input) > 3 and n.input[3] else [])
        keep = {k: v for k, v in attrs.items() if k in ("kernel_shape", "strides", "pads", "dilations", "group")}
        new_nodes.append(helper.make_node("Conv", ins, list(n.output), name=n.name, **keep))
    del g.node[:]
    g.node.extend(new_nodes)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del m.functions[:]
    opsets = [o for o in m.opset_import if o.domain != "dcpnas"]
    del m.opset_import[:]
    m.opset_import.extend(opsets)
    onnx.checker.check_model(m, full_check=True)
    return m


def float_twin(art, target, progress: ProgressFn = no_progress):
    """(lib path, layers, onnx bytes, source, folder) of the float twin of Artifact `art`."""
    from dcpnas.compiler.artifact import Artifact

    m = art.manifest
    sibling = art.path.parent / f"{m['name']}-float-{m['target']['name']}"
    if sibling.is_dir() and sibling != art.path:
        try:
            tw = Artifact.load(sibling)
            if not tw.manifest["binary"] and tw.manifest["input"]["shape"] == m["input"]["shape"]:
                return (tw.lib_path, tw.manifest["layers"], tw.onnx_path.read_bytes(), f"dcpnas compile --float ({sibling})",
                        sibling)
        except DcpnasError:
            pass
    import onnx

    from dcpnas.compiler.build import build_onnx_model

    import hashlib

    from dcpnas.io import read_json, write_json

    out = art.path / "float-twin"
    model = float_twin_onnx(onnx.load(str(art.onnx_path)))
    data = model.SerializeToString()
    digest = hashlib.sha256(data + target.name.encode()).hexdigest()
    src = f"derived from model.onnx (binary convs as float convs), built into {out}"
    try:  # built before from the same model.onnx for the same target: reuse it
        rec = read_json(out / "twin.json", schema=TWIN_SCHEMA)
        if rec.get("sha256") == digest and isinstance(rec.get("layers"), list) and (out / "model.so").is_file():
            return out / "model.so", rec["layers"], data, src, out
    except DcpnasError:
        pass
    progress("float twin", 0, 1)
    built = build_onnx_model(model, target, out / "model.so")
    layers = [vars(layer) for layer in built.imported.layers]
    write_json(out / "twin.json", {"schema": TWIN_SCHEMA, "sha256": digest, "layers": layers})
    progress("float twin", 1, 1)
    return built.lib_path, layers, data, src, out


def kernels_library(model, target, path: Path) -> Path:
    """A plain library of the network's PrimFuncs, callable by name (for per-layer timing over RPC,
    where the Relax executable's kernel library is not reachable by name). The PrimFuncs are those the
    importer emits for the build (same schedules, same target); cached at `path`, written atomically."""
    import tvm

    from dcpnas.compiler.build import tvm_target
    from dcpnas.compiler.onnx_import import import_onnx

    path = Path(path)
    if path.is_file():
        return path
    mod = import_onnx(model, dict(target.tvm), schedule=target.arch != "cuda").mod
    funcs = {gv.name_hint: f.with_attr("global_symbol", gv.name_hint)
             for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    ex = tvm.compile(tvm.IRModule(funcs), target=tvm_target(target))
    from dcpnas.compiler.kernels.targets import export_library

    export_library(ex, path, target.cross_compiler, target.name)
    return path

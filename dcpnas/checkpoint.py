"""model.pt: a trained evaluation network as plain data, loadable with torch.load(weights_only=True).

Layout (schema `dcpnas.model/1`):
    {"schema", "state_dict": {name: tensor}, "genotype": Genotype.to_dict(), "space": SearchSpace.to_dict(),
     "normalization": {"mean": [C floats], "std": [C floats]} (inputs are (x/255 - mean) / std),
     "binary": bool (1-bit network or its real-valued twin), "binary_weight": bool (False for a stage-1
     network: binary activations, real weights), "info": {...} (JSON-like: dataset, accuracy, epochs)}
Everything in it is a tensor, str, number, bool, list or dict, so no pickled code runs on load.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import torch

from dcpnas.binary import BinaryConv2d
from dcpnas.config import MAX_CELLS, MAX_CHANNELS
from dcpnas.errors import ArtifactError, ConfigError, GenotypeError
from dcpnas.genotype import Genotype
from dcpnas.io import atomic_write_bytes
from dcpnas.model import Network
from dcpnas.space import SearchSpace

SCHEMA = "dcpnas.model/1"


def binary_weight_state(model: torch.nn.Module) -> bool:
    """True when every BinaryConv2d of `model` binarises its weights (stage 2 / final); True if none."""
    flags = {m.binary_weight for m in model.modules() if isinstance(m, BinaryConv2d)}
    if len(flags) > 1:
        raise ConfigError("the network mixes real and binary weights; expected one stage for all BinaryConv2d")
    return flags.pop() if flags else True


def model_record(model: Network, normalization: dict, info: dict | None = None) -> dict:
    """The model.pt payload of `model` (tensors cloned to CPU)."""
    return {
        "schema": SCHEMA,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "genotype": model.genotype.to_dict(),
        "space": model.space.to_dict(),
        "normalization": {"mean": [float(v) for v in normalization["mean"]],
                          "std": [float(v) for v in normalization["std"]]},
        "binary": bool(model.binary),
        "binary_weight": binary_weight_state(model),
        "info": dict(info or {}),
    }


def save_torch(path: str | Path, obj) -> Path:
    """torch.save `obj` atomically (temp file + rename)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_torch(path: str | Path) -> dict:
    """torch.load(weights_only=True) of a dict, with ArtifactError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol is not news: the refusal below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, IndexError,
            KeyError, TypeError, struct.error, zipfile.BadZipFile) as e:  # foreign bytes raise any of these
        text = str(e).strip()
        if "Weights only load failed" in text:  # torch's advice to load it unsafely is not ours to give
            why = next((ln.split("WeightsUnpickler error:", 1)[1].strip() for ln in text.splitlines()
                        if "WeightsUnpickler error:" in ln), "")
            first = ("it holds Python objects besides tensors, which are not loaded (loading them could run code)"
                     + (f": {why[:160]}" if why else ""))
        else:
            first = text.splitlines()[0][:300] if text else type(e).__name__
        raise ArtifactError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def save_model(path: str | Path, model: Network, normalization: dict, info: dict | None = None) -> Path:
    """Write `model` (a Network) to `path` as model.pt (schema dcpnas.model/1), atomically."""
    return save_torch(path, model_record(model, normalization, info))


def _check_shapes(state_dict, genotype: Genotype, space: SearchSpace, binary: bool) -> None:
    """Raise ConfigError naming the first tensor whose name or shape does not fit the stored network
    config: built on the meta device, so a record that claims a huge network allocates nothing."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ConfigError("state_dict must map names to tensors")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Network(genotype, space, binary=binary).state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    extra = [k for k in state_dict if k not in expected]
    if missing or extra:
        raise ConfigError(f"weights do not fit the stored network config: {len(missing)} missing "
                          f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), {len(extra)} unexpected "
                          f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})")
    for k, shape in expected.items():
        if tuple(state_dict[k].shape) != shape:
            raise ConfigError(f"weights do not fit the stored network config: {k} has shape "
                              f"{list(state_dict[k].shape)} in the file, the network needs {list(shape)}")


def network_from_record(rec: dict, source: str, genotype: Genotype | None = None) -> tuple[Network, dict]:
    """Rebuild the Network of a model.pt record; see load_model."""
    if rec.get("schema") != SCHEMA:
        raise ArtifactError(f"{source}: expected schema {SCHEMA!r}, found {rec.get('schema')!r}")
    missing = [k for k in ("state_dict", "genotype", "space", "normalization", "binary") if k not in rec]
    if missing:
        raise ArtifactError(f"{source}: missing field(s) {', '.join(missing)}")
    try:
        saved = Genotype.from_dict(rec["genotype"], source=f"{source} genotype")
    except GenotypeError as e:
        raise ArtifactError(str(e)) from None
    if genotype is not None and saved.digest() != genotype.digest():
        raise ArtifactError(
            f"{source}: weights belong to genotype {saved.digest()}, not to the given genotype {genotype.digest()} "
            f"(train this genotype, or compile the genotype stored in the checkpoint)"
        )
    try:
        space = SearchSpace.from_dict(rec["space"])
        if space.channels > MAX_CHANNELS or space.cells > MAX_CELLS:
            raise ConfigError(f"{space.cells} cells x {space.channels} channels is beyond the limits "
                              f"({MAX_CELLS} x {MAX_CHANNELS})")
        _check_shapes(rec["state_dict"], saved, space, bool(rec["binary"]))  # before allocating anything
        net = Network(saved, space, binary=bool(rec["binary"]))
    except (ConfigError, GenotypeError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise ArtifactError(f"{source}: cannot rebuild the network ({e})") from None
    if not rec.get("binary_weight", True):
        for m in net.modules():
            if isinstance(m, BinaryConv2d):
                m.binary_weight = False  # stage-1 network; beta is restored from the state dict below
    normalization = _normalization(rec["normalization"], space.input_shape[0], source)
    info = rec.get("info", {})
    if not isinstance(info, dict):
        raise ArtifactError(f"{source}: info must be a dict, found {type(info).__name__}")
    bad = [k for k, v in rec["state_dict"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ArtifactError(f"{source}: {len(bad)} weight tensor(s) hold NaN or inf ({', '.join(bad[:3])}"
                            f"{', ...' if len(bad) > 3 else ''}): the training diverged or the file is damaged")
    try:
        net.load_state_dict(rec["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ArtifactError(f"{source}: weights do not fit the stored network config ({first})") from None
    meta = {
        "genotype": saved,
        "space": space,
        "normalization": normalization,
        "binary": bool(rec["binary"]),
        "binary_weight": bool(rec.get("binary_weight", True)),
        "info": dict(info),
    }
    return net, meta


def _normalization(norm, channels: int, source: str) -> dict:
    """The record's {"mean", "std"}: `channels` finite means and `channels` finite std > 0 each."""
    why = f"normalization must hold {channels} finite mean and {channels} finite std > 0 values"
    if not isinstance(norm, dict):
        raise ArtifactError(f"{source}: {why}")
    try:
        mean, std = ([float(v) for v in norm[k]] for k in ("mean", "std"))
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{source}: {why}") from None
    if (len(mean) != channels or len(std) != channels or not all(math.isfinite(v) for v in mean + std)
            or not all(v > 0 for v in std)):
        raise ArtifactError(f"{source}: {why}, found mean {mean[:4]}, std {std[:4]}")
    return {"mean": mean, "std": std}


def load_model(path: str | Path, genotype: Genotype | None = None) -> tuple[Network, dict]:
    """Load model.pt -> (Network in eval mode, meta).

    meta: {"genotype": Genotype, "space": SearchSpace, "normalization": {"mean", "std"}, "binary": bool,
    "binary_weight": bool, "info": dict}. With `genotype`, raise ArtifactError unless the checkpoint
    holds weights of that same architecture. Any malformed file raises ArtifactError naming the path.
    """
    rec = load_torch(path)
    net, meta = network_from_record(rec, str(path), genotype)
    net.eval()
    return net, meta


__all__ = ["SCHEMA", "save_model", "load_model", "model_record", "save_torch", "load_torch", "binary_weight_state"]

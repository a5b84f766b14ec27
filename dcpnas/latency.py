"""Latency positions of the search space and the expected latency of a supernet or genotype
(METHOD.md section 6; ProxylessNAS/FBNet form).

An op at one position of the network is named by an OpKey string "<op>|cin|cout|h|w|stride"
(DESIGN.md LUT schema), with h, w the op's *input* size. Binary ops under the `authors` policy carry
the suffix ":authors" on the op name (they lower to other kernels). The fixed part of the network is
named by the pseudo-ops `stem` (stride 1: the `cifar` stem; stride 8: the `imagenet` stem, h and w its input),
`pre_conv1x1`, `pre_reduce` (FactorizedReduce preprocessing) and `classifier`. `none` costs nothing and has no entry.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from dcpnas.genotype import Genotype
from dcpnas.model import cell_plan
from dcpnas.space import SearchSpace, edge_index

BINARY_OPS = {"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"}
FIXED_OPS = ("stem", "pre_conv1x1", "pre_reduce", "classifier")


class LatencyLookup(Protocol):
    def query(self, key: str) -> float:
        """Latency in ms of one OpKey; raises LutError naming a missing key."""


def op_key(op: str, cin: int, cout: int, h: int, w: int, stride: int, policy: str = "book") -> str:
    binary = op in BINARY_OPS or (op == "skip_connect" and stride == 2) or op in ("pre_conv1x1", "pre_reduce")
    name = f"{op}:{policy}" if binary and policy != "book" else op
    return f"{name}|{cin}|{cout}|{h}|{w}|{stride}"


def parse_key(key: str) -> tuple[str, str, int, int, int, int, int]:
    """'sep_conv_3x3:authors|8|8|28|28|1' -> (op, policy, cin, cout, h, w, stride); LutError when malformed."""
    from dcpnas.errors import LutError

    parts = key.split("|")
    if len(parts) != 6:
        raise LutError(f"bad OpKey {key!r}: expected '<op>|cin|cout|h|w|stride'")
    name, policy = (parts[0].split(":", 1) + ["book"])[:2]
    try:
        cin, cout, h, w, stride = (int(p) for p in parts[1:])
    except ValueError:
        raise LutError(f"bad OpKey {key!r}: cin, cout, h, w, stride must be integers") from None
    return name, policy, cin, cout, h, w, stride


def fixed_keys(space: SearchSpace) -> list[str]:
    """Keys of the stem, every preprocessing conv and the classifier, in network order."""
    plans = cell_plan(space)
    c_img, H, W = space.input_shape
    if space.stem == "imagenet":  # stride 8 in the key: the three stride-2 convs of model.ImageNetStem
        keys = [op_key("stem", c_img, space.channels, H, W, 8)]
    else:
        keys = [op_key("stem", c_img, space.stem_multiplier * space.channels, H, W, 1)]
    for p in plans:
        if p.reduction_prev:
            keys.append(op_key("pre_reduce", p.C_pp, p.C, 2 * p.H, 2 * p.W, 2, space.policy))
        else:
            keys.append(op_key("pre_conv1x1", p.C_pp, p.C, p.H, p.W, 1, space.policy))
        keys.append(op_key("pre_conv1x1", p.C_p, p.C, p.H, p.W, 1, space.policy))
    last = plans[-1]
    h_out, w_out = (last.H // 2, last.W // 2) if last.reduction else (last.H, last.W)
    keys.append(op_key("classifier", space.steps * last.C, space.num_classes, h_out, w_out, 1))
    return keys


def edge_keys(space: SearchSpace) -> list[list[list[str | None]]]:
    """keys[cell][edge][m]: the OpKey of candidate m on that edge (None for `none`)."""
    out = []
    for p in cell_plan(space):
        cell = []
        for i, _ in edge_index(space.steps):
            stride = 2 if p.reduction and i < 2 else 1
            h, w = (p.H, p.W) if stride == 2 or not p.reduction else (p.H // 2, p.W // 2)
            cell.append([None if op == "none" else op_key(op, p.C, p.C, h, w, stride, space.policy)
                         for op in space.primitives])
        out.append(cell)
    return out


def all_keys(space: SearchSpace) -> list[str]:
    """Every distinct OpKey the supernet of `space` can produce (what a LUT build must measure)."""
    keys = dict.fromkeys(fixed_keys(space))
    for cell in edge_keys(space):
        for edge in cell:
            keys.update(dict.fromkeys(k for k in edge if k is not None))
    return list(keys)


def fixed_latency(space: SearchSpace, table: LatencyLookup) -> float:
    return float(sum(table.query(k) for k in fixed_keys(space)))


def expected_latency(space: SearchSpace, table: LatencyLookup, alpha_normal: torch.Tensor,
                     alpha_reduce: torch.Tensor) -> torch.Tensor:
    """E[LAT] in ms, differentiable in the alphas: fixed + sum_cells sum_edges sum_m softmax(alpha)_m LUT[m]."""
    plans = cell_plan(space)
    keys = edge_keys(space)
    total = alpha_normal.new_tensor(fixed_latency(space, table))
    for p, cell in zip(plans, keys):
        probs = F.softmax(alpha_reduce if p.reduction else alpha_normal, dim=-1)
        lat = alpha_normal.new_tensor([[0.0 if k is None else table.query(k) for k in edge] for edge in cell])
        total = total + (probs * lat).sum()
    return total


def network_keys(genotype: Genotype, space: SearchSpace) -> dict[str, str | None]:
    """The OpKey of every op of the discrete network of `genotype` on `space`, by the network's layer
    group names (model.Network's module paths): 'stem', 'cells.i.pre0', 'cells.i.pre1', 'cells.i.ops.k'
    (k: the genotype's k-th edge of that cell; None for `none`) and 'classifier'. `dcpnas compile`
    records it in the manifest (`op_keys`), so `dcpnas bench` puts each layer beside its LUT entry."""
    fixed = fixed_keys(space)
    keys: dict[str, str | None] = {"stem": fixed[0]}
    index = {e: n for n, e in enumerate(edge_index(space.steps))}
    for c, (p, cell) in enumerate(zip(cell_plan(space), edge_keys(space))):
        keys[f"cells.{c}.pre0"], keys[f"cells.{c}.pre1"] = fixed[1 + 2 * c], fixed[2 + 2 * c]
        edges = genotype.reduce if p.reduction else genotype.normal
        for k, (op, i) in enumerate(edges):
            keys[f"cells.{c}.ops.{k}"] = cell[index[(i, k // 2 + 2)]][space.primitives.index(op)]
    keys["classifier"] = fixed[-1]
    return keys


def genotype_latency(genotype: Genotype, space: SearchSpace, table: LatencyLookup) -> float:
    """Predicted latency in ms of the discrete network of `genotype` built on `space`."""
    return float(sum(table.query(k) for k in network_keys(genotype, space).values() if k is not None))


def latency_loss(loss: torch.Tensor, lat: torch.Tensor, target_ms: float, form: str = "mul",
                 gamma: float = 0.1, beta: float = 0.6) -> torch.Tensor:
    """`add`: L + gamma * (E[LAT] - T) / T;  `mul`: L * (E[LAT] / T) ** beta."""
    if form == "add":
        return loss + gamma * (lat - target_ms) / target_ms
    if form == "mul":
        return loss * (lat / target_ms) ** beta
    from dcpnas.errors import ConfigError

    raise ConfigError(f"unknown latency form {form!r}; use 'add' or 'mul'")

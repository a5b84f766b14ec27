"""Supernet (search) and Network (evaluation) built from DARTS cells; one cell plan for both.

Supernet(space, binary=False) is the Parent, Supernet(space, binary=True) the Child: same topology,
same parameter names, so state can be copied between them. Network(genotype, space, binary) is the
discrete network a genotype describes. Stem and classifier are real-valued in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dcpnas.errors import ConfigError, GenotypeError
from dcpnas.genotype import Genotype
from dcpnas.operations import ConvUnit, FactorizedReduce, Zero, make_op
from dcpnas.space import SearchSpace, edge_index


@dataclass(frozen=True)
class CellPlan:
    """Shapes at one cell. H, W: spatial size of the cell's inputs (s1; s0 is 2x larger when
    reduction_prev). C: channels of each node; output has len(concat) * C channels."""

    index: int
    reduction: bool
    reduction_prev: bool
    C_pp: int
    C_p: int
    C: int
    H: int
    W: int


def cell_plan(space: SearchSpace, multiplier: int | None = None) -> list[CellPlan]:
    """Channel and spatial plan of every cell (DARTS channel rule: x2 at each reduction)."""
    multiplier = multiplier or space.steps
    H, W = space.input_shape[1], space.input_shape[2]
    if space.stem == "imagenet":  # s0 at 1/4, s1 at 1/8 of the input, both C channels (DARTS NetworkImageNet)
        C_stem, H, W, reduction_prev = space.channels, H // 8, W // 8, True
    else:
        C_stem, reduction_prev = space.stem_multiplier * space.channels, False
    C_pp, C_p, C = C_stem, C_stem, space.channels
    plans = []
    for i in range(space.cells):
        reduction = i in space.reductions
        if reduction:
            if H % 2 or W % 2:
                raise ConfigError(
                    f"cell {i} reduces a {H}x{W} feature map; reduction cells need even sizes "
                    f"(choose an input size divisible by "
                    f"{2 ** len(space.reductions) * (8 if space.stem == 'imagenet' else 1)})"
                )
            C *= 2
        plans.append(CellPlan(i, reduction, reduction_prev, C_pp, C_p, C, H, W))
        if reduction:
            H, W = (H + 1) // 2, (W + 1) // 2
        C_pp, C_p = C_p, multiplier * C
        reduction_prev = reduction
    return plans


def _preprocess(plan: CellPlan, binary: bool, policy: str, affine: bool) -> tuple[nn.Module, nn.Module]:
    real_act = policy == "authors"
    if plan.reduction_prev:
        pre0 = FactorizedReduce(plan.C_pp, plan.C, binary, policy, affine)
    else:
        pre0 = ConvUnit(plan.C_pp, plan.C, 1, binary=binary, real_act=real_act, affine=affine)
    pre1 = ConvUnit(plan.C_p, plan.C, 1, binary=binary, real_act=real_act, affine=affine)
    return pre0, pre1


class Stem(nn.Module):
    """Real-valued 3x3 conv + BN: [N, C_img, H, W] -> [N, stem_multiplier * C, H, W] (the `cifar` stem)."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        c_out = space.stem_multiplier * space.channels
        self.conv = nn.Conv2d(space.input_shape[0], c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return self.bn(self.conv(x))

    def states(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(s0, s1) of the first cell: the same tensor."""
        y = self(x)
        return y, y


class ImageNetStem(nn.Module):
    """DARTS' ImageNet stem, real-valued (the `imagenet` stem): stem0 = conv s2 (C/2) -> BN -> ReLU -> conv s2
    -> BN gives s0 [N, C, H/4, W/4]; stem1 = ReLU -> conv s2 -> BN gives s1 [N, C, H/8, W/8]. forward: s1."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        C, c_img = space.channels, space.input_shape[0]
        half = max(C // 2, 1)
        self.stem0 = nn.Sequential(
            nn.Conv2d(c_img, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))

    def forward(self, x):
        return self.states(x)[1]

    def states(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


def make_stem(space: SearchSpace) -> nn.Module:
    """The stem of `space.stem`; its states(x) gives the first cell's (s0, s1)."""
    return ImageNetStem(space) if space.stem == "imagenet" else Stem(space)


class Classifier(nn.Module):
    """Real-valued global average pool + linear: [N, C, H, W] -> logits [N, classes]."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(C, num_classes)

    def forward(self, x):
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


class MixedOp(nn.Module):
    """sum_m w_m * op_m(x) over the candidate ops of one edge. The `none` op's term w * 0 is left out
    (the same sum, and the same gradients: d/dw of w * 0 is 0) unless every op is `none`."""

    def __init__(self, C: int, stride: int, space: SearchSpace, binary: bool, affine: bool):
        super().__init__()
        self.ops = nn.ModuleList(make_op(p, C, stride, binary, space.policy, affine) for p in space.primitives)
        self.active = [m for m, op in enumerate(self.ops) if not isinstance(op, Zero)] or [0]

    def forward(self, x, weights):
        return sum(weights[m] * self.ops[m](x) for m in self.active)


class SearchCell(nn.Module):
    def __init__(self, plan: CellPlan, space: SearchSpace, binary: bool, affine: bool = False):
        super().__init__()
        self.reduction = plan.reduction
        self.steps = space.steps
        self.pre0, self.pre1 = _preprocess(plan, binary, space.policy, affine)
        self.edges = nn.ModuleList(
            MixedOp(plan.C, 2 if plan.reduction and i < 2 else 1, space, binary, affine)
            for i, _ in edge_index(space.steps)
        )

    def forward(self, s0, s1, weights):
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for j in range(self.steps):
            n = j + 2
            states.append(sum(self.edges[offset + i](h, weights[offset + i]) for i, h in enumerate(states)))
            offset += n
        return torch.cat(states[-self.steps:], dim=1)


class Supernet(nn.Module):
    """DARTS supernet. binary=False: the real-valued Parent; binary=True: the 1-bit Child.

    Architecture parameters alpha_normal, alpha_reduce: [edges, primitives] logits.
    forward(x, alphas=None): x [N, C_img, H, W] -> logits [N, classes]; `alphas` overrides the stored
    (alpha_normal, alpha_reduce), so that curvature estimators can differentiate through them functionally.
    """

    def __init__(self, space: SearchSpace, binary: bool):
        super().__init__()
        self.space, self.binary = space, binary
        self.stem = make_stem(space)
        plans = cell_plan(space)
        self.cells = nn.ModuleList(SearchCell(p, space, binary) for p in plans)
        self.classifier = Classifier(space.steps * plans[-1].C, space.num_classes)
        shape = (space.edges, len(space.primitives))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(shape))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(shape))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x, alphas=None):
        a_normal, a_reduce = alphas if alphas is not None else (self.alpha_normal, self.alpha_reduce)
        w_normal, w_reduce = F.softmax(a_normal, dim=-1), F.softmax(a_reduce, dim=-1)
        s0, s1 = self.stem.states(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(s1)

    def genotype(self) -> Genotype:
        return Genotype.from_alphas(self.alpha_normal, self.alpha_reduce, self.space.primitives, self.space.steps)


class EvalCell(nn.Module):
    def __init__(self, plan: CellPlan, genotype: Genotype, space: SearchSpace, binary: bool):
        super().__init__()
        self.reduction = plan.reduction
        edges = genotype.reduce if plan.reduction else genotype.normal
        self.concat = genotype.reduce_concat if plan.reduction else genotype.normal_concat
        self.pre0, self.pre1 = _preprocess(plan, binary, space.policy, affine=True)
        self.inputs = [i for _, i in edges]
        self.ops = nn.ModuleList(
            make_op(op, plan.C, 2 if plan.reduction and i < 2 else 1, binary, space.policy, affine=True)
            for op, i in edges
        )

    def forward(self, s0, s1):
        states = [self.pre0(s0), self.pre1(s1)]
        for j in range(len(self.ops) // 2):
            a, b = 2 * j, 2 * j + 1
            states.append(self.ops[a](states[self.inputs[a]]) + self.ops[b](states[self.inputs[b]]))
        return torch.cat([states[i] for i in self.concat], dim=1)


class Network(nn.Module):
    """The discrete network of a genotype: x [N, C_img, H, W] -> logits [N, classes].
    binary=True gives the 1-bit network (policy from `space`), False its real-valued twin."""

    def __init__(self, genotype: Genotype, space: SearchSpace, binary: bool):
        super().__init__()
        genotype.validate(space.primitives, space.steps)
        # the DARTS channel rule of cell_plan assumes every intermediate node is concatenated
        if len(genotype.normal_concat) != space.steps or len(genotype.reduce_concat) != space.steps:
            raise GenotypeError(f"concat lists must hold all {space.steps} intermediate nodes")
        self.genotype, self.space, self.binary = genotype, space, binary
        self.stem = make_stem(space)
        plans = cell_plan(space)
        self.cells = nn.ModuleList(EvalCell(p, genotype, space, binary) for p in plans)
        out_nodes = len(genotype.reduce_concat if plans[-1].reduction else genotype.normal_concat)
        self.classifier = Classifier(out_nodes * plans[-1].C, space.num_classes)

    def forward(self, x):
        s0, s1 = self.stem.states(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(s1)

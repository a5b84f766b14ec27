"""The DARTS cell search space (METHOD.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dcpnas.errors import ConfigError

PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
POLICIES: tuple[str, ...] = ("book", "authors")
# cifar: one 3x3 conv at the input resolution (the DARTS CIFAR network); imagenet: DARTS' ImageNet stem, three
# stride-2 3x3 convs, so that the cells work at 1/8 of the input (224x224 -> 28x28; the mobile setting)
STEMS: tuple[str, ...] = ("cifar", "imagenet")
STEPS = 4  # intermediate nodes per cell
MAX_SIDE = 4096  # input height and width at most (a 3 x 4096 x 4096 image is 200 MB of float32 already)


def num_edges(steps: int = STEPS) -> int:
    """Edges of a cell: node j (0-based among intermediates) has j + 2 inputs. 14 for 4 steps."""
    return sum(j + 2 for j in range(steps))


def edge_index(steps: int = STEPS) -> list[tuple[int, int]]:
    """(input node, output node) of every edge, in alpha-row order; nodes 0, 1 are the cell inputs."""
    return [(i, j + 2) for j in range(steps) for i in range(j + 2)]


@dataclass(frozen=True)
class SearchSpace:
    """Shape of a supernet or evaluation network built from cells.

    cells: number of cells; reduction cells (stride 2, channels x2) at cells//3 and 2*cells//3.
    channels: channels of the first cell's nodes (C); the stem outputs stem_multiplier * C.
    input_shape: (C, H, W) of one image; num_classes: logits.
    policy: binarisation policy, `book` (binarise depthwise and 1x1 convs too) or `authors`.
    stem: `cifar` (a 3x3 conv, cells at the input size) or `imagenet` (DARTS' stride-8 ImageNet stem, real-valued:
    conv s2 -> conv s2 gives the first cell's s0 at 1/4, conv s2 its s1 at 1/8; stem_multiplier unused).
    """

    primitives: tuple[str, ...] = PRIMITIVES
    steps: int = STEPS
    cells: int = 5
    channels: int = 8
    stem_multiplier: int = 3
    input_shape: tuple[int, int, int] = (1, 28, 28)
    num_classes: int = 10
    policy: str = "book"
    reductions: tuple[int, ...] = field(default=())
    stem: str = "cifar"

    def __post_init__(self) -> None:
        if self.cells < 1:
            raise ConfigError(f"cells must be >= 1, got {self.cells}")
        if self.channels < 1:
            raise ConfigError(f"channels must be >= 1, got {self.channels}")
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown binarisation policy {self.policy!r}; choose one of {', '.join(POLICIES)}")
        if len(self.input_shape) != 3:
            raise ConfigError(f"input_shape must be (C, H, W), got {self.input_shape}")
        if not self.reductions:
            red = sorted({self.cells // 3, 2 * self.cells // 3} - {0}) if self.cells >= 3 else []
            object.__setattr__(self, "reductions", tuple(red))
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        c, h, w = self.input_shape
        if not (1 <= c <= 64 and 1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise ConfigError(f"input_shape (C, H, W) must have 1..64 channels and sides of 1..{MAX_SIDE}, "
                              f"got {self.input_shape}")
        if not (1 <= self.steps <= 8 and 1 <= self.stem_multiplier <= 64 and 1 <= self.num_classes <= 100000):
            raise ConfigError(f"steps must be in 1..8, stem_multiplier in 1..64 and num_classes in 1..100000, got "
                              f"{self.steps}, {self.stem_multiplier}, {self.num_classes}")
        if any(not 0 <= r < self.cells for r in self.reductions):
            raise ConfigError(f"reductions must be cell indices in [0, {self.cells}), got {list(self.reductions)}")
        if self.stem not in STEMS:
            raise ConfigError(f"unknown stem {self.stem!r}; choose one of {', '.join(STEMS)}")
        if self.stem == "imagenet" and (self.input_shape[1] % 8 or self.input_shape[2] % 8):
            raise ConfigError(f"the imagenet stem downsamples by 8: the input's height and width must be multiples "
                              f"of 8, got {self.input_shape[1]}x{self.input_shape[2]}")
        object.__setattr__(self, "primitives", tuple(self.primitives))

    @property
    def edges(self) -> int:
        return num_edges(self.steps)

    def with_(self, **changes) -> "SearchSpace":
        """A copy with some fields changed (reductions recomputed unless given)."""
        if "cells" in changes and "reductions" not in changes:
            changes["reductions"] = ()
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = {
            "primitives": list(self.primitives),
            "steps": self.steps,
            "cells": self.cells,
            "channels": self.channels,
            "stem_multiplier": self.stem_multiplier,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "policy": self.policy,
            "reductions": list(self.reductions),
        }
        if self.stem != "cifar":  # records written before stems had a choice stay byte-identical
            d["stem"] = self.stem
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        try:
            return cls(
                primitives=tuple(d.get("primitives", PRIMITIVES)),
                steps=int(d.get("steps", STEPS)),
                cells=int(d["cells"]),
                channels=int(d["channels"]),
                stem_multiplier=int(d.get("stem_multiplier", 3)),
                input_shape=tuple(d["input_shape"]),
                num_classes=int(d["num_classes"]),
                policy=str(d.get("policy", "book")),
                reductions=tuple(d.get("reductions", ())),
                stem=str(d.get("stem", "cifar")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"bad search-space record: {e}") from None

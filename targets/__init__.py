"""Targets (declarative registry), latency lookup tables and profilers.

    from dcpnas.targets import get_target, list_targets, Target, LatencyTable
    t = get_target("x86-avx512")          # or a path to a user's target .toml
    lut = t.load_lut()                    # LatencyTable; lut.query("sep_conv_3x3|8|8|28|28|1") -> ms
"""

from dcpnas.targets.lut import LatencyTable
from dcpnas.targets.registry import Target, describe, get_target, list_targets, load_target_file

__all__ = ["Target", "LatencyTable", "get_target", "list_targets", "load_target_file", "describe",
           "build_modeled_lut", "coverage_spaces"]


def build_modeled_lut(target, spaces=None, coef=None):
    """See dcpnas.targets.modeled.build_modeled_lut (imported lazily: it pulls in torch)."""
    from dcpnas.targets.modeled import build_modeled_lut as _build

    return _build(target, spaces, coef)


def coverage_spaces(**kw):
    """See dcpnas.targets.modeled.coverage_spaces."""
    from dcpnas.targets.modeled import coverage_spaces as _cov

    return _cov(**kw)

"""Modeled LUTs: the cost model of targets/costmodel.py applied to every OpKey of a set of search spaces.

`coverage_spaces()` is the set the shipped modeled LUTs cover: SearchSpace() and its smaller and
larger variants (cells 3..8, channels 2..16, inputs 1x8x8 (smoke), 1x16x16 (the default search),
1x28x28, 1x32x32, 3x16x16, 3x32x32, both policies), so that a search on any of them finds every key.
"""

from __future__ import annotations

from typing import Iterable

from dcpnas.errors import ConfigError, DcpnasError, LutError
from dcpnas.latency import all_keys
from dcpnas.space import SearchSpace
from dcpnas.targets import costmodel
from dcpnas.targets.lut import LatencyTable, utc_now
from dcpnas.targets.registry import Target, get_target


SCALE_THREADS = 2  # the `scale` factors of the target files are ratios vs the reference on 2 threads
COVERAGE_INPUTS = ((1, 8, 8), (1, 16, 16), (1, 28, 28), (1, 32, 32), (3, 16, 16), (3, 32, 32))


def coverage_spaces(cells=range(3, 9), channels=range(2, 17), inputs=COVERAGE_INPUTS,
                    policies=("book", "authors")) -> list[SearchSpace]:
    """Search spaces whose keys a shipped LUT covers (combinations that are not valid are skipped)."""
    spaces = [SearchSpace()]
    for c in cells:
        for ch in channels:
            for inp in inputs:
                for pol in policies:
                    try:
                        spaces.append(SearchSpace(cells=c, channels=ch, input_shape=inp, policy=pol))
                    except ConfigError:
                        continue
    return spaces


def keys_of(spaces: Iterable[SearchSpace]) -> list[str]:
    """Distinct OpKeys of the supernets of `spaces`, first-seen order."""
    keys: dict[str, None] = {}
    for s in spaces:
        try:
            keys.update(dict.fromkeys(all_keys(s)))
        except DcpnasError:
            continue  # e.g. a reduction of an odd feature map: that space has no network
    return list(keys)


def model_coefficients(target: Target) -> tuple[dict[str, float], str]:
    """Cost-model coefficients (ns per unit) for `target` and where they come from.

    1. its own measured LUT, fitted; 2. its `reference` target's measured LUT, fitted, times the
    TOML's `scale` factors; 3. the TOML's `coef` table (or the x86 defaults) times `scale`."""
    cm = target.costmodel
    prior = {**costmodel.DEFAULT_COEF, **cm.get("coef", {})}
    for name, scale, why in ((target.name, {}, "fit on its measured LUT"),
                             (cm.get("reference"), cm.get("scale", {}), "fit on measured LUT of {ref}, scaled")):
        if not name:
            continue
        try:
            ref = get_target(name)
            lut = ref.load_lut()
        except DcpnasError:
            continue
        if lut.method != "measured":
            continue
        coef = dict(lut.costmodel.get("coef") or costmodel.fit({k: v["mean_ms"] for k, v in lut.entries.items()}, prior))
        if name != target.name and lut.threads != SCALE_THREADS:
            # the TOML's scale factors compare with the reference at SCALE_THREADS threads: compute
            # terms scale with the thread count, memory passes and launches do not
            for f in ("kbitops", "kdwtaps", "kflops"):
                coef[f] *= lut.threads / SCALE_THREADS
            why += f" (reference measured on {lut.threads} thread(s), compute terms x{lut.threads}/{SCALE_THREADS})"
        return costmodel.scaled(coef, scale), why.format(ref=name)
    return costmodel.scaled(prior, cm.get("scale", {})), "target file coefficients (uncalibrated)"


def build_modeled_lut(target: Target | str, spaces: Iterable[SearchSpace] | None = None,
                      coef: dict[str, float] | None = None) -> LatencyTable:
    """A `modeled` LatencyTable for `target` covering all_keys of `spaces` (default coverage_spaces()).
    Entries carry std_ms 0 and count 0 (nothing was timed)."""
    target = get_target(target)
    source = "given coefficients"
    if coef is None:
        coef, source = model_coefficients(target)
    keys = keys_of(spaces if spaces is not None else coverage_spaces())
    if not keys:
        raise LutError("no OpKeys: the given search spaces produce no network")
    entries = {k: {"mean_ms": round(costmodel.predict_ms(k, coef), 6), "std_ms": 0.0, "count": 0} for k in keys}
    return LatencyTable(
        target=target.name, method="modeled", device=f"cost model ({source}); no device timed", threads=target.threads,
        entries=entries, tvm_version=_tvm_version(), created=utc_now(),
        costmodel={"coef": coef, "source": source, "features": list(costmodel.FEATURES)},
        notes="MODELED, not measured: targets/costmodel.py (linear in work counts). Measure with "
              "`dcpnas lut build --target %s [--rpc HOST:PORT --key KEY]`." % target.name)


def _tvm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("apache-tvm")
    except PackageNotFoundError:  # pragma: no cover
        return ""

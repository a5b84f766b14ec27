"""The simple cost model behind `modeled` latency tables (no device reachable).

Every OpKey is decomposed into the kernels the compiler emits for it (dcpnas.operations):
a ConvUnit is BN_in -> [sign + bit-pack] -> conv -> BN_out -> PReLU, a sep_conv is two SepBlocks of a
depthwise and a pointwise ConvUnit (+ residual add), a dil_conv one SepBlock, a FactorizedReduce two
1x1 stride-2 ConvUnits + concat, pools 9 taps per output, the stem a float 3x3 conv + BN (the imagenet stem three stride-2 ones), the
classifier a global average pool + linear. This gives five work counts per key (`features`):

    kbitops   thousands of XNOR-popcount bit products of dense binary convs (Ho*Wo*Cout*Cin/g*k*k)
    kdwtaps   thousands of taps of binary depthwise convs (Ho*Wo*C*k*k; one bit per tap, no word packing)
    kflops    thousands of float FLOPs (2 x MACs of float convs, depthwise under `authors`, linear)
    kelems    thousands of elements read+written by memory-bound passes (BN, sign/pack, PReLU, add, pool)
    kernels   number of kernel launches (fixed cost: VM dispatch, thread-pool wake-up, GPU launch)

and the latency is linear in them: t_ms = sum_i features_i * coef_i / 1e6, coefs in ns per unit.
The coefficients of a target come, in order of preference, from a fit on a measured LUT of the same
target (`fit`), from a fit on a measured LUT of the target's `reference` scaled by the target file's
`scale` factors (ratios of throughput, documented in the TOML), or from the TOML's own `coef` table.
"""

from __future__ import annotations

import numpy as np

from dcpnas.errors import LutError
from dcpnas.latency import parse_key  # noqa: F401  (the OpKey format lives in dcpnas.latency)

FEATURES = ("kbitops", "kdwtaps", "kflops", "kelems", "kernels")
# x86-avx512 starting point (ns per unit) from the TVM.md measurements: XNOR conv ~2.2e12 bit-ops/s,
# fp32 conv ~4e11 FLOP/s on 2 threads, ~5e9 elements/s for fused elementwise passes, ~2 us per kernel.
DEFAULT_COEF = {"kbitops": 0.45, "kdwtaps": 150.0, "kflops": 2.5, "kelems": 200.0, "kernels": 2000.0}


def _conv_unit(f: np.ndarray, cin, cout, h, w, k, stride, dilation, groups, binary_act) -> tuple[int, int]:
    """Add the work of one ConvUnit (all convs here have binary weights); returns the output (h, w)."""
    pad = dilation * (k - 1) // 2
    ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out = ho * wo * cout
    f[3] += (cin * h * w) * (2 if binary_act else 1) + 2 * out   # BN_in (+ sign/pack), BN_out, PReLU
    if groups == cin and cin > 1:  # depthwise
        if binary_act:
            f[1] += out * k * k
        else:  # `authors`: real activations times +-1 weights, a float depthwise conv
            f[2] += 2 * out * k * k
    elif binary_act:
        f[0] += out * (cin // groups) * k * k
    else:
        f[2] += 2 * out * (cin // groups) * k * k
    f[4] += 3  # pre pass, conv, post pass
    return ho, wo


def features(key: str) -> np.ndarray:
    """Work counts of one OpKey (see module docstring); units: thousands, kernels counted as is."""
    op, policy, cin, cout, h, w, s = parse_key(key)
    real_dw = policy == "authors"
    f = np.zeros(len(FEATURES))
    if op == "stem" and s == 8:  # model.ImageNetStem: three stride-2 3x3 convs (+ BN, ReLU)
        half = max(cout // 2, 1)
        for ci, co, d in ((cin, half, 2), (half, cout, 4), (cout, cout, 8)):
            f[2] += 2 * (h // d) * (w // d) * co * ci * 9
            f[3] += ci * (h // d * 2) * (w // d * 2) + 3 * (h // d) * (w // d) * co
        f[4] += 6
    elif op == "stem":
        f[2] += 2 * h * w * cout * cin * 9
        f[3] += cin * h * w + 2 * h * w * cout
        f[4] += 2
    elif op == "classifier":
        f[3] += cin * h * w
        f[2] += 2 * cin * cout
        f[4] += 2
    elif op == "pre_conv1x1":
        _conv_unit(f, cin, cout, h, w, 1, s, 1, 1, binary_act=not real_dw)
    elif op in ("pre_reduce",) or (op == "skip_connect" and s == 2):
        for _ in range(2):
            _conv_unit(f, cin, cout // 2, h, w, 1, 2, 1, 1, binary_act=not real_dw)
        f[3] += 2 * cout * (h // 2) * (w // 2)  # concat
        f[4] += 1
    elif op == "skip_connect":
        pass  # identity: no kernel
    elif op in ("max_pool_3x3", "avg_pool_3x3"):
        ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
        f[3] += cin * h * w + cout * ho * wo * (9 if op == "avg_pool_3x3" else 5)
        f[4] += 1
    elif op in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"):
        k = int(op[-1])
        d = 2 if op.startswith("dil") else 1
        blocks = [(s, cin)] if d == 2 else [(s, cin), (1, cin)]
        for i, (stride, c) in enumerate(blocks):
            c_out = cout if i == len(blocks) - 1 else cin
            ho, wo = _conv_unit(f, c, c, h, w, k, stride, d, c, binary_act=not real_dw)
            ho, wo = _conv_unit(f, c, c_out, ho, wo, 1, 1, 1, 1, binary_act=True)
            if stride == 1 and c == c_out:
                f[3] += 3 * c_out * ho * wo  # residual add
                f[4] += 1
            h, w = ho, wo
    else:
        raise LutError(f"bad OpKey {key!r}: unknown op {op!r}")
    f[:4] /= 1000.0
    return f


def predict_ms(key: str, coef: dict[str, float]) -> float:
    """Modeled latency of one OpKey in ms."""
    c = np.array([float(coef[n]) for n in FEATURES])
    return float(features(key) @ c / 1e6)


def nnls(A: np.ndarray, b: np.ndarray, iters: int = 200) -> np.ndarray:
    """Non-negative least squares min ||Ax - b|| s.t. x >= 0 (Lawson-Hanson active set)."""
    m, n = A.shape
    x = np.zeros(n)
    passive = np.zeros(n, bool)
    for _ in range(iters):
        grad = A.T @ (b - A @ x)
        if passive.all() or grad[~passive].max(initial=-np.inf) <= 1e-12 * (1 + np.abs(grad).max()):
            break
        j = np.argmax(np.where(passive, -np.inf, grad))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(A[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
    return x


def fit(measured: dict[str, float], prior: dict[str, float] | None = None) -> dict[str, float]:
    """Fit the coefficients (ns per unit) to measured latencies {OpKey: ms}, minimising the relative
    error (rows scaled by 1/t) under non-negativity. A feature no measured key exercises keeps the
    `prior` value (default DEFAULT_COEF)."""
    prior = dict(prior or DEFAULT_COEF)
    keys = [k for k, t in measured.items() if t > 0]
    if len(keys) < len(FEATURES):
        raise LutError(f"need at least {len(FEATURES)} measured entries to fit the cost model, got {len(keys)}")
    A = np.stack([features(k) for k in keys]) / 1e6
    t = np.array([measured[k] for k in keys])
    used = A.any(axis=0)
    # column scaling keeps the active-set solve well conditioned (features span 1e0..1e6)
    scale = np.where(used, np.abs(A).max(axis=0), 1.0)
    x = nnls((A[:, used] / scale[used]) / t[:, None], np.ones(len(keys)))
    coef = dict(prior)
    for name, v in zip(np.array(FEATURES)[used], x / scale[used]):
        coef[str(name)] = float(v)
    return coef


def scaled(coef: dict[str, float], scale: dict[str, float]) -> dict[str, float]:
    """Coefficients of another target: each multiplied by its `scale` factor (time ratio vs reference)."""
    unknown = set(scale) - set(FEATURES)
    if unknown:
        raise LutError(f"unknown cost-model scale factor(s) {', '.join(sorted(unknown))}; known: {', '.join(FEATURES)}")
    return {n: float(coef[n]) * float(scale.get(n, 1.0)) for n in FEATURES}

"""A slow implementation of docs/feature-spec.md, written from the definitions, that checks
both paths.

Window sums, means and variances are exact (``fractions.Fraction``) and rounded once, so a
numerical shortcut shared by the batch and streaming paths cannot hide here. Per-element
functions (ln, exp, sqrt) are float64 as the spec says.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

NAMES = [
    "ret_1",
    "ret_5",
    "ret_15",
    "ret_60",
    "vol_15",
    "vol_60",
    "range_hl",
    "close_loc",
    "body",
    "upper_wick",
    "lower_wick",
    "rsi_14",
    "ema_dev_12",
    "ema_dev_26",
    "macd_hist",
    "bb_z_20",
    "atr_14",
    "vol_z_60",
    "vol_ratio_15",
    "taker_buy_ratio",
    "taker_imb_15",
    "spread_bps",
    "spread_z_60",
    "trades_z_60",
    "trade_size_dev_60",
    "vwap_dev_15",
    "eff_ratio_10",
]


def _mean(xs: list[float]) -> Fraction:
    return sum((Fraction(x) for x in xs), Fraction(0)) / len(xs)


def _std(xs: list[float]) -> float:
    m = _mean(xs)
    ss = sum(((Fraction(x) - m) ** 2 for x in xs), Fraction(0))
    return math.sqrt(float(ss / (len(xs) - 1)))


def _z(xs: list[float]) -> float:
    m = _mean(xs)
    sd = _std(xs)
    if sd <= 1e-10 * max(1.0, abs(float(m))):
        return 0.0
    return float(Fraction(xs[-1]) - m) / sd


def _ema(xs: list[float], a: float) -> list[float]:
    out = [xs[0]]
    for x in xs[1:]:
        out.append(a * x + (1 - a) * out[-1])
    return out


def _cs(h0: float, l0: float, h1: float, l1: float) -> float:
    beta = math.log(h0 / l0) ** 2 + math.log(h1 / l1) ** 2
    gamma = math.log(max(h0, h1) / min(l0, l1)) ** 2
    k = 3 - 2 * math.sqrt(2)
    alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / k - math.sqrt(gamma / k)
    s = 2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha))
    return max(s, 0.0) * 10000


def reference(
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    q: np.ndarray,
    n: np.ndarray,
    tb: np.ndarray,
    s_in: np.ndarray,
    rows: list[int],
) -> dict[int, list[float]]:
    """Feature vectors of the given rows (all >= WARMUP - 1) of one gap-free stream."""
    cl = [float(x) for x in c]
    T = len(cl)
    r = [math.nan] + [math.log(cl[t] / cl[t - 1]) for t in range(1, T)]
    s = []
    for t in range(T):
        if not math.isnan(s_in[t]):
            s.append(float(s_in[t]))
        elif t == 0:
            s.append(0.0)
        else:
            s.append(_cs(h[t - 1], lo[t - 1], h[t], lo[t]))
    up = [0.0] + [max(cl[t] - cl[t - 1], 0.0) for t in range(1, T)]
    dn = [0.0] + [max(cl[t - 1] - cl[t], 0.0) for t in range(1, T)]
    tr = [0.0] + [
        max(h[t] - lo[t], abs(h[t] - cl[t - 1]), abs(lo[t] - cl[t - 1])) for t in range(1, T)
    ]
    G = [math.nan, *_ema(up[1:], 1 / 14)]
    L = [math.nan, *_ema(dn[1:], 1 / 14)]
    A = [math.nan, *_ema(tr[1:], 1 / 14)]
    e12 = _ema(cl, 2 / 13)
    e26 = _ema(cl, 2 / 27)
    m = [x - y for x, y in zip(e12, e26, strict=True)]
    sig = _ema(m, 2 / 10)
    tbr = [tb[t] / v[t] if v[t] > 0 else 0.5 for t in range(T)]
    lv = [math.log(1 + v[t]) for t in range(T)]
    ln = [math.log(1 + n[t]) for t in range(T)]
    a = [math.log(1 + q[t] / max(n[t], 1)) for t in range(T)]
    out: dict[int, list[float]] = {}
    for t in rows:

        def w(xs: list[float] | np.ndarray, N: int, t: int = t) -> list[float]:
            return [float(x) for x in xs[t - N + 1 : t + 1]]

        mv = _mean(w(v, 15))
        sq = sum((Fraction(x) for x in w(q, 15)), Fraction(0))
        sv = sum((Fraction(x) for x in w(v, 15)), Fraction(0))
        den = sum(
            (abs(Fraction(cl[i]) - Fraction(cl[i - 1])) for i in range(t - 9, t + 1)), Fraction(0)
        )
        out[t] = [
            r[t],
            math.log(cl[t] / cl[t - 5]),
            math.log(cl[t] / cl[t - 15]),
            math.log(cl[t] / cl[t - 60]),
            _std(w(r, 15)),
            _std(w(r, 60)),
            math.log(h[t] / lo[t]),
            0.5 if h[t] == lo[t] else (cl[t] - lo[t]) / (h[t] - lo[t]),
            math.log(cl[t] / o[t]),
            math.log(h[t] / max(o[t], cl[t])),
            math.log(min(o[t], cl[t]) / lo[t]),
            0.5 if G[t] + L[t] == 0 else G[t] / (G[t] + L[t]),
            math.log(cl[t] / e12[t]),
            math.log(cl[t] / e26[t]),
            (m[t] - sig[t]) / cl[t],
            _z(w(cl, 20)),
            A[t] / cl[t],
            _z(w(lv, 60)),
            1.0 if mv == 0 else float(Fraction(v[t]) / mv),
            tbr[t],
            float(_mean([2 * x - 1 for x in w(tbr, 15)])),
            s[t],
            _z(w(s, 60)),
            _z(w(ln, 60)),
            float(Fraction(a[t]) - _mean(w(a, 60))),
            0.0 if sv == 0 else math.log(cl[t] / float(sq / sv)),
            0.0 if den == 0 else float(abs(Fraction(cl[t]) - Fraction(cl[t - 10])) / den),
        ]
    return out

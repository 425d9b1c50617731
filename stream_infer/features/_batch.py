"""The batch path: the 27 features over whole streams (training, replay, the golden file).

Numerics (docs/feature-spec.md, "Numerical notes"): every window moment is a two-pass over the
window's values, shifted by the window's newest value x_t so that x_i - x_t is exact on
near-flat windows and z = -mean(x_i - x_t) / std needs no cancelling subtraction. Window
sums run oldest to newest, the order of Python's ``sum`` over the streaming ring.
Transcendental functions go through ``math`` element by element so both paths round alike;
the recursions (EMA, Wilder) are a plain loop with the streaming path's operation order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from stream_infer._errors import InvalidCandle
from stream_infer.candles import check_frame
from stream_infer.features._gaps import prepare_stream
from stream_infer.features._spec import (
    A_EMA12,
    A_EMA26,
    A_SIGNAL,
    A_WILDER,
    B_EMA12,
    B_EMA26,
    B_SIGNAL,
    B_WILDER,
    BPS,
    CS_K,
    FEATURE_NAMES,
    N_FEATURES,
    WARMUP,
    Z_EPS,
)

_F = np.float64
_log = math.log
_log1p = math.log1p
_exp = math.exp


def _map(f: Callable[[float], float], x: np.ndarray) -> np.ndarray:
    return np.fromiter(map(f, x.tolist()), dtype=_F, count=x.size)


def _vln(x: np.ndarray) -> np.ndarray:
    """ln of ratios of positive numbers; an underflow to 0 gives -inf (IEEE), not an error."""
    pos = x > 0.0
    y = _map(_log, np.where(pos, x, 1.0))
    return np.where(pos, y, np.where(x == 0.0, -np.inf, np.nan))


def _shifted(x: np.ndarray, n: int) -> np.ndarray:
    """``out[t] = x[t - n]`` (NaN before the start)."""
    out = np.full_like(x, np.nan)
    out[n:] = x[:-n]
    return out


def _wsum(x: np.ndarray, n: int) -> np.ndarray:
    """Window sums ending at each t (NaN for t < n-1), added oldest to newest."""
    out = np.full_like(x, np.nan)
    m = x.size - n + 1
    if m <= 0:
        return out
    acc = x[0:m].copy()
    for k in range(1, n):
        acc += x[k : k + m]
    out[n - 1 :] = acc
    return out


def _wdev(x: np.ndarray, n: int) -> np.ndarray:
    """x_t - mean of the window ending at each t, as -mean(x_i - x_t) (0 on a flat window)."""
    out = np.full_like(x, np.nan)
    m = x.size - n + 1
    if m <= 0:
        return out
    xt = x[n - 1 :]
    sy = x[0:m] - xt
    for k in range(1, n):
        sy += x[k : k + m] - xt
    out[n - 1 :] = -(sy / n)
    return out


def _wmoments(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean(x_i - x_t), std) of the window ending at each t, two-pass on shifted values."""
    my = np.full_like(x, np.nan)
    sd = np.full_like(x, np.nan)
    m = x.size - n + 1
    if m <= 0:
        return my, sd
    xt = x[n - 1 :]
    sy = x[0:m] - xt
    for k in range(1, n):
        sy += x[k : k + m] - xt
    mean_y = sy / n
    d = (x[0:m] - xt) - mean_y
    ss = d * d
    for k in range(1, n):
        d = (x[k : k + m] - xt) - mean_y
        ss += d * d
    my[n - 1 :] = mean_y
    sd[n - 1 :] = np.sqrt(ss / (n - 1))
    return my, sd


def _zscore(x: np.ndarray, n: int) -> np.ndarray:
    my, sd = _wmoments(x, n)
    mean = x + my
    return np.where(sd <= Z_EPS * np.maximum(1.0, np.abs(mean)), 0.0, -my / sd)


def _recursions(
    c: np.ndarray, h: np.ndarray, lo: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """E12, E26, MACD signal, Wilder G, L and ATR's A; the streaming update's exact operations."""
    n = c.size
    cl, hl, ll = c.tolist(), h.tolist(), lo.tolist()
    e12 = [0.0] * n
    e26 = [0.0] * n
    sig = [0.0] * n
    gs = [math.nan] * n
    ls = [math.nan] * n
    atr = [math.nan] * n
    if n == 0:
        return tuple(np.array(a, dtype=_F) for a in (e12, e26, sig, gs, ls, atr))  # type: ignore[return-value]
    e1 = e2 = cl[0]
    s = 0.0  # m_0 = E12_0 - E26_0 = 0
    e12[0], e26[0] = e1, e2
    g = lv = a = 0.0
    p = cl[0]
    for t in range(1, n):
        x, hi, low = cl[t], hl[t], ll[t]
        e1 = A_EMA12 * x + B_EMA12 * e1
        e2 = A_EMA26 * x + B_EMA26 * e2
        s = A_SIGNAL * (e1 - e2) + B_SIGNAL * s
        up = x - p if x > p else 0.0
        dn = p - x if p > x else 0.0
        tr = max(hi - low, abs(hi - p), abs(low - p))
        if t == 1:
            g, lv, a = up, dn, tr
        else:
            g = A_WILDER * up + B_WILDER * g
            lv = A_WILDER * dn + B_WILDER * lv
            a = A_WILDER * tr + B_WILDER * a
        e12[t], e26[t], sig[t], gs[t], ls[t], atr[t] = e1, e2, s, g, lv, a
        p = x
    return tuple(np.array(v, dtype=_F) for v in (e12, e26, sig, gs, ls, atr))  # type: ignore[return-value]


def cs_spread(h0: float, l0: float, h1: float, l1: float) -> float:
    """Corwin–Schultz two-candle spread in bps (docs/feature-spec.md, Helpers).

    The scalar twin of the batch code.
    """
    r0 = _log(h0 / l0)
    r1 = _log(h1 / l1)
    beta = r0 * r0 + r1 * r1
    g = _log(max(h0, h1) / min(l0, l1))
    gamma = g * g
    alpha = (math.sqrt(2.0 * beta) - math.sqrt(beta)) / CS_K - math.sqrt(gamma / CS_K)
    e = _exp(alpha if alpha < 50.0 else 50.0)
    s = 2.0 * (e - 1.0) / (1.0 + e)
    return (s if s > 0.0 else 0.0) * BPS


def _spread(h: np.ndarray, lo: np.ndarray, rng: np.ndarray, s_in: np.ndarray) -> np.ndarray:
    """s_t: the candle's own spread where present, else Corwin–Schultz from t-1 and t."""
    s = np.zeros_like(h)
    if h.size > 1:
        r0, r1 = rng[:-1], rng[1:]
        beta = r0 * r0 + r1 * r1
        g = _map(_log, np.maximum(h[:-1], h[1:]) / np.minimum(lo[:-1], lo[1:]))
        gamma = g * g
        alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / CS_K - np.sqrt(gamma / CS_K)
        e = _map(_exp, np.minimum(alpha, 50.0))  # S is 2.0 in float64 long before
        cs = 2.0 * (e - 1.0) / (1.0 + e)
        s[1:] = np.where(cs > 0.0, cs, 0.0) * BPS
    return np.where(np.isnan(s_in), s, s_in)


def segment_features(
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    q: np.ndarray,
    n: np.ndarray,
    tb: np.ndarray,
    s_in: np.ndarray,
) -> np.ndarray:
    """The (T, 27) features of one gap-free, validated stream; rows t < WARMUP - 1 are NaN."""
    size = c.size
    out = np.full((size, N_FEATURES), np.nan)
    if size < WARMUP:
        return out
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = np.full(size, np.nan)
        r[1:] = _vln(c[1:] / c[:-1])
        rng = _map(_log, h / lo)
        e12, e26, sig, g, lsum, atr = _recursions(c, h, lo)
        gl = g + lsum
        _, vol15 = _wmoments(r, 15)
        _, vol60 = _wmoments(r, 60)
        tbr = np.where(v > 0.0, tb / v, 0.5)
        sv15 = _wsum(v, 15)
        sq15 = _wsum(q, 15)
        mv15 = sv15 / 15
        a = _map(_log1p, q / np.maximum(n, 1.0))
        absd = np.full(size, np.nan)
        absd[1:] = np.abs(c[1:] - c[:-1])
        den = _wsum(absd, 10)
        cols: list[np.ndarray] = [
            r,
            _vln(c / _shifted(c, 5)),
            _vln(c / _shifted(c, 15)),
            _vln(c / _shifted(c, 60)),
            vol15,
            vol60,
            rng,
            np.where(h == lo, 0.5, (c - lo) / (h - lo)),
            _vln(c / o),
            _map(_log, h / np.maximum(o, c)),
            _map(_log, np.minimum(o, c) / lo),
            np.where(gl == 0.0, 0.5, g / gl),
            _vln(c / e12),
            _vln(c / e26),
            ((e12 - e26) - sig) / c,
            _zscore(c, 20),
            atr / c,
            _zscore(_map(_log1p, v), 60),
            np.where(mv15 == 0.0, 1.0, v / mv15),
            tbr,
            _wsum(2.0 * tbr - 1.0, 15) / 15,
            (s := _spread(h, lo, rng, s_in)),
            _zscore(s, 60),
            _zscore(_map(_log1p, n), 60),
            _wdev(a, 60),
            np.where(sv15 == 0.0, 0.0, _vln(c / (sq15 / sv15))),
            np.where(den == 0.0, 0.0, np.abs(c - _shifted(c, 10)) / den),
        ]
    out[:] = np.column_stack(cols)
    out[: WARMUP - 1] = np.nan
    return out


def batch_features(candles: pd.DataFrame, interval_ms: int = 60_000) -> pd.DataFrame:
    """The 27 features (docs/feature-spec.md v1) of one stream's candles, a row per candle.

    The stream rules apply first (see ``prepare_stream``): its rows, synthetic gap candles
    included, are the rows returned, indexed by ``open_time``; rows not ready are NaN.
    """
    prep = prepare_stream(candles, interval_ms)
    values = np.full((len(prep), N_FEATURES), np.nan)
    seg = prep["segment"].to_numpy()
    bounds = np.flatnonzero(np.diff(seg)) + 1
    cols = {
        k: prep[k].to_numpy(dtype=_F)
        for k in (
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "trades",
            "taker_buy_base",
            "spread_bps",
        )
    }
    for lo_i, hi_i in zip(
        np.concatenate([[0], bounds]), np.concatenate([bounds, [len(prep)]]), strict=True
    ):
        part = {k: x[lo_i:hi_i] for k, x in cols.items()}
        values[lo_i:hi_i] = segment_features(
            part["open"],
            part["high"],
            part["low"],
            part["close"],
            part["volume"],
            part["quote_volume"],
            part["trades"],
            part["taker_buy_base"],
            part["spread_bps"],
        )
    index = pd.Index(prep["open_time"].to_numpy(dtype=np.int64), name="open_time")
    return pd.DataFrame(values, index=index, columns=list(FEATURE_NAMES))


def compute_extended_features(
    opens: Any,
    highs: Any,
    lows: Any,
    closes: Any,
    volumes: Any,
    quote_asset_volumes: Any,
    taker_buy_base: Any,
    taker_buy_quote: Any,
    number_of_trades: Any,
    spread_bps: Any = None,
    taker_buy_ratio: Any = None,
) -> np.ndarray:
    """The (n, 27) features of one gap-free stream given as arrays (the seed's entry point).

    ``spread_bps`` may be None or hold NaN where absent. ``taker_buy_ratio`` is accepted for
    compatibility and must equal taker_buy_base / volume where volume > 0 (the spec's tbr is
    computed, never taken from the caller).
    """
    arrays = {
        "open": opens,
        "high": highs,
        "low": lows,
        "close": closes,
        "volume": volumes,
        "quote_volume": quote_asset_volumes,
        "taker_buy_base": taker_buy_base,
        "taker_buy_quote": taker_buy_quote,
        "trades": number_of_trades,
    }
    frame = pd.DataFrame({k: np.asarray(x, dtype=_F).ravel() for k, x in arrays.items()})
    size = len(frame)
    if spread_bps is None:
        frame["spread_bps"] = np.nan
    else:
        frame["spread_bps"] = np.asarray(spread_bps, dtype=_F).ravel()
    check_frame(frame)
    v = frame["volume"].to_numpy()
    tb = frame["taker_buy_base"].to_numpy()
    if taker_buy_ratio is not None:
        given = np.asarray(taker_buy_ratio, dtype=_F).ravel()
        if given.size != size:
            raise ValueError(f"taker_buy_ratio has {given.size} values for {size} candles")
        with np.errstate(divide="ignore", invalid="ignore"):
            want = np.where(v > 0, tb / np.where(v > 0, v, 1.0), given)
        bad = ~(np.abs(given - want) <= 1e-9 * np.maximum(1.0, np.abs(want)))
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidCandle(
                f"row {i}: taker_buy_ratio {given[i]!r} != taker_buy_base / volume {want[i]!r}",
                rule="taker_buy_ratio",
                row=i,
            )
    return segment_features(
        *(
            frame[k].to_numpy()
            for k in (
                "open",
                "high",
                "low",
                "close",
                "volume",
                "quote_volume",
                "trades",
                "taker_buy_base",
                "spread_bps",
            )
        )
    )

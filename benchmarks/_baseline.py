"""The naive baseline's features, written the way a training script would: pandas rolling and
ewm over the whole frame at every candle. One definition, for bench_features (pandas vs
streaming per candle) and bench_naive (the naive service: Postgres + pandas + predict).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["pandas_features"]


def _z(x: pd.Series, n: int) -> pd.Series:
    mean = x.rolling(n).mean()
    sd = x.rolling(n).std()
    return ((x - mean) / sd).where(sd > 1e-10 * np.maximum(1.0, mean.abs()), 0.0)


def pandas_features(df: pd.DataFrame, rows: int = 1) -> np.ndarray:
    """The baseline's features: the last ``rows`` rows of a candles frame, every column
    recomputed over the whole frame with pandas: shape (27,) for one row, (rows, 27)
    otherwise. Not our product (stream_infer.features is): the naive service's way."""
    o, h, lo, c = df["open"], df["high"], df["low"], df["close"]
    v, q, tb = df["volume"], df["quote_volume"], df["taker_buy_base"]
    n = df["trades"].astype(float)
    c1 = c.shift(1)
    r = pd.Series(np.log(c / c1))
    d = c.diff()
    gain = d.clip(lower=0).iloc[1:].ewm(alpha=1 / 14, adjust=False).mean()
    loss = (-d).clip(lower=0).iloc[1:].ewm(alpha=1 / 14, adjust=False).mean()
    e12 = c.ewm(alpha=2 / 13, adjust=False).mean()
    e26 = c.ewm(alpha=2 / 27, adjust=False).mean()
    macd = e12 - e26
    signal = macd.ewm(alpha=0.2, adjust=False).mean()
    tr = pd.concat([h - lo, (h - c1).abs(), (lo - c1).abs()], axis=1).max(axis=1)
    atr = tr.iloc[1:].ewm(alpha=1 / 14, adjust=False).mean()
    tbr = (tb / v).where(v > 0, 0.5)
    # Corwin-Schultz spread from two candles' high/low when the feed has none
    beta = np.log(h.shift(1) / lo.shift(1)) ** 2 + np.log(h / lo) ** 2
    gamma = np.log(np.maximum(h.shift(1), h) / np.minimum(lo.shift(1), lo)) ** 2
    k = 3 - 2 * np.sqrt(2)
    alpha = (np.sqrt(2 * beta) - np.sqrt(beta)) / k - np.sqrt(gamma / k)
    cs = (2 * (np.exp(alpha) - 1) / (1 + np.exp(alpha))).clip(lower=0) * 1e4
    s = pd.to_numeric(df["spread_bps"], errors="coerce")
    s = s.where(s.notna(), cs).fillna(0.0)
    size = pd.Series(np.log1p(q / np.maximum(n, 1)))
    sum_v = v.rolling(15).sum()
    mean_v = v.rolling(15).mean()
    path = d.abs().rolling(10).sum()
    cols = [
        r,
        np.log(c / c.shift(5)),
        np.log(c / c.shift(15)),
        np.log(c / c.shift(60)),
        r.rolling(15).std(),
        r.rolling(60).std(),
        np.log(h / lo),
        ((c - lo) / (h - lo)).where(h != lo, 0.5),
        np.log(c / o),
        np.log(h / np.maximum(o, c)),
        np.log(np.minimum(o, c) / lo),
        (gain / (gain + loss)).where(gain + loss != 0, 0.5),
        np.log(c / e12),
        np.log(c / e26),
        (macd - signal) / c,
        _z(c, 20),
        atr / c,
        _z(pd.Series(np.log1p(v)), 60),
        (v / mean_v).where(mean_v != 0, 1.0),
        tbr,
        (2 * tbr - 1).rolling(15).mean(),
        s,
        _z(s, 60),
        _z(pd.Series(np.log1p(n)), 60),
        size - size.rolling(60).mean(),
        np.log(c / (q.rolling(15).sum() / sum_v)).where(sum_v != 0, 0.0),
        ((c - c.shift(10)).abs() / path).where(path != 0, 0.0),
    ]
    if rows == 1:
        return np.array([float(x.iloc[-1]) for x in cols])
    return np.column_stack([np.asarray(x.iloc[-rows:], dtype=np.float64) for x in cols])

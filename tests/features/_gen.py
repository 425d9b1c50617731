"""Synthetic but valid candle streams for the property tests (seeded, so hypothesis can replay)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

T0 = 1_675_209_600_000  # 2023-02-01, on the minute grid
MINUTE = 60_000


@dataclass
class Spec:
    """What a generated stream looks like; every knob is drawn by hypothesis."""

    seed: int = 0
    n: int = 520
    price: float = 100.0  # starting price (1e-4 .. 1e6 in the tests)
    tick_rel: float = 1e-4  # tick as a fraction of the price
    p_still: float = 0.5  # chance a candle's close does not move (near-flat windows)
    p_flat_candle: float = 0.1  # chance o = h = l = c
    p_zero_volume: float = 0.05
    p_zero_trades: float = 0.05
    p_spread: float = 0.5  # chance a candle carries its own spread_bps
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (position, missing candles)
    copies: list[tuple[int, int]] = field(default_factory=list)  # (after arrival i, back by j)


def make_stream(spec: Spec) -> pd.DataFrame:
    """Candles in open_time order (gaps included), columns as read_klines gives them."""
    rng = np.random.default_rng(spec.seed)
    n = spec.n
    tick = spec.price * spec.tick_rel
    steps = np.ones(n, dtype=np.int64)
    for pos, k in spec.gaps:
        if 0 < pos < n:
            steps[pos] += k
    steps[0] = 0
    open_time = T0 + np.cumsum(steps) * MINUTE
    rows = []
    c_prev = spec.price
    for _ in range(n):
        o = c_prev
        if rng.random() < spec.p_still:
            c = o
        else:
            c = o + int(rng.choice([-3, -2, -1, 1, 2, 3])) * tick
            if c <= 0:
                c = o
        if rng.random() < spec.p_flat_candle:
            o = h = lo = c
        else:
            h = max(o, c) + int(rng.integers(0, 3)) * tick
            lo = min(o, c) - int(rng.integers(0, 3)) * tick
            if lo <= 0:
                lo = min(o, c)
        if rng.random() < spec.p_zero_volume:
            v = q = tb = tbq = 0.0
            trades = 0
        else:
            v = float(np.round(rng.lognormal(3.0, 1.5), 3))
            vwap = lo + (h - lo) * rng.random()
            q = v * vwap
            tb = float(np.round(v * rng.random(), 3))
            tb = min(tb, v)
            tbq = tb * vwap
            trades = 0 if rng.random() < spec.p_zero_trades else int(rng.integers(1, 500))
        spread = float(rng.uniform(0.0, 25.0)) if rng.random() < spec.p_spread else np.nan
        rows.append((o, h, lo, c, v, q, trades, tb, tbq, spread))
        c_prev = c
    df = pd.DataFrame(
        rows,
        columns=[
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "trades",
            "taker_buy_base",
            "taker_buy_quote",
            "spread_bps",
        ],
    )
    df.insert(0, "open_time", open_time)
    df["close_time"] = df["open_time"] + MINUTE - 1
    return df


def arrivals(df: pd.DataFrame, copies: list[tuple[int, int]]) -> pd.DataFrame:
    """The order a consumer sees: after arrival i, a copy of candle i - j (a duplicate when
    j = 0, else late), with different values, so a path that took it would show it."""
    extra: dict[int, list[int]] = {}
    for i, j in copies:
        if 0 <= i < len(df) and i - j >= 0:
            extra.setdefault(i, []).append(i - j)
    order: list[int] = []
    bumped: list[bool] = []
    for i in range(len(df)):
        order.append(i)
        bumped.append(False)
        for src in extra.get(i, []):
            order.append(src)
            bumped.append(True)
    out = df.iloc[order].reset_index(drop=True)
    mask = np.array(bumped)
    out.loc[mask, "close"] = out.loc[mask, "high"]  # still valid, but different
    out.loc[mask, "volume"] = out.loc[mask, "volume"] * 2.0
    return out

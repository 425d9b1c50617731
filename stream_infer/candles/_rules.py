"""The input rules of docs/feature-spec.md, once for one candle and once for a whole frame.

The names in ``RULES`` are shared by both checks, the dead-letter reasons and the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from stream_infer._errors import InvalidCandle
from stream_infer.candles._model import NUMERIC_FIELDS

RULES: dict[str, str] = {
    "numeric": "every price, volume and count is a number",
    "finite": "every number is finite (no NaN or inf)",
    "price_positive": "open, high, low and close are > 0",
    "low_bound": "low <= min(open, close)",
    "high_bound": "high >= max(open, close)",
    "volume_nonneg": "volume >= 0",
    "quote_volume_nonneg": "quote_volume >= 0",
    "trades_integer": "trades is an integer >= 0",
    "taker_buy_bounds": "0 <= taker_buy_base <= volume",
    "taker_buy_quote_nonneg": "taker_buy_quote >= 0",
    "spread_nonneg": "spread_bps >= 0 when present",
    # Stream rules, checked by the features against the previous candle
    # (docs/feature-spec.md, Gaps).
    "open_time_integer": "open_time is an integer number of milliseconds",
    "open_time_grid": "open_time is a whole number of intervals after the previous candle",
    "taker_buy_ratio": "a given taker_buy_ratio equals taker_buy_base / volume",
}

_NUMERIC = NUMERIC_FIELDS
_INF = math.inf


def _fail(rule: str, row: int | None, symbol: str | None) -> InvalidCandle:
    where = f"row {row}: " if row is not None else ""
    return InvalidCandle(f"{where}{RULES[rule]}", rule=rule, row=row, symbol=symbol)


def _is_number(x: Any) -> bool:
    # bool is an int subclass and str parses as a float: neither is a number on the wire.
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def check_candle(candle: Any, *, row: int | None = None) -> None:
    """Raise :class:`InvalidCandle` for the first rule the candle breaks.

    The common case is one chain of comparisons (NaN compares False, so it falls through
    to the checks that name the rule); the service calls this for every message.
    """
    g: Callable[[str], Any] = (
        candle.get if isinstance(candle, Mapping) else lambda k: getattr(candle, k, None)
    )
    lo, h, o, c, v, n, s = (
        g("low"),
        g("high"),
        g("open"),
        g("close"),
        g("volume"),
        g("trades"),
        g("spread_bps"),
    )
    try:
        if (
            0.0 < lo <= o <= h < _INF
            and lo <= c <= h
            and 0.0 <= g("taker_buy_base") <= v < _INF
            and 0.0 <= g("quote_volume") < _INF
            and 0.0 <= g("taker_buy_quote") < _INF
            and type(n) is int
            and n >= 0
            and (s is None or 0.0 <= s < _INF or s != s)  # NaN spread: absent
        ):
            return
    except TypeError:
        pass
    _name_the_rule(g, row)


def _name_the_rule(g: Callable[[str], Any], row: int | None) -> None:
    symbol = g("symbol")
    values = [g(k) for k in _NUMERIC]
    if not all(_is_number(x) for x in values):
        raise _fail("numeric", row, symbol)
    o, h, lo, c, v, q, tb, tbq = (float(x) for x in values)
    if not all(map(math.isfinite, (o, h, lo, c, v, q, tb, tbq))):
        raise _fail("finite", row, symbol)
    if o <= 0 or h <= 0 or lo <= 0 or c <= 0:
        raise _fail("price_positive", row, symbol)
    if lo > min(o, c):
        raise _fail("low_bound", row, symbol)
    if h < max(o, c):
        raise _fail("high_bound", row, symbol)
    if v < 0:
        raise _fail("volume_nonneg", row, symbol)
    if q < 0:
        raise _fail("quote_volume_nonneg", row, symbol)
    n = g("trades")
    if not _is_number(n) or not math.isfinite(float(n)) or float(n) != int(n) or n < 0:
        raise _fail("trades_integer", row, symbol)
    if tb < 0 or tb > v:
        raise _fail("taker_buy_bounds", row, symbol)
    if tbq < 0:
        raise _fail("taker_buy_quote_nonneg", row, symbol)
    s = g("spread_bps")
    if s is not None:
        if not _is_number(s):
            raise _fail("numeric", row, symbol)
        s = float(s)
        if math.isnan(s):
            return  # NaN spread means "absent" in frames and files
        if not math.isfinite(s):
            raise _fail("finite", row, symbol)
        if s < 0:
            raise _fail("spread_nonneg", row, symbol)


def check_frame(df: pd.DataFrame, *, row_offset: int = 0) -> None:
    """Vectorised ``check_candle`` over a frame; the error names the first bad row (0-based + offset)."""
    cols = {k: df[k].to_numpy(dtype=np.float64) for k in (*_NUMERIC, "trades")}
    o, h, lo, c = cols["open"], cols["high"], cols["low"], cols["close"]
    v, q, tb, tbq, n = (
        cols["volume"],
        cols["quote_volume"],
        cols["taker_buy_base"],
        cols["taker_buy_quote"],
        cols["trades"],
    )
    spread = df["spread_bps"].to_numpy(dtype=np.float64) if "spread_bps" in df else None
    with np.errstate(invalid="ignore"):
        finite = np.logical_and.reduce([np.isfinite(x) for x in (o, h, lo, c, v, q, tb, tbq, n)])
        if spread is not None:
            finite &= ~np.isinf(spread)
        checks: list[tuple[str, np.ndarray]] = [
            ("finite", finite),
            ("price_positive", (o > 0) & (h > 0) & (lo > 0) & (c > 0)),
            ("low_bound", lo <= np.minimum(o, c)),
            ("high_bound", h >= np.maximum(o, c)),
            ("volume_nonneg", v >= 0),
            ("quote_volume_nonneg", q >= 0),
            ("trades_integer", (n >= 0) & (np.floor(n) == n)),
            ("taker_buy_bounds", (tb >= 0) & (tb <= v)),
            ("taker_buy_quote_nonneg", tbq >= 0),
        ]
        if spread is not None:
            checks.append(("spread_nonneg", np.isnan(spread) | (spread >= 0)))
    bad = np.zeros(len(df), dtype=bool)
    for _, ok in checks:
        bad |= ~ok
    if not bad.any():
        return
    first = int(np.argmax(bad))
    for rule, ok in checks:
        if not ok[first]:
            symbol = str(df["symbol"].iloc[first]) if "symbol" in df else None
            raise _fail(rule, first + row_offset, symbol)

"""The stream rules of docs/feature-spec.md ("Gaps"): duplicates, late candles, gap filling,
restarts.

One definition for both paths: ``step`` decides for one new candle (streaming) and
``prepare_stream`` applies the same rules to a whole frame (batch).
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
import pandas as pd

from stream_infer._errors import DecodeError, InvalidCandle
from stream_infer.candles import CANDLE_FIELDS, check_frame
from stream_infer.features._spec import MAX_GAP, RULE_GRID, RULE_OPEN_TIME

# Candle columns the features read (taker_buy_quote is carried, not used).
INPUT_COLUMNS: tuple[str, ...] = CANDLE_FIELDS[:-1]
_FLOAT_COLUMNS = INPUT_COLUMNS[1:]


class Outcome(enum.Enum):
    """What the last ``StreamingFeatures.update`` did with its candle."""

    READY = "ready"  # appended; the features of the newest candle were returned
    WARMING = "warming"  # appended; fewer than WARMUP candles in the stream yet
    DUPLICATE = "duplicate"  # open_time equal to the last one: ignored
    LATE = "late"  # open_time before the last one: ignored
    RESTARTED = "restarted"  # gap > MAX_GAP: a new stream began with this candle


def grid_error(
    open_time: int, last: int, interval_ms: int, row: int | None = None
) -> InvalidCandle:
    where = f"row {row}: " if row is not None else ""
    return InvalidCandle(
        f"{where}open_time {open_time} is not a whole number of intervals "
        f"({interval_ms} ms) after the previous candle's {last}",
        rule=RULE_GRID,
        row=row,
    )


def open_time_error(value: Any, row: int | None = None) -> InvalidCandle:
    where = f"row {row}: " if row is not None else ""
    return InvalidCandle(
        f"{where}open_time must be an integer number of ms, got {value!r}",
        rule=RULE_OPEN_TIME,
        row=row,
    )


def as_open_time(value: Any) -> int:
    """The candle's open_time as an int, or InvalidCandle (check_candle does not look at it)."""
    if isinstance(value, bool):
        raise open_time_error(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    raise open_time_error(value)


def step(open_time: int, last: int, interval_ms: int) -> tuple[Outcome | None, int]:
    """Where a candle at ``open_time`` goes after a stream whose last candle opened at ``last``.

    Returns ``(DUPLICATE|LATE, 0)`` to ignore it, ``(RESTARTED, 0)`` to start a new stream
    with it, or ``(None, k)`` to append it after ``k`` synthetic flat candles (0 <= k <= MAX_GAP).
    Raises InvalidCandle when it is off the interval grid.
    """
    delta = open_time - last
    if delta <= 0:
        return (Outcome.DUPLICATE if delta == 0 else Outcome.LATE), 0
    if delta % interval_ms:
        raise grid_error(open_time, last, interval_ms)
    k = delta // interval_ms - 1
    if k > MAX_GAP:
        return Outcome.RESTARTED, 0
    return None, k


def prepare_stream(candles: pd.DataFrame, interval_ms: int = 60_000) -> pd.DataFrame:
    """Apply the stream rules to one stream's candles (any order).

    Validates with ``check_frame`` (row numbers are 0-based positions in ``candles``), sorts by
    open_time, drops duplicates (the first occurrence stays), fills gaps of at most MAX_GAP
    candles with flat synthetic candles and starts a new segment after a longer gap.
    Returns the candle columns plus ``spread_bps`` (NaN = absent), ``synthetic`` (bool) and
    ``segment`` (0, 1, ...): one row per candle of the resulting stream(s), the rows that
    ``batch_features`` returns, in the same order.
    """
    if interval_ms <= 0:
        raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
    missing = [c for c in INPUT_COLUMNS if c not in candles.columns]
    if missing:
        raise DecodeError(f"candles lack columns {missing}", reason="columns")
    for col in ("symbol", "interval"):
        if col in candles.columns and candles[col].nunique(dropna=False) > 1:
            raise DecodeError(
                f"candles of more than one stream ({col} has {candles[col].nunique()} values)",
                reason="streams",
            )
    check_frame(candles)
    ot = _open_times(candles["open_time"])
    order = np.argsort(ot, kind="stable")
    ots = ot[order]
    if len(ots):
        keep = np.ones(len(ots), dtype=bool)
        keep[1:] = ots[1:] != ots[:-1]
        order, ots = order[keep], ots[keep]
    delta = np.diff(ots)
    off = delta % interval_ms != 0
    if off.any():
        i = int(np.argmax(off)) + 1
        raise grid_error(int(ots[i]), int(ots[i - 1]), interval_ms, row=int(order[i]))
    k = delta // interval_ms - 1
    restart = k > MAX_GAP
    counts = np.ones(len(ots), dtype=np.int64)
    counts[1:] += np.where(restart, 0, k)
    pos = np.cumsum(counts) - 1  # output position of each real candle
    total = int(pos[-1]) + 1 if len(pos) else 0
    real_at = np.full(total, -1, dtype=np.int64)
    real_at[pos] = np.arange(len(ots))
    synthetic = real_at < 0
    # A synthetic row copies the close of the real candle before it.
    src = np.maximum.accumulate(real_at) if total else real_at
    rows = order[src]
    out: dict[str, Any] = {
        "open_time": ots[src] + (np.arange(total) - pos[src]) * interval_ms,
    }
    spread = (
        candles["spread_bps"].to_numpy(dtype=np.float64)
        if "spread_bps" in candles.columns
        else np.full(len(candles), np.nan)
    )
    close = candles["close"].to_numpy(dtype=np.float64)[rows]
    for col in _FLOAT_COLUMNS:
        if col == "close":
            out[col] = close
        elif col in ("open", "high", "low"):
            out[col] = np.where(synthetic, close, candles[col].to_numpy(dtype=np.float64)[rows])
        else:
            out[col] = np.where(synthetic, 0.0, candles[col].to_numpy(dtype=np.float64)[rows])
    out["trades"] = out["trades"].astype(np.int64)
    out["spread_bps"] = np.where(synthetic, np.nan, spread[rows])
    out["synthetic"] = synthetic
    out["segment"] = np.cumsum(np.concatenate([[0], restart]))[src].astype(np.int64)
    return pd.DataFrame(out)


def _open_times(col: pd.Series) -> np.ndarray:
    """open_time as int64; a NaN or fractional value raises naming its row."""
    if pd.api.types.is_integer_dtype(col.dtype):
        return col.to_numpy(dtype=np.int64)
    try:
        f = col.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        f = np.array([_num(x) for x in col], dtype=np.float64)
    bad = ~np.isfinite(f) | (np.floor(f) != f)
    if bad.any():
        i = int(np.argmax(bad))
        raise open_time_error(col.iloc[i], row=i)
    return f.astype(np.int64)


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")

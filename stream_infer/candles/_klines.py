"""The exchange's klines CSV files (plain or .gz, with or without a header)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from stream_infer._errors import DecodeError
from stream_infer.candles._model import INTERVAL_MS, NUMERIC_FIELDS
from stream_infer.candles._rules import check_frame

# The exchange's column order; renamed to the candle field names on read.
KLINE_COLUMNS: tuple[str, ...] = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
_RENAME = {
    "count": "trades",
    "taker_buy_volume": "taker_buy_base",
    "taker_buy_quote_volume": "taker_buy_quote",
}
_NAME = re.compile(r"^(?P<symbol>[A-Z0-9]+)-(?P<interval>\d+[smhdw])-")


def klines_meta(path: str | Path) -> tuple[str, str]:
    """(symbol, interval) from a file name such as ``NEARUSDT-1m-2023-02.csv.gz``."""
    m = _NAME.match(Path(path).name)
    if not m or m["interval"] not in INTERVAL_MS:
        raise DecodeError(
            f"cannot tell symbol and interval from file name {Path(path).name!r} "
            "(expected SYMBOL-INTERVAL-....csv[.gz])",
            reason="filename",
            path=str(path),
        )
    return m["symbol"], m["interval"]


def read_klines(
    path: str | Path,
    *,
    symbol: str | None = None,
    interval: str | None = None,
    validate: bool = True,
) -> pd.DataFrame:
    """Read one klines file into candle columns, validated with the spec's rules.

    Adds ``symbol`` and ``interval`` (from the file name unless given) and an empty
    ``spread_bps`` column (NaN = absent: the exchange files carry no spread).
    """
    p = Path(path)
    if not p.is_file():
        raise DecodeError(f"klines file not found: {p}", reason="missing_file", path=str(p))
    if symbol is None or interval is None:
        sym, ivl = klines_meta(p)
        symbol, interval = symbol or sym, interval or ivl
    head = pd.read_csv(p, nrows=1, header=None)
    has_header = not _is_number(head.iloc[0, 0])
    df = pd.read_csv(p, header=0 if has_header else None)
    if not has_header:
        df.columns = list(KLINE_COLUMNS[: df.shape[1]])
    missing = [c for c in KLINE_COLUMNS[:11] if c not in df.columns]
    if missing:
        raise DecodeError(f"{p}: missing columns {missing}", reason="columns", path=str(p))
    df = df.rename(columns=_RENAME).drop(columns=["ignore"], errors="ignore")
    df["open_time"] = df["open_time"].astype(np.int64)
    df["close_time"] = df["close_time"].astype(np.int64)
    df["trades"] = df["trades"].astype(np.int64)
    for col in NUMERIC_FIELDS:
        df[col] = df[col].astype(np.float64)
    # Some exchange dumps are in microseconds; candle events are in ms.
    if len(df) and df["open_time"].iloc[0] > 10**14:
        df["open_time"] //= 1000
        df["close_time"] //= 1000
    df["spread_bps"] = np.nan
    df.insert(0, "interval", interval)
    df.insert(0, "symbol", symbol)
    if validate:
        try:
            # the error names the 1-based line of the file
            check_frame(df, row_offset=2 if has_header else 1)
        except Exception as exc:  # add the file to the error
            if hasattr(exc, "path"):
                exc.path = str(p)
            raise
    return df


def _is_number(x: object) -> bool:
    try:
        float(str(x))
    except ValueError:
        return False
    return True

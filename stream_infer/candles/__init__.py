"""Candles: the input event, its validation rules and the exchange's klines files.

The rules are those of docs/feature-spec.md ("Input: one stream"); a candle that breaks one
raises :class:`~stream_infer.InvalidCandle` naming the rule, before it touches state.
"""

from __future__ import annotations

from stream_infer.candles._klines import KLINE_COLUMNS, klines_meta, read_klines
from stream_infer.candles._model import (
    CANDLE_COLUMNS,
    CANDLE_FIELDS,
    INTERVAL_MS,
    NUMERIC_FIELDS,
    Candle,
    interval_to_ms,
)
from stream_infer.candles._rules import RULES, check_candle, check_frame

__all__ = [
    "CANDLE_COLUMNS",
    "CANDLE_FIELDS",
    "INTERVAL_MS",
    "KLINE_COLUMNS",
    "NUMERIC_FIELDS",
    "RULES",
    "Candle",
    "check_candle",
    "check_frame",
    "interval_to_ms",
    "klines_meta",
    "read_klines",
]

"""Candle messages: decode (our JSON or the exchange's kline payload) and encode.

The decoder is the service's front door, so it is written by hand from the ``orjson``
dict rather than through pydantic: every field is type-checked here, the spec's rules
run on the raw values (so ``trades: 2.5`` is ``rule:trades_integer``, as in files),
and only then is the :class:`~stream_infer.candles.Candle` built. Whatever the bytes,
the result is a ``Candle``, ``None`` (a candle that is not closed) or a
:class:`~stream_infer.CandleError` with a stable ``reason``.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from stream_infer._errors import DecodeError, InvalidCandle
from stream_infer.candles import INTERVAL_MS, NUMERIC_FIELDS, Candle, check_candle

__all__ = [
    "DECODE_REASONS",
    "MAX_BYTES",
    "candle_to_dict",
    "decode_candle",
    "encode_candle",
]

MAX_BYTES = 1 << 20

# Reasons a DecodeError from decode_candle can carry ("schema:<field>" for every field).
DECODE_REASONS: dict[str, str] = {
    "empty": "no value (a tombstone or an empty message)",
    "too_large": "the message is longer than max_bytes",
    "too_deep": "JSON nested deeper than the parser allows",
    "not_json": "not UTF-8 JSON",
    "not_object": "JSON, but not an object",
    "event_type": "an exchange event that is not a kline",
    "interval": "an interval name that is not one of INTERVAL_MS",
    "schema:<field>": "a field missing, of the wrong type or out of range",
}

# Integers that survive float64 and int64 on every path downstream.
_MAX_INT = 1 << 53
_MAX_NUMBER_TEXT = 64

_PRICES = NUMERIC_FIELDS
# Binance kline ("k") keys -> candle fields.
_KLINE = {
    "s": "symbol",
    "i": "interval",
    "t": "open_time",
    "T": "close_time",
    "o": "open",
    "h": "high",
    "l": "low",
    "c": "close",
    "v": "volume",
    "q": "quote_volume",
    "n": "trades",
    "V": "taker_buy_base",
    "Q": "taker_buy_quote",
    "x": "is_closed",
}


def _schema(field: str, why: str) -> DecodeError:
    return DecodeError(f"field {field!r}: {why}", reason=f"schema:{field}")


def _number(d: dict[str, Any], field: str) -> float:
    x = d.get(field)
    if isinstance(x, float):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return float(x) if -_MAX_INT <= x <= _MAX_INT else _range(field)
    if isinstance(x, str) and 0 < len(x) <= _MAX_NUMBER_TEXT:
        # the exchange sends numbers as strings
        try:
            return float(x)
        except ValueError:
            pass
    if x is None:
        raise _schema(field, "missing")
    raise _schema(field, "not a number")


def _range(field: str) -> float:
    raise _schema(field, "out of range")


def _time(d: dict[str, Any], field: str) -> int:
    x = d.get(field)
    if isinstance(x, int) and not isinstance(x, bool):
        if 0 <= x < _MAX_INT:
            return x
        raise _schema(field, "out of range")
    if x is None:
        raise _schema(field, "missing")
    raise _schema(field, "not an integer number of ms")


def _text(d: dict[str, Any], field: str, max_len: int) -> str:
    x = d.get(field)
    if isinstance(x, str) and 0 < len(x) <= max_len:
        return x
    if x is None:
        raise _schema(field, "missing")
    raise _schema(field, f"not a string of 1 to {max_len} characters")


def _fields(d: dict[str, Any]) -> dict[str, Any] | None:
    """Type-checked candle fields of our schema, or None when the candle is not closed."""
    closed = d.get("is_closed", True)
    if not isinstance(closed, bool):
        raise _schema("is_closed", "not a boolean")
    symbol = _text(d, "symbol", 64)
    interval = d.get("interval")
    if not isinstance(interval, str):
        raise _schema("interval", "missing" if interval is None else "not a string")
    if interval not in INTERVAL_MS:
        raise DecodeError(f"unknown interval {interval[:16]!r}", reason="interval", symbol=symbol)
    out: dict[str, Any] = {
        "symbol": symbol,
        "interval": interval,
        "open_time": _time(d, "open_time"),
        "close_time": _time(d, "close_time"),
    }
    for f in _PRICES:
        out[f] = _number(d, f)
    n = d.get("trades")
    if n is None:
        raise _schema("trades", "missing")
    # a non-integer count is the spec's rule "trades_integer", checked below
    if isinstance(n, str):
        n = _number(d, "trades")
    elif isinstance(n, int) and not isinstance(n, bool) and not -_MAX_INT <= n <= _MAX_INT:
        raise _schema("trades", "out of range")
    out["trades"] = n
    s = d.get("spread_bps")
    if s is not None:
        s = _number(d, "spread_bps")
        if math.isnan(s):
            s = None  # NaN means "absent" (files use it so)
    out["spread_bps"] = s
    if not closed:
        return None
    return out


def _unwrap(d: dict[str, Any]) -> dict[str, Any]:
    """Our candle fields from any accepted payload shape (exchange kline, combined stream)."""
    if "data" in d and "stream" in d:  # Binance combined stream: {"stream": ..., "data": {...}}
        d = d["data"]
        if not isinstance(d, dict):
            raise _schema("data", "not an object")
    e = d.get("e")
    if e is None:
        return d
    if e != "kline":
        raise DecodeError("exchange event is not a kline", reason="event_type")
    k = d.get("k")
    if not isinstance(k, dict):
        raise _schema("k", "missing" if k is None else "not an object")
    out = {field: k[key] for key, field in _KLINE.items() if key in k}
    if "symbol" not in out and "s" in d:
        out["symbol"] = d["s"]
    return out


def decode_candle(
    value: bytes | bytearray | memoryview | None,
    *,
    max_bytes: int = MAX_BYTES,
    check: bool = True,
) -> Candle | None:
    """One message value -> a closed :class:`Candle`, or ``None`` when it is not closed.

    Raises :class:`~stream_infer.DecodeError` (``reason`` in ``DECODE_REASONS``) or, with
    ``check``, :class:`~stream_infer.InvalidCandle` (``reason`` ``"rule:<name>"``); never
    anything else.
    """
    if value is None or len(value) == 0:
        raise DecodeError("empty message", reason="empty")
    if len(value) > max_bytes:
        raise DecodeError(f"message of {len(value)} bytes > {max_bytes}", reason="too_large")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        deep = "depth" in str(exc) or "recursion" in str(exc).lower()
        raise DecodeError(
            f"not JSON: {str(exc)[:120]}", reason="too_deep" if deep else "not_json"
        ) from None
    if not isinstance(raw, dict):
        raise DecodeError(f"JSON {type(raw).__name__}, not an object", reason="not_object")
    fields = _fields(_unwrap(raw))
    if fields is None:
        return None
    if check:
        try:
            check_candle(fields)
        except InvalidCandle as exc:
            exc.interval = fields["interval"]
            raise
    if not isinstance(fields["trades"], int):
        # an integral float that passed the rules (or was not checked)
        t = fields["trades"]
        if not (isinstance(t, float) and math.isfinite(t) and t == int(t)):
            raise _schema("trades", "not an integer")
        fields["trades"] = int(t)
    if not -_MAX_INT <= fields["trades"] <= _MAX_INT:
        raise _schema("trades", "out of range")
    return Candle.model_validate(fields)


def candle_to_dict(candle: Candle) -> dict[str, Any]:
    """The candle's JSON object (every field, ``is_closed`` included)."""
    return dict(candle.__dict__)


def encode_candle(candle: Candle) -> bytes:
    """The candle as our Candle JSON (the schema in ``schemas/candle.schema.json``)."""
    return orjson.dumps(candle.__dict__)

"""Hostile candle messages by category, for hypothesis (strategies) and for a seeded corpus
(``corpus``) that the Kafka test and the atheris harness share.

Categories (issue 8): random bytes, wrong types, huge and tiny numbers, NaN/inf, unicode,
deeply nested JSON, 1 MB messages, plus the exchange's payload shapes and duplicate keys.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import orjson
from hypothesis import strategies as st

from stream_infer import CandleError, DecodeError, InvalidCandle
from stream_infer.candles import RULES, Candle
from stream_infer.events import DECODE_REASONS, MAX_BYTES, decode_candle, encode_candle

FIELDS = (
    "symbol",
    "interval",
    "open_time",
    "close_time",
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
    "is_closed",
)
KLINE_KEYS = ("s", "i", "t", "T", "o", "h", "l", "c", "v", "q", "n", "V", "Q", "x")

HUGE_TINY: tuple[Any, ...] = (
    1e308,
    -1e308,
    1.7976931348623157e308,
    5e-324,
    -5e-324,
    1e-300,
    0.0,
    -0.0,
    2**53,
    2**53 + 1,
    -(2**53) - 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    1e30,
    "1e309",
    "-1e309",
    "1e-400",
    "0x10",
    "1_000",
    " 1",
    "9" * 65,
    "",
)
NAN_INF_STRINGS = ("NaN", "nan", "-nan", "inf", "-inf", "Infinity", "-Infinity", "+inf", "INF")
NAN_INF_LITERALS = (b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf")
UNICODE = (
    "\u0000",
    "BTC\u0000USDT",
    "\u200bBTCUSDT",
    "BTC\u202eUSDT",
    "ＢＴＣＵＳＤＴ",
    "比特币",
    "🚀" * 10,
    "é" * 65,
    "\ud7ff\ue000",
    "1ｍ",
    "１m",
)


def known_reason(reason: str) -> bool:
    """A reason from the documented set (DECODE_REASONS, ``schema:<field>``, ``rule:<name>``)."""
    if reason.startswith("schema:"):
        return len(reason) > len("schema:")
    if reason.startswith("rule:"):
        return reason[len("rule:") :] in RULES
    return reason in DECODE_REASONS


def outcome(value: bytes, max_bytes: int = MAX_BYTES) -> tuple[str, Candle | None]:
    """("candle" | "not_closed" | "dead:<reason>", candle): decode_candle's verdict.

    Raises AssertionError if the decoder raised anything but a CandleError, or a reason
    outside the documented set, or returned a candle that does not survive a round trip.
    """
    try:
        c = decode_candle(value, max_bytes=max_bytes)
    except CandleError as exc:
        assert isinstance(exc, DecodeError | InvalidCandle), type(exc)
        assert known_reason(exc.reason), exc.reason
        return f"dead:{exc.reason}", None
    except Exception as exc:  # the property under test
        raise AssertionError(f"decode_candle raised {type(exc).__name__}: {exc}") from exc
    if c is None:
        return "not_closed", None
    assert isinstance(c, Candle)
    for f in ("open", "high", "low", "close", "volume", "quote_volume"):
        assert math.isfinite(getattr(c, f)), f
    assert decode_candle(encode_candle(c)) == c
    return "candle", c


# -- hypothesis strategies ----------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _with(base: dict[str, Any], field: str, value: Any) -> bytes:
    return orjson.dumps({**base, field: value})


def with_literal(base: dict[str, Any], field: str, literal: bytes) -> bytes:
    """The candle's JSON with ``field`` set to the raw JSON text ``literal``."""
    marker = "\u0001marker\u0001"
    return orjson.dumps({**base, field: marker}).replace(orjson.dumps(marker), literal)


def categories(base: dict[str, Any]) -> dict[str, st.SearchStrategy[bytes]]:
    """One strategy per category, mutating the valid candle object ``base``."""
    fields = st.sampled_from(FIELDS)
    kline = {"e": "kline", "E": 1, "s": base["symbol"], "k": {}}
    return {
        "random bytes": st.binary(max_size=4096),
        "random unicode text": st.text(max_size=2000).map(lambda t: t.encode("utf-8")),
        "invalid utf-8 in JSON": st.binary(min_size=1, max_size=8).map(
            lambda b: b'{"symbol": "' + b"\xff" + b + b'", "interval": "1m"}'
        ),
        "wrong types": st.tuples(fields, json_values).map(lambda kv: _with(base, *kv)),
        "huge and tiny numbers": st.one_of(
            st.tuples(
                fields,
                st.sampled_from(HUGE_TINY)
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.integers(min_value=-(2**63), max_value=2**64 - 1),
            ).map(lambda kv: _with(base, *kv)),
            # beyond 64 bits and beyond float64, as JSON text (orjson cannot write them)
            st.tuples(
                fields,
                st.integers(min_value=-(10**400), max_value=10**400).map(str)
                | st.sampled_from(("1e309", "-1e400", "1e-400", "123456789" * 40)),
            ).map(lambda kv: with_literal(base, kv[0], kv[1].encode())),
        ),
        "NaN and inf": st.one_of(
            st.tuples(fields, st.sampled_from(NAN_INF_STRINGS)).map(lambda kv: _with(base, *kv)),
            st.tuples(fields, st.sampled_from(NAN_INF_LITERALS)).map(
                lambda kv: with_literal(base, *kv)
            ),
        ),
        "unicode in text fields": st.tuples(
            st.sampled_from(("symbol", "interval")),
            st.sampled_from(UNICODE) | st.text(min_size=1, max_size=80),
        ).map(lambda kv: _with(base, *kv)),
        "deeply nested JSON": st.tuples(
            st.integers(min_value=1, max_value=200_000), st.sampled_from(("[", "{", "field"))
        ).map(lambda dk: nested(base, *dk)),
        "about 1 MB": st.tuples(
            st.integers(min_value=-2, max_value=2), st.sampled_from(("pad", "bytes", "field"))
        ).map(lambda ok: megabyte(base, *ok)),
        "exchange shapes": st.tuples(
            st.dictionaries(st.sampled_from(KLINE_KEYS), json_values, max_size=6),
            st.sampled_from(("kline", "combined", "other event", "k not object")),
        ).map(lambda km: exchange(kline, *km)),
        "duplicate keys": st.tuples(fields, json_values).map(lambda kv: duplicate_key(base, *kv)),
    }


def duplicate_key(base: dict[str, Any], field: str, value: Any) -> bytes:
    """The candle's JSON with ``field`` given a second time (the last one wins in orjson)."""
    return orjson.dumps(base)[:-1] + b"," + orjson.dumps(field) + b":" + orjson.dumps(value) + b"}"


def nested(base: dict[str, Any], depth: int, kind: str) -> bytes:
    if kind == "[":
        return b"[" * depth + b"]" * depth
    if kind == "{":
        return b'{"a":' * depth + b"1" + b"}" * depth
    # a valid candle whose spread_bps is a nested list
    inner = b"[" * depth + b"]" * depth
    return orjson.dumps(base)[:-1] + b',"spread_bps":' + inner + b"}"


def megabyte(base: dict[str, Any], off: int, kind: str, limit: int = MAX_BYTES) -> bytes:
    """A message of ``limit + off`` bytes: a valid candle padded with an unknown field, raw
    bytes, or a field holding a huge string."""
    n = limit + off
    if kind == "bytes":
        return bytes(random.Random(n).getrandbits(8) for _ in range(64)) * (n // 64) + b"x" * (
            n % 64
        )
    head = orjson.dumps(base)[:-1]
    key = b',"pad":"' if kind == "pad" else b',"symbol":"'
    fill = n - len(head) - len(key) - 2
    return head + key + b"a" * max(fill, 0) + b'"}'


def exchange(kline: dict[str, Any], k: dict[str, Any], mode: str) -> bytes:
    if mode == "k not object":
        return orjson.dumps({**kline, "k": list(k.values())})
    obj: dict[str, Any] = {**kline, "k": k}
    if mode == "other event":
        obj["e"] = "trade"
    if mode == "combined":
        obj = {"stream": "btcusdt@kline_1m", "data": obj}
    return orjson.dumps(obj)


# -- a seeded corpus (no hypothesis at run time) ------------------------------------------


def corpus(base: dict[str, Any], n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` (category, bytes) messages that the decoder must refuse, drawn by category."""
    rng = random.Random(seed)
    makers: dict[str, Callable[[], bytes]] = {
        "random bytes": lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))),
        "wrong types": lambda: _with(
            base, rng.choice(FIELDS[:13]), rng.choice([None, [], {}, True, "x", [1, 2]])
        ),
        "huge and tiny numbers": lambda: _with(
            base,
            rng.choice(FIELDS[2:13]),
            rng.choice([-1e308, "1e309", 2**64 - 1, -(2**63), "0x10"]),
        ),
        "NaN and inf": lambda: _with(base, rng.choice(FIELDS[4:10]), rng.choice(NAN_INF_STRINGS)),
        "unicode in text fields": lambda: _with(base, "interval", rng.choice(UNICODE)),
        "deeply nested JSON": lambda: nested(base, rng.choice([600, 5000, 100_000]), "["),
        "about 1 MB": lambda: megabyte(base, rng.randint(1, 64), rng.choice(("pad", "bytes"))),
        "exchange shapes": lambda: exchange(
            {"e": "kline", "E": 1, "s": "X", "k": {}}, {"i": rng.choice(["1m", 5, None])}, "kline"
        ),
    }
    out: list[tuple[str, bytes]] = []
    names = sorted(makers)
    while len(out) < n:
        name = names[len(out) % len(names)]
        value = makers[name]()
        if outcome(value)[0].startswith("dead:"):
            out.append((name, value))
    return out

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_infer import CandleError, DecodeError, InvalidCandle
from stream_infer.candles import RULES, Candle, read_klines
from stream_infer.events import DECODE_REASONS, candle_to_dict, decode_candle, encode_candle
from tests.conftest import DATA

OURS: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "interval": "1m",
    "open_time": 1672531200000,
    "close_time": 1672531259999,
    "open": 16541.77,
    "high": 16545.7,
    "low": 16508.39,
    "close": 16529.67,
    "volume": 126.5,
    "quote_volume": 2090000.12,
    "trades": 4000,
    "taker_buy_base": 60.1,
    "taker_buy_quote": 993000.1,
}
KLINE: dict[str, Any] = {
    "e": "kline",
    "E": 1672531260001,
    "s": "BTCUSDT",
    "k": {
        "t": 1672531200000,
        "T": 1672531259999,
        "s": "BTCUSDT",
        "i": "1m",
        "f": 100,
        "L": 200,
        "o": "16541.77000000",
        "c": "16529.67000000",
        "h": "16545.70000000",
        "l": "16508.39000000",
        "v": "126.50000000",
        "n": 4000,
        "x": True,
        "q": "2090000.12000000",
        "V": "60.10000000",
        "Q": "993000.10000000",
        "B": "0",
    },
}


def _kline(**k: Any) -> dict[str, Any]:
    return {**KLINE, "k": {**KLINE["k"], **k}}


def _reason(value: bytes) -> str:
    with pytest.raises(CandleError) as err:
        decode_candle(value)
    return err.value.reason


def test_our_json_round_trips() -> None:
    c = decode_candle(orjson.dumps(OURS))
    assert isinstance(c, Candle)
    assert c == Candle(**OURS)
    assert decode_candle(encode_candle(c)) == c
    assert orjson.loads(encode_candle(c)) == candle_to_dict(c)
    with_spread = decode_candle(orjson.dumps({**OURS, "spread_bps": 2.5}))
    assert with_spread is not None and with_spread.spread_bps == 2.5


def test_binance_kline_and_combined_stream_decode_to_the_same_candle() -> None:
    ours = decode_candle(orjson.dumps(OURS))
    assert decode_candle(orjson.dumps(KLINE)) == ours
    combined = {"stream": "btcusdt@kline_1m", "data": KLINE}
    assert decode_candle(orjson.dumps(combined)) == ours
    # the symbol may come from the event when the kline lacks it
    k = dict(KLINE["k"])
    del k["s"]
    assert decode_candle(orjson.dumps({**KLINE, "k": k})) == ours


def test_every_row_of_a_real_file_round_trips() -> None:
    df = read_klines(DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz").head(500)
    for row in df.to_dict("records"):
        row["spread_bps"] = None
        c = Candle(**row)
        assert decode_candle(encode_candle(c)) == c


def test_not_closed_updates_nothing() -> None:
    assert decode_candle(orjson.dumps({**OURS, "is_closed": False})) is None
    assert decode_candle(orjson.dumps(_kline(x=False))) is None
    # a candle in progress is not checked against the rules (it is ignored either way)
    assert decode_candle(orjson.dumps(_kline(x=False, h="1"))) is None


def _last_trades(literal: bytes) -> bytes:
    body = orjson.dumps({k: v for k, v in OURS.items() if k != "trades"})
    return body[:-1] + b',"trades":' + literal + b"}"


BAD_DECODE: list[tuple[bytes | None, str]] = [
    (None, "empty"),
    (b"", "empty"),
    (b"\xff\xfe\x00", "not_json"),
    (b"{", "not_json"),
    (b'{"a": NaN}', "not_json"),
    (b"[" * 1100 + b"]" * 1100, "too_deep"),
    (b"[1, 2]", "not_object"),
    (b'"x"', "not_object"),
    (b"null", "not_object"),
    (b'{"e": "trade", "s": "BTCUSDT"}', "event_type"),
    (orjson.dumps({**KLINE, "k": [1]}), "schema:k"),
    (orjson.dumps({"stream": "s", "data": 3}), "schema:data"),
    (orjson.dumps({k: v for k, v in OURS.items() if k != "close"}), "schema:close"),
    (orjson.dumps({**OURS, "symbol": ""}), "schema:symbol"),
    (orjson.dumps({**OURS, "symbol": "X" * 65}), "schema:symbol"),
    (orjson.dumps({**OURS, "symbol": 5}), "schema:symbol"),
    (orjson.dumps({**OURS, "interval": "7m"}), "interval"),
    (orjson.dumps({**OURS, "interval": 1}), "schema:interval"),
    (orjson.dumps({**OURS, "open_time": 1.5}), "schema:open_time"),
    (orjson.dumps({**OURS, "open_time": "1672531200000"}), "schema:open_time"),
    (orjson.dumps({**OURS, "open_time": -1}), "schema:open_time"),
    (orjson.dumps({**OURS, "open_time": 2**60}), "schema:open_time"),
    (orjson.dumps({**OURS, "close_time": True}), "schema:close_time"),
    (orjson.dumps({**OURS, "open": "abc"}), "schema:open"),
    (orjson.dumps({**OURS, "open": True}), "schema:open"),
    (orjson.dumps({**OURS, "open": [1]}), "schema:open"),
    (orjson.dumps({**OURS, "open": "1" * 65}), "schema:open"),
    (_last_trades(b"1" + b"0" * 300), "schema:trades"),  # orjson reads it as 1e300
    (orjson.dumps({**OURS, "volume": 2**62}), "schema:volume"),
    (orjson.dumps({**OURS, "trades": 2**60}), "schema:trades"),
    (orjson.dumps({**OURS, "trades": 1e300}), "schema:trades"),
    (orjson.dumps({**OURS, "trades": None}), "schema:trades"),
    (orjson.dumps({**OURS, "spread_bps": "x"}), "schema:spread_bps"),
    (orjson.dumps({**OURS, "is_closed": "yes"}), "schema:is_closed"),
    (orjson.dumps(_kline(t="1672531200000")), "schema:open_time"),
    (orjson.dumps(_kline(o=None)), "schema:open"),
    (orjson.dumps(_kline(i="1x")), "interval"),
]
BAD_RULES: list[tuple[dict[str, Any], str]] = [
    ({"close": "NaN"}, "finite"),
    ({"high": "inf"}, "finite"),
    ({"open": -1.0, "low": -2.0}, "price_positive"),
    ({"high": 16000.0}, "high_bound"),
    ({"low": 16540.0}, "low_bound"),
    ({"volume": -1.0, "taker_buy_base": -2.0}, "volume_nonneg"),
    ({"quote_volume": -0.1}, "quote_volume_nonneg"),
    ({"trades": 2.5}, "trades_integer"),
    ({"trades": -1}, "trades_integer"),
    ({"trades": True}, "trades_integer"),
    ({"taker_buy_base": 127.0}, "taker_buy_bounds"),
    ({"taker_buy_quote": -1.0}, "taker_buy_quote_nonneg"),
    ({"spread_bps": -0.5}, "spread_nonneg"),
]


@pytest.mark.parametrize(("value", "reason"), BAD_DECODE)
def test_bad_messages_raise_decode_error_with_a_stable_reason(
    value: bytes | None, reason: str
) -> None:
    with pytest.raises(DecodeError) as err:
        decode_candle(value)
    assert err.value.reason == reason
    assert reason in DECODE_REASONS or reason.startswith("schema:")


def test_size_is_bounded() -> None:
    value = orjson.dumps({**OURS, "pad": "x" * 2000})
    assert decode_candle(value) is not None
    with pytest.raises(DecodeError) as err:
        decode_candle(value, max_bytes=1000)
    assert err.value.reason == "too_large"
    assert _reason(b"x" * (2 << 20)) == "too_large"  # the default bound: 1 MiB


@pytest.mark.parametrize(("change", "rule"), BAD_RULES)
def test_rule_breaks_raise_invalid_candle_naming_the_rule(
    change: dict[str, Any], rule: str
) -> None:
    assert rule in RULES
    with pytest.raises(InvalidCandle) as err:
        decode_candle(orjson.dumps({**OURS, **change}))
    assert (err.value.rule, err.value.reason) == (rule, f"rule:{rule}")
    assert (err.value.symbol, err.value.interval) == ("BTCUSDT", "1m")
    # check=False skips the rules (the stream checks them again)
    if rule not in ("trades_integer",):
        assert decode_candle(orjson.dumps({**OURS, **change}), check=False) is not None


def test_integral_float_trades_and_nan_spread() -> None:
    c = decode_candle(orjson.dumps({**OURS, "trades": 12.0, "spread_bps": "nan"}))
    assert c is not None and c.trades == 12 and isinstance(c.trades, int)
    assert c.spread_bps is None


# -- every input: a candle, None, or a CandleError; nothing else -----------------------


def _decode_anything(value: bytes) -> None:
    try:
        out = decode_candle(value)
    except CandleError as exc:
        assert isinstance(exc, DecodeError | InvalidCandle)
        assert isinstance(exc.reason, str) and exc.reason
        return
    assert out is None or isinstance(out, Candle)
    if out is not None:
        assert all(math.isfinite(getattr(out, f)) for f in ("open", "high", "low", "close"))
        assert decode_candle(encode_candle(out)) == out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes(value: bytes) -> None:
    _decode_anything(value)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_any_json_value(value: Any) -> None:
    _decode_anything(orjson.dumps(value))


# Candle-shaped objects whose fields are replaced by arbitrary JSON values: this reaches
# every branch of the schema checks and the rules.
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["ours", "kline", "combined"]),
    st.dictionaries(
        st.sampled_from([*OURS, "spread_bps", "is_closed", *KLINE["k"]]), _json, max_size=4
    ),
    st.lists(st.sampled_from([*OURS, *KLINE["k"]]), max_size=2),
)
def test_any_candle_shaped_object(shape: str, change: dict[str, Any], drop: list[str]) -> None:
    if shape == "ours":
        obj: dict[str, Any] = {**OURS, **change}
        inner = obj
    else:
        inner = {**KLINE["k"], **change}
        obj = {**KLINE, "k": inner}
        if shape == "combined":
            obj = {"stream": "x", "data": obj}
    for k in drop:
        inner.pop(k, None)
    _decode_anything(orjson.dumps(obj))

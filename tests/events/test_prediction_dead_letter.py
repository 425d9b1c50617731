from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from stream_infer import DecodeError, InvalidCandle
from stream_infer.events import (
    DeadLetter,
    Prediction,
    decode_candle,
    decode_dead_letter,
    decode_prediction,
    encode_dead_letter,
    encode_prediction,
)

FIELDS: dict[str, Any] = {
    "symbol": "NEARUSDT",
    "interval": "1m",
    "open_time": 1675209600000,
    "horizons": [1, 5, 15],
    "predictions": [0.51, 0.4999999999999999, 0.7],
    "confidences": [0.02, 2.220446049250313e-16, 0.4],
    "components": {"mamba": [0.5, 0.5, 0.8], "lgbm": [0.52, 0.5, 0.6]},
    "ensemble_id": "ensemble-v1",
    "version": "1",
    "feature_version": 1,
    "latency_ms": 0.731,
    "produced_at": 1675209660123,
}


def test_prediction_round_trips_exactly_and_matches_pydantic() -> None:
    p = Prediction(**FIELDS)
    raw = encode_prediction(p)
    assert decode_prediction(raw) == p
    assert orjson.loads(raw) == orjson.loads(p.model_dump_json())
    assert orjson.loads(raw) == FIELDS  # floats survive bit for bit
    assert p.key == ("NEARUSDT", "1m", 1675209600000, "ensemble-v1")
    assert p.message_key == b"NEARUSDT"


@pytest.mark.parametrize(
    "change",
    [
        {"predictions": [0.5, 0.5]},
        {"confidences": [0.1]},
        {"components": {"mamba": [0.5], "lgbm": [0.5, 0.5, 0.5]}},
        {"symbol": ""},
        {"extra": 1},
    ],
)
def test_prediction_refuses_inconsistent_fields(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Prediction(**{**FIELDS, **change})


def test_prediction_is_frozen_and_decode_errors_are_typed() -> None:
    p = Prediction(**FIELDS)
    with pytest.raises(ValidationError):
        p.symbol = "X"  # type: ignore[misc]
    for bad in (b"", b"{}", b"[1]", b"\xff"):
        with pytest.raises(DecodeError) as err:
            decode_prediction(bad)
        assert err.value.reason == "prediction"


def test_dead_letter_keeps_the_original_bytes_and_the_reason() -> None:
    value = orjson.dumps({"symbol": "X", "interval": "1m", "open_time": 0}) + b"\xff"
    with pytest.raises(DecodeError) as d:
        decode_candle(value)
    dl = DeadLetter.from_error(
        d.value,
        value=value,
        topic="candles",
        partition=3,
        offset=42,
        timestamp_ms=1_700_000_000_000,
        failed_at=1_700_000_000_123,
    )
    raw = encode_dead_letter(dl)
    obj = orjson.loads(raw)
    assert obj["reason"] == "not_json"
    assert base64.b64decode(obj["value"]) == value
    back = decode_dead_letter(raw)
    assert back == dl and back.original == value
    assert dict(dl.headers()) == {"reason": b"not_json", "source": b"candles/3/42"}
    assert orjson.loads(raw) == orjson.loads(dl.model_dump_json())


def test_dead_letter_of_a_rule_names_symbol_and_interval() -> None:
    bad = {
        "symbol": "BTCUSDT",
        "interval": "5m",
        "open_time": 0,
        "close_time": 299_999,
        "open": 1.0,
        "high": 0.5,
        "low": 0.4,
        "close": 1.0,
        "volume": 1.0,
        "quote_volume": 1.0,
        "trades": 1,
        "taker_buy_base": 0.5,
        "taker_buy_quote": 0.5,
    }
    with pytest.raises(InvalidCandle) as err:
        decode_candle(orjson.dumps(bad))
    dl = DeadLetter.from_error(
        err.value, value=None, topic="t", partition=0, offset=0, timestamp_ms=None, failed_at=0
    )
    assert (dl.reason, dl.symbol, dl.interval) == ("rule:high_bound", "BTCUSDT", "5m")
    assert dl.original == b""
    with pytest.raises(DecodeError):
        decode_dead_letter(b'{"reason": 1}')

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_infer import InvalidCandle
from stream_infer.candles import RULES, check_candle, check_frame, read_klines
from stream_infer.candles._rules import _name_the_rule
from tests.conftest import DATA

GOOD: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "open": 100.0,
    "high": 101.0,
    "low": 99.0,
    "close": 100.5,
    "volume": 10.0,
    "quote_volume": 1000.0,
    "trades": 5,
    "taker_buy_base": 4.0,
    "taker_buy_quote": 400.0,
    "spread_bps": None,
}

BAD: list[tuple[dict[str, Any], str]] = [
    ({"close": math.nan}, "finite"),
    ({"high": math.inf}, "finite"),
    ({"open": -1.0, "low": -2.0}, "price_positive"),
    ({"low": 0.0}, "price_positive"),
    ({"high": 98.0, "low": 99.0}, "high_bound"),
    ({"low": 100.2}, "low_bound"),
    ({"volume": -1.0, "taker_buy_base": -2.0}, "volume_nonneg"),
    ({"quote_volume": -0.1}, "quote_volume_nonneg"),
    ({"trades": 2.5}, "trades_integer"),
    ({"trades": -1}, "trades_integer"),
    ({"trades": "7"}, "trades_integer"),
    ({"taker_buy_base": 11.0}, "taker_buy_bounds"),
    ({"taker_buy_quote": -1.0}, "taker_buy_quote_nonneg"),
    ({"spread_bps": -0.5}, "spread_nonneg"),
]


def test_good_candle_passes() -> None:
    check_candle(GOOD)
    check_candle({**GOOD, "spread_bps": 3.0})
    check_candle({**GOOD, "volume": 0.0, "taker_buy_base": 0.0, "trades": 0})


@pytest.mark.parametrize(("change", "rule"), BAD)
def test_bad_candle_names_its_rule(change: dict[str, Any], rule: str) -> None:
    assert rule in RULES
    with pytest.raises(InvalidCandle) as err:
        check_candle({**GOOD, **change})
    assert err.value.rule == rule
    assert err.value.symbol == "BTCUSDT"


@pytest.mark.parametrize(
    ("change", "rule"), [b for b in BAD if not isinstance(b[0].get("trades"), str)]
)
def test_frame_check_agrees_and_names_the_row(change: dict[str, Any], rule: str) -> None:
    rows = [dict(GOOD) for _ in range(5)]
    rows[3].update(change)
    df = pd.DataFrame(rows)
    df["spread_bps"] = df["spread_bps"].astype(np.float64)
    with pytest.raises(InvalidCandle) as err:
        check_frame(df)
    assert (err.value.rule, err.value.row) == (rule, 3)


def test_read_klines_with_and_without_header(tmp_path: Any) -> None:
    src = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"
    with_header = read_klines(src)
    body = pd.read_csv(src).to_csv(header=False, index=False)
    plain = tmp_path / "BTCUSDT-1m-2023-01-noheader.csv"
    plain.write_text(body)
    without = read_klines(plain)
    assert len(with_header) == len(without) == 5738
    assert (with_header["symbol"] == "BTCUSDT").all() and (with_header["interval"] == "1m").all()
    pd.testing.assert_frame_equal(with_header, without)


def test_read_klines_names_the_bad_row(tmp_path: Any) -> None:
    src = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"
    df = pd.read_csv(src)
    df.loc[7, "high"] = df.loc[7, "low"] / 2
    bad = tmp_path / "BTCUSDT-1m-2023-01-bad.csv"
    df.to_csv(bad, index=False)
    with pytest.raises(InvalidCandle) as err:
        read_klines(bad)
    # data row 7 is line 9 of the file: the header is line 1
    assert err.value.rule == "high_bound" and err.value.row == 9 and err.value.path == str(bad)


_FIELDS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base")
_ANY_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 99.0, 100.0, 101.0, 1e-300]),
)


@given(
    st.dictionaries(st.sampled_from(_FIELDS), _ANY_NUMBER, max_size=4),
    st.one_of(st.none(), st.just(math.nan), _ANY_NUMBER),
    st.one_of(st.integers(-2, 10), st.floats(allow_nan=True)),
)
def test_fast_path_agrees_with_the_rule_by_rule_check(
    change: dict[str, float], spread: float | None, trades: Any
) -> None:
    """``check_candle``'s one-comparison fast path accepts exactly what the rules accept
    (NaN spread means absent in both)."""
    candle = {**GOOD, **change, "spread_bps": spread, "trades": trades}
    try:
        check_candle(candle)
        fast_ok = True
    except InvalidCandle:
        fast_ok = False
    try:
        _name_the_rule(candle.get, None)
        rules_ok = True
    except InvalidCandle:
        rules_ok = False
    assert fast_ok == rules_ok, candle

"""StreamingFeatures: bad candles change nothing, outcomes, the kept-rows window, warm()."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_infer import InvalidCandle
from stream_infer.features import WARMUP, Outcome, StreamingFeatures, batch_features
from tests.features._tol import assert_close

MINUTE = 60_000

# (change to the next good candle, rule it breaks)
BAD: list[tuple[dict[str, Any], str]] = [
    ({"close": math.nan}, "finite"),
    ({"high": math.inf}, "finite"),
    ({"volume": -math.inf}, "finite"),
    ({"spread_bps": math.inf}, "finite"),
    ({"spread_bps": "wide"}, "numeric"),
    ({"open": None}, "numeric"),
    ({"open": -1.0, "low": -2.0}, "price_positive"),
    ({"low": 0.0}, "price_positive"),
    ({"high": 0.5, "low": 1.0}, "high_bound"),
    ({"low": 1e9}, "low_bound"),
    ({"volume": -1.0, "taker_buy_base": -2.0}, "volume_nonneg"),
    ({"taker_buy_base": 1e12}, "taker_buy_bounds"),
    ({"trades": 2.5}, "trades_integer"),
    ({"trades": -1}, "trades_integer"),
    ({"trades": "7"}, "trades_integer"),
    ({"spread_bps": -0.5}, "spread_nonneg"),
    ({"open_time": None}, "open_time_integer"),
    ({"open_time": 1.5}, "open_time_integer"),
    ({"open_time": "soon"}, "open_time_integer"),
    ({"open_time_offset": 30_000}, "open_time_grid"),
    ({"open_time_offset": 10 * MINUTE + 1}, "open_time_grid"),
]


@pytest.fixture(scope="module")
def recs(near_month: pd.DataFrame) -> list[dict[str, Any]]:
    return near_month.iloc[:700].to_dict("records")


def _bad(good: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    bad = {**good, **change}
    if "open_time_offset" in change:
        bad["open_time"] = good["open_time"] - MINUTE + bad.pop("open_time_offset")
    return bad


@settings(max_examples=40, deadline=None, derandomize=True)
@given(at=st.integers(1, 650), which=st.integers(0, len(BAD) - 1), keep=st.sampled_from([0, 3]))
def test_a_bad_candle_raises_and_changes_nothing(
    recs: list[dict[str, Any]], at: int, which: int, keep: int
) -> None:
    change, rule = BAD[which]
    hit, control = StreamingFeatures(keep_rows=keep), StreamingFeatures(keep_rows=keep)
    hit.warm(recs[:at])
    control.warm(recs[:at])
    before = (hit.last_outcome, hit.last_filled, hit.stream_length, hit.last_open_time)
    with pytest.raises(InvalidCandle) as err:
        hit.update(_bad(recs[at], change))
    assert err.value.rule == rule
    assert (hit.last_outcome, hit.last_filled, hit.stream_length, hit.last_open_time) == before
    for rec in recs[at : at + 30]:
        a, b = hit.update(rec), control.update(rec)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            np.testing.assert_array_equal(a, b)
        assert hit.last_outcome is control.last_outcome
    np.testing.assert_array_equal(hit.window(), control.window())


def test_outcomes(recs: list[dict[str, Any]]) -> None:
    sf = StreamingFeatures()
    assert sf.last_outcome is None and not sf.ready and sf.last_open_time is None
    assert sf.last_close is None
    for i, rec in enumerate(recs[:WARMUP]):
        vec = sf.update(rec)
        assert (vec is None) == (i < WARMUP - 1)
        assert sf.last_outcome is (Outcome.READY if i == WARMUP - 1 else Outcome.WARMING)
    assert sf.ready and sf.stream_length == WARMUP
    assert sf.last_open_time == recs[WARMUP - 1]["open_time"]
    assert sf.last_close == recs[WARMUP - 1]["close"]
    assert sf.update(recs[WARMUP - 1]) is None and sf.last_outcome is Outcome.DUPLICATE
    assert sf.update(recs[3]) is None and sf.last_outcome is Outcome.LATE
    assert sf.stream_length == WARMUP
    gap = {**recs[WARMUP], "open_time": recs[WARMUP - 1]["open_time"] + 4 * MINUTE}
    assert sf.update(gap) is not None
    assert sf.last_outcome is Outcome.READY and sf.last_filled == 3
    assert sf.stream_length == WARMUP + 4
    far = {**recs[WARMUP + 1], "open_time": gap["open_time"] + 62 * MINUTE}
    assert sf.update(far) is None
    assert sf.last_outcome is Outcome.RESTARTED and sf.last_filled == 0
    assert sf.stream_length == 1 and not sf.ready
    sf.reset()
    assert sf.stream_length == 0 and sf.last_open_time is None


def test_returned_vectors_are_fresh(recs: list[dict[str, Any]]) -> None:
    sf = StreamingFeatures(keep_rows=4)
    sf.warm(recs[:WARMUP])
    a = sf.update(recs[WARMUP])
    assert a is not None and a.shape == (27,) and a.dtype == np.float64
    kept = sf.window(1)
    a[:] = 0.0
    np.testing.assert_array_equal(sf.window(1), kept)
    w = sf.window()
    w[:] = 0.0
    np.testing.assert_array_equal(sf.window(1), kept)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(keep=st.integers(1, 70), extra=st.integers(0, 200), n=st.integers(0, 70))
def test_window_ring(recs: list[dict[str, Any]], keep: int, extra: int, n: int) -> None:
    """window(n) is the last n ready rows in order, across wrap-arounds of the ring."""
    sf = StreamingFeatures(keep_rows=keep)
    sf.warm(recs[: WARMUP - 1])
    assert sf.rows_available == 0
    got = []
    for rec in recs[WARMUP - 1 : WARMUP + extra]:
        vec = sf.update(rec)
        assert vec is not None
        got.append(vec)
    assert sf.rows_available == min(keep, len(got))
    if n > sf.rows_available:
        with pytest.raises(ValueError):
            sf.window(n)
        return
    w = sf.window(n)
    assert w.shape == (n, 27)
    want = np.array(got[len(got) - n :]).reshape(n, 27)
    np.testing.assert_array_equal(w, want)
    np.testing.assert_array_equal(sf.window(), np.array(got[-sf.rows_available :]))


def test_warm_fills_the_window(recs: list[dict[str, Any]], near_month: pd.DataFrame) -> None:
    sf = StreamingFeatures(keep_rows=64)
    sf.warm(recs[:600])
    assert sf.ready and sf.rows_available == 64
    batch = batch_features(near_month.iloc[:600]).to_numpy()
    assert_close(sf.window(64), batch[-64:], "warm window")
    assert StreamingFeatures().window().shape == (0, 27)
    with pytest.raises(ValueError):
        StreamingFeatures().window(1)


def test_candle_with_ready_window_after_restart_warms_again(recs: list[dict[str, Any]]) -> None:
    sf = StreamingFeatures(keep_rows=10)
    sf.warm(recs[:450])
    assert sf.rows_available == 10
    late = {**recs[450], "open_time": recs[449]["open_time"] + 100 * MINUTE}
    sf.update(late)
    assert sf.rows_available == 0 and sf.last_outcome is Outcome.RESTARTED


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        StreamingFeatures(interval_ms=0)
    with pytest.raises(ValueError):
        StreamingFeatures(keep_rows=-1)
    sf = StreamingFeatures(interval_ms=300_000, keep_rows=2)
    assert sf.interval_ms == 300_000 and sf.keep_rows == 2

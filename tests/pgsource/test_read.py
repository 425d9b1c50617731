"""The row checks of the Postgres reads, on plain rows (no database): every bad row is
refused with its reason and only good candles come out."""

from __future__ import annotations

import math
from typing import Any

import pytest

from stream_infer.candles import CANDLE_COLUMNS
from stream_infer.features import MAX_GAP
from stream_infer.pgsource import DUPLICATE, checked, stream_since_restart
from stream_infer.pgsource._read import window_candles, window_start

MIN = 60_000
T0 = 1_675_209_600_000


def row(i: int, **changes: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "symbol": "NEARUSDT",
        "interval": "1m",
        "open_time": T0 + i * MIN,
        "close_time": T0 + i * MIN + MIN - 1,
        "open": 2.0,
        "high": 2.1,
        "low": 1.9,
        "close": 2.05,
        "volume": 100.0,
        "quote_volume": 205.0,
        "trades": 10,
        "taker_buy_base": 40.0,
        "taker_buy_quote": 82.0,
        "spread_bps": None,
    }
    r.update(changes)
    assert set(r) == set(CANDLE_COLUMNS)
    return r


def test_good_rows_pass_unchanged() -> None:
    rows = [row(i) for i in range(5)]
    good, bad = checked(rows, MIN)
    assert bad == []
    assert [c.open_time for c in good] == [r["open_time"] for r in rows]
    assert good[2].close == 2.05 and good[2].trades == 10


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"close": math.nan}, "rule:finite"),
        ({"volume": math.inf}, "rule:finite"),
        ({"high": 1.8, "low": 1.9}, "rule:high_bound"),  # high < low
        ({"high": 2.1, "low": 2.2}, "rule:low_bound"),  # high < low, the other way round
        ({"open": -1.0}, "rule:price_positive"),
        ({"taker_buy_base": 500.0}, "rule:taker_buy_bounds"),
        ({"symbol": "X" * 65}, "schema:symbol"),
    ],
)
def test_a_bad_row_is_refused_with_its_reason(changes: dict[str, Any], reason: str) -> None:
    rows = [row(0), row(1, **changes), row(2)]
    good, bad = checked(rows, MIN)
    assert [c.open_time for c in good] == [T0, T0 + 2 * MIN]
    assert len(bad) == 1
    assert (bad[0].open_time, bad[0].reason) == (T0 + MIN, reason)
    assert reason in str(bad[0]) and bad[0].symbol in str(bad[0])


def test_identical_duplicates_keep_one() -> None:
    good, bad = checked([row(0), row(1), row(1), row(2)], MIN)
    assert [c.open_time for c in good] == [T0, T0 + MIN, T0 + 2 * MIN]
    assert [(b.open_time, b.reason) for b in bad] == [(T0 + MIN, DUPLICATE)]
    assert "identical" in bad[0].error


def test_identical_copies_of_a_nan_row_are_one_bad_row() -> None:
    good, bad = checked([row(0), row(1, close=math.nan), row(1, close=math.nan)], MIN)
    assert [c.open_time for c in good] == [T0]
    assert sorted(b.reason for b in bad) == [DUPLICATE, "rule:finite"]


def test_differing_duplicates_are_all_refused() -> None:
    good, bad = checked([row(0), row(1), row(1, close=2.08), row(2)], MIN)
    assert [c.open_time for c in good] == [T0, T0 + 2 * MIN]  # the stream fills t=1 as a gap
    assert [(b.open_time, b.reason) for b in bad] == [(T0 + MIN, DUPLICATE)] * 2
    assert "differ" in bad[0].error


def test_off_the_grid_after_the_previous_candle() -> None:
    good, bad = checked([row(0), row(1, open_time=T0 + MIN + 7), row(2)], MIN)
    assert [c.open_time for c in good] == [T0, T0 + 2 * MIN]
    assert [b.reason for b in bad] == ["rule:open_time_grid"]
    # what the stream holds already counts as the previous candle
    good, bad = checked([row(5, open_time=T0 + 5 * MIN + 1)], MIN, previous=T0)
    assert good == [] and [b.reason for b in bad] == ["rule:open_time_grid"]


def test_anchor_only_when_the_window_start_is_missing() -> None:
    need = 10
    newest = T0 + 20 * MIN
    lo = window_start(newest, need, MIN)
    assert lo == T0 + 11 * MIN
    full = [row(i) for i in range(11, 21)]
    good, _ = window_candles(full, row(9), lo, MIN)
    assert [c.open_time for c in good] == [r["open_time"] for r in full]  # not needed
    gap = [row(i) for i in range(13, 21)]  # the window's first two are missing
    good, _ = window_candles(gap, row(9), lo, MIN)
    assert good[0].open_time == T0 + 9 * MIN  # the gap is filled from the row before
    good, bad = window_candles(gap, row(9, close=math.nan), lo, MIN)
    assert good[0].open_time == T0 + 13 * MIN and [b.reason for b in bad] == ["rule:finite"]


def test_stream_since_restart_counts_filled_gaps_and_finds_restarts() -> None:
    times = [T0 + i * MIN for i in (0, 1, 2, 5, 6)]  # two filled candles
    assert stream_since_restart(times, MIN) == (7, None)
    late = T0 + (6 + MAX_GAP + 2) * MIN  # MAX_GAP + 1 missing: a restart
    assert stream_since_restart([*times, late, late + MIN], MIN) == (2, MAX_GAP + 1)
    edge = T0 + (6 + MAX_GAP + 1) * MIN  # MAX_GAP missing: filled
    assert stream_since_restart([*times, edge], MIN) == (8 + MAX_GAP, None)
    assert stream_since_restart([], MIN) == (0, None)

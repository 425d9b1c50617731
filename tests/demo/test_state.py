"""The demo's bookkeeping: counts, latency scopes, versions, the summary line (pure)."""

from __future__ import annotations

import math
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_infer.demo import DemoState, quantiles
from stream_infer.features import WARMUP
from tests.demo._util import candles, prediction

SUMMARY = re.compile(
    r"^summary: candles=(\d+) predictions=(\d+) dead_letters=(\d+) "
    r"latency_ms p50=(\S+) p99=(\S+) symbols=(\d+) version=(\S+)$"
)

BTC = candles("BTCUSDT", 520)
NEAR = candles("NEARUSDT", 520)


def _state() -> DemoState:
    return DemoState([("BTCUSDT", "1m"), ("NEARUSDT", "1m")])


def test_summary_line_counts_and_latency_of_the_live_part() -> None:
    state = _state()
    for i, c in enumerate(BTC):
        state.sent(c, at=float(i), live=i >= 500)
    for i, c in enumerate(NEAR[:480]):
        state.sent(c, at=float(i), live=False)
    # catching up: slow (the whole prefix batch); live: fast
    for c in BTC[462:500]:
        state.predicted(prediction(c, latency=100.0), at=600.0)
    for k, c in enumerate(BTC[500:]):
        state.predicted(prediction(c, latency=1.0 + k), at=600.0)
    for c in NEAR[462:480]:
        state.predicted(prediction(c, latency=90.0), at=600.0)
    state.candles_processed = 1000
    state.dead_letters = 2
    s = state.summary()
    m = SUMMARY.match(s.line())
    assert m, s.line()
    assert m.groups() == ("1000", str(38 + 20 + 18), "2", "10.50", "19.81", "2", "v1")
    assert (s.latency_scope, s.latency_n, s.catchup_n) == ("live", 20, 38 + 18)
    assert s.catchup_p50 == 100.0
    assert s.per_symbol == {"BTCUSDT": 58, "NEARUSDT": 18}
    assert s.candles_sent == 1000


def test_without_a_live_part_latency_covers_everything() -> None:
    state = _state()
    for i, c in enumerate(BTC[:470]):
        state.sent(c, at=float(i), live=False)
    for c in BTC[462:470]:
        state.predicted(prediction(c, latency=7.0), at=500.0)
    s = state.summary()
    assert (s.latency_scope, s.latency_n, s.latency_p50) == ("all", 8, 7.0)


def test_no_predictions_says_n_a_and_none() -> None:
    line = _state().summary().line()
    assert line.endswith("latency_ms p50=n/a p99=n/a symbols=0 version=none")
    assert SUMMARY.match(line)


def test_redelivery_counts_once_and_a_new_version_is_a_change() -> None:
    state = _state()
    for i, c in enumerate(BTC):
        state.sent(c, at=float(i), live=True)
    assert state.predicted(prediction(BTC[470]), at=1.0)
    assert not state.predicted(prediction(BTC[470]), at=2.0)  # same key: a duplicate
    assert state.predicted(prediction(BTC[471], version="v1-b", ensemble_id="2"), at=3.0)
    assert state.predicted(prediction(BTC[472], version="v1-b", ensemble_id="2"), at=3.0)
    s = state.summary()
    assert (s.predictions, s.duplicates) == (3, 1)
    assert s.per_version == {"v1": 1, "v1-b": 2}
    assert s.version == "v1-b"
    assert state.version_changes == [("BTCUSDT", BTC[471].open_time, "v1", "v1-b")]
    # the board shows the close of the candle the prediction was made from
    assert state.boards["BTCUSDT"].last_close == BTC[472].close


def test_caught_up_waits_for_the_last_predictable_candle_of_every_symbol() -> None:
    state = _state()
    for c in BTC[:470]:
        state.sent(c, at=0.0, live=False)
    for c in NEAR[:WARMUP]:  # cannot predict yet: not waited for
        state.sent(c, at=0.0, live=False)
    assert not state.caught_up(462)
    state.predicted(prediction(BTC[468]), at=1.0)
    assert not state.caught_up(462)
    state.predicted(prediction(BTC[469]), at=1.0)
    assert state.caught_up(462)


def test_quantiles() -> None:
    assert all(math.isnan(q) for q in quantiles([]))
    assert quantiles([1.0, 2.0, 3.0]) == (2.0, 2.98)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(462, 519), st.sampled_from(["1", "2"])), max_size=60))
def test_predictions_are_the_distinct_keys_whatever_the_redeliveries(
    picks: list[tuple[int, str]],
) -> None:
    state = _state()
    for c in BTC:
        state.sent(c, at=0.0, live=True)
    for i, eid in picks:
        state.predicted(prediction(BTC[i], ensemble_id=eid, version=f"v{eid}"), at=1.0)
    distinct = set(picks)
    s = state.summary()
    assert s.predictions == len(distinct)
    assert s.duplicates == len(picks) - len(distinct)
    assert sum(s.per_version.values()) == len(distinct)

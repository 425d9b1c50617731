"""The pipeline core against fakes of the features and the ensemble (unit tests)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from stream_infer import InvalidCandle, ModelError
from stream_infer.candles import Candle
from stream_infer.events import candle_to_dict, encode_candle, encode_prediction
from stream_infer.pipeline import Counts, Inbound, Pipeline
from tests.pipeline.fakes import FakeEnsemble, FakeFeatures, FakeResult, candle, fake_factory

WARMUP = 3


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 0.001  # every reading advances 1 ms
        return self.t


def make(ens: FakeEnsemble | None = None, **kw: Any) -> Pipeline:
    kw.setdefault("features", fake_factory(WARMUP))
    kw.setdefault("now_ms", lambda: 1_700_000_000_000)
    return Pipeline(ens, **kw)


def msgs(candles: list[Candle], partition: int = 0, start: int = 0) -> list[Inbound]:
    return [Inbound(encode_candle(c), partition, start + k, 100.0) for k, c in enumerate(candles)]


def test_readiness_rule_first_prediction_at_warmup_plus_seq_len() -> None:
    ens = FakeEnsemble(seq_len=4)
    p = make(ens)
    out = p.process(msgs([candle(i) for i in range(10)]))
    first = WARMUP - 1 + ens.seq_len - 1
    assert [x.open_time for x in out.predictions] == [candle(i).open_time for i in range(first, 10)]
    assert out.counts.ready == out.counts.predictions == 10 - first
    assert out.counts.warming == first
    assert out.counts.candles == out.counts.messages == 10
    assert out.offsets == {0: 9}


def test_one_model_call_per_batch_across_streams_keyed_right() -> None:
    ens = FakeEnsemble(seq_len=2)
    p = make(ens)
    symbols = ["AAA", "BBB", "CCC"]
    history = [
        candle(i, s, close=100 + i + k / 10) for i in range(6) for k, s in enumerate(symbols)
    ]
    p.process(msgs(history))
    ens.calls.clear()
    live = [candle(6, s, close=200 + k / 10 + 0.05) for k, s in enumerate(symbols)]
    out = p.process(msgs(live, start=100))
    assert len(ens.calls) == 1 and ens.calls[0].shape == (3, 2, 27)
    assert [x.symbol for x in out.predictions] == symbols
    for k, (x, w) in enumerate(zip(out.predictions, ens.calls[0], strict=True)):
        assert x.open_time == candle(6).open_time == int(w[-1, 0])
        assert w[-1, 1] == live[k].close and w[-2, 1] == history[5 * 3 + k].close
        assert x.key == (symbols[k], "1m", x.open_time, "fake-1")
        assert x.predictions == pytest.approx([live[k].close % 1.0] * 3)
        assert x.components == {
            "mamba": pytest.approx([live[k].close % 1.0 + 0.01] * 3),
            "lgbm": pytest.approx([live[k].close % 1.0 - 0.01] * 3),
        }
        assert (x.ensemble_id, x.version, x.feature_version) == ("fake-1", "v1", 1)
        assert x.produced_at == 1_700_000_000_000


def test_several_ready_candles_of_one_stream_each_get_their_own_window() -> None:
    ens = FakeEnsemble(seq_len=3)
    p = make(ens)
    out = p.process(msgs([candle(i) for i in range(9)]))
    (call,) = ens.calls
    assert call.shape == (5, 3, 27)
    for b, x in enumerate(out.predictions):
        expect = [candle(i).open_time for i in range(b + 2, b + 5)]
        assert call[b, :, 0].tolist() == expect and int(call[b, -1, 0]) == x.open_time


def test_latency_is_measured_from_received_to_the_end_of_the_batch() -> None:
    clock = Clock()
    p = make(FakeEnsemble(seq_len=1), clock=clock)
    batch = [Inbound(encode_candle(candle(i)), 0, i, 100.0 + i * 0.010) for i in range(5)]
    out = p.process(batch)
    end = clock.t - 0.001  # the reading before produced_at was the last one
    lat = [x.latency_ms for x in out.predictions]
    assert lat == pytest.approx([(end - 100.0 - i * 0.010) * 1000 for i in range(2, 5)])
    assert out.times.decode > 0 and out.times.features > 0 and out.times.models > 0


def test_swap_takes_effect_on_the_next_batch_only() -> None:
    old, new = (
        FakeEnsemble(seq_len=2, ensemble_id="old"),
        FakeEnsemble(seq_len=2, ensemble_id="new"),
    )
    p = make(old)
    # a swap while the batch is being predicted (another thread) must not change the batch
    old.on_predict = lambda: p.swap(new)
    first = p.process(msgs([candle(i) for i in range(6)]))
    assert {x.ensemble_id for x in first.predictions} == {"old"} and first.ensemble is old
    assert p.ensemble is new
    second = p.process(msgs([candle(i) for i in range(6, 8)], start=6))
    assert {x.ensemble_id for x in second.predictions} == {"new"} and len(new.calls) == 1
    assert p.swap(None) is new


def test_disabled_updates_state_and_predicts_nothing() -> None:
    p = make(None)
    out = p.process(msgs([candle(i) for i in range(10)]))
    assert out.predictions == [] and out.ensemble is None
    assert out.counts.ready == 10 - (WARMUP - 1)
    st = p.stream_state("BTCUSDT", "1m")
    assert st is not None and st.ready and st.last_open_time == candle(9).open_time
    # enabling later serves at once: the state was kept
    ens = FakeEnsemble(seq_len=1)
    p.swap(ens)
    assert len(p.process(msgs([candle(10)], start=10)).predictions) == 1


def test_not_closed_duplicates_late_gaps_restarts_are_counted() -> None:
    p = make(FakeEnsemble(seq_len=1))
    p.process(msgs([candle(i) for i in range(5)]))
    batch = [
        candle(5, is_closed=False),
        candle(4),  # duplicate
        candle(2),  # late
        candle(8),  # 3 candles missing (5, 6, 7): filled
        candle(8 + 62),  # 61 missing: a new stream starts
    ]
    out = p.process(msgs(batch, start=5))
    c = out.counts
    assert (c.not_closed, c.duplicates, c.late, c.gap_filled, c.restarts) == (1, 1, 1, 3, 1)
    assert c.candles == 4 and [x.open_time for x in out.predictions] == [candle(8).open_time]
    assert out.offsets == {0: 9}


BAD: list[tuple[bytes | None, str]] = [
    (None, "empty"),
    (b"\x00\x01", "not_json"),
    (b"[]", "not_object"),
    (orjson.dumps({**candle_to_dict(candle(9)), "interval": "2m"}), "interval"),
    (orjson.dumps({**candle_to_dict(candle(9)), "close": "x"}), "schema:close"),
    (orjson.dumps({**candle_to_dict(candle(9)), "high": 1.0}), "rule:high_bound"),
    (orjson.dumps({**candle_to_dict(candle(9)), "trades": -3}), "rule:trades_integer"),
]


@pytest.mark.parametrize(("value", "reason"), BAD)
def test_bad_input_is_dead_lettered_and_leaves_state_untouched(
    value: bytes | None, reason: str
) -> None:
    ens_a, ens_b = FakeEnsemble(seq_len=2), FakeEnsemble(seq_len=2)
    a, b = make(ens_a), make(ens_b)
    warm = msgs([candle(i) for i in range(8)])
    a.process(warm)
    b.process(warm)
    before = a.stream_state("BTCUSDT", "1m")
    out = a.process([Inbound(value, 2, 77, 100.0, topic="candles", timestamp_ms=5, key=b"k")])
    assert out.predictions == [] and out.offsets == {2: 77}
    (dl,) = out.dead_letters
    assert (dl.reason, dl.topic, dl.partition, dl.offset, dl.timestamp_ms) == (
        reason,
        "candles",
        2,
        77,
        5,
    )
    assert dl.original == (value or b"") and dl.failed_at == 1_700_000_000_000
    assert out.counts.dead_letters == {reason: 1}
    after = a.stream_state("BTCUSDT", "1m")
    assert after is not None and before is not None
    assert after._replace(partition=0) == before._replace(partition=0)
    # the same next candle gives bit-identical results with and without the bad message
    nxt = msgs([candle(8)], start=8)
    pa, pb = a.process(nxt).predictions, b.process(nxt).predictions
    assert [x.predictions for x in pa] == [x.predictions for x in pb] and len(pa) == 1
    assert np.array_equal(ens_a.calls[-1], ens_b.calls[-1])


def test_a_candle_the_stream_refuses_is_dead_lettered() -> None:
    class Refusing(FakeFeatures):
        def update(self, candle: Candle) -> np.ndarray | None:
            if candle.open_time % 60_000:
                raise InvalidCandle("off the grid", rule="open_time_grid")
            return super().update(candle)

    p = make(FakeEnsemble(seq_len=1), features=lambda ms, keep: Refusing(ms, keep, warmup=1))
    out = p.process(msgs([candle(0), candle(1, open_time=candle(1).open_time + 7), candle(2)]))
    assert [d.reason for d in out.dead_letters] == ["rule:open_time_grid"]
    assert out.dead_letters[0].offset == 1
    assert [x.open_time for x in out.predictions] == [candle(0).open_time, candle(2).open_time]
    assert out.counts.candles == 2


def test_drop_partitions_forgets_their_streams() -> None:
    p = make(FakeEnsemble(seq_len=1))
    p.process(msgs([candle(i, "AAA") for i in range(5)], partition=0))
    p.process(msgs([candle(i, "BBB") for i in range(5)], partition=1))
    assert p.streams == 2
    assert p.drop_partitions([1, 7]) == 1
    assert p.streams == 1 and p.stream_state("BBB", "1m") is None
    st = p.stream_state("AAA", "1m")
    assert st is not None and st.partition == 0
    assert p.drop_partitions([0]) == 1 and p.streams == 0


def test_warm_rebuilds_state_so_the_next_live_candle_is_predicted() -> None:
    ens = FakeEnsemble(seq_len=4)
    p = make(ens)
    history = [candle(i, s) for i in range(20) for s in ("AAA", "BBB")]  # consumption order
    history.append(candle(3, "AAA", is_closed=False))
    counts = p.warm(history, partition=5)
    assert counts.candles == 40 and counts.not_closed == 1 and ens.calls == []
    assert {s.partition for s in p.stream_states()} == {5}
    out = p.process(msgs([candle(20, "AAA"), candle(20, "BBB")], partition=5))
    assert len(out.predictions) == 2 and len(ens.calls) == 1
    assert ens.calls[0][0, :, 0].tolist() == [candle(i).open_time for i in range(17, 21)]
    # warm replaces a stream: feeding an older history rewinds it
    p.warm([candle(i, "AAA") for i in range(3)])
    st = p.stream_state("AAA", "1m")
    assert st is not None and st.last_open_time == candle(2).open_time and st.partition is None


def test_warm_in_consumption_order_reproduces_the_live_state() -> None:
    # A gap is filled synthetically; the real candle arrives late and live drops it.
    # Rebuilding from the same records in offset order must drop it too, so the next
    # window is the live one (real features: WARMUP candles of warm-up).
    order = [*range(405), 406, 407, 405, *range(408, 420)]
    history, last = [candle(i) for i in order], candle(420)
    live_ens, rebuilt_ens = FakeEnsemble(seq_len=4), FakeEnsemble(seq_len=4)
    live = Pipeline(live_ens, now_ms=lambda: 0)
    live.process(msgs(history))
    rebuilt = Pipeline(rebuilt_ens, now_ms=lambda: 0)
    counts = rebuilt.warm(history)
    assert counts.late == 1 and counts.gap_filled == 1
    live_ens.calls.clear()
    live.process(msgs([last], start=len(order)))
    rebuilt.process(msgs([last], start=len(order)))
    assert len(live_ens.calls) == len(rebuilt_ens.calls) == 1
    np.testing.assert_array_equal(live_ens.calls[0], rebuilt_ens.calls[0])


def test_warm_counts_bad_history_without_failing() -> None:
    p = make(None)
    bad = Candle(**{**candle_to_dict(candle(1)), "high": 1.0})
    counts = p.warm([candle(0), bad, candle(2)])
    assert counts.candles == 2 and counts.dead_letters == {"rule:high_bound": 1}
    assert counts.gap_filled == 1


def test_swap_to_a_longer_seq_len_renews_short_streams() -> None:
    p = make(FakeEnsemble(seq_len=2), keep_rows=3)
    p.process(msgs([candle(i) for i in range(10)]))
    assert p.keep_rows == 3 and p.stale_streams() == []
    longer = FakeEnsemble(seq_len=5, ensemble_id="long")
    p.swap(longer)
    assert p.keep_rows == 5 and p.stale_streams() == [("BTCUSDT", "1m")]
    # the short stream is replaced on its next candle and warms up again ...
    out = p.process(msgs([candle(i) for i in range(10, 20)], start=10))
    first = 10 + WARMUP - 1 + 5 - 1
    assert [x.open_time for x in out.predictions] == [candle(i).open_time for i in range(first, 20)]
    assert p.stale_streams() == []
    # ... unless it is rebuilt from history first
    p.swap(FakeEnsemble(seq_len=7))
    p.warm([candle(i) for i in range(20)])
    assert len(p.process(msgs([candle(20)], start=20)).predictions) == 1


def test_model_output_of_the_wrong_shape_is_a_model_error() -> None:
    class Wrong(FakeEnsemble):
        def predict(self, windows: np.ndarray) -> FakeResult:
            r = super().predict(windows)
            return FakeResult(r.probabilities[:, :2], r.confidences, r.mamba, r.lgbm)

    p = make(Wrong(seq_len=1))
    with pytest.raises(ModelError):
        p.process(msgs([candle(i) for i in range(5)]))


def test_non_finite_model_output_gives_no_prediction() -> None:
    class Nan(FakeEnsemble):
        def predict(self, windows: np.ndarray) -> FakeResult:
            r = super().predict(windows)
            r.probabilities[0, 1] = np.nan
            return r

    out = make(Nan(seq_len=1)).process(msgs([candle(i) for i in range(5)]))
    assert out.counts.not_finite == 1 and len(out.predictions) == 2


def test_predictions_encode_and_counts_accumulate() -> None:
    p = make(FakeEnsemble(seq_len=1))
    total = Counts()
    for k in range(3):
        out = p.process(msgs([candle(i) for i in range(k * 4, k * 4 + 4)], start=k * 4))
        total.add(out.counts)
        for x in out.predictions:
            assert orjson.loads(encode_prediction(x))["open_time"] == x.open_time
    total.add(Counts(dead_letters={"x": 2}))
    assert total.messages == total.candles == 12 and total.predictions == 12 - (WARMUP - 1)
    assert total.dead_letters == {"x": 2}


def test_streams_are_keyed_by_symbol_and_interval() -> None:
    p = make(FakeEnsemble(seq_len=1))
    five = [candle(i * 5, interval="5m") for i in range(4)]
    out = p.process(msgs([*[candle(i) for i in range(4)], *five]))
    assert p.streams == 2
    assert sorted({(x.interval, x.open_time) for x in out.predictions}) == sorted(
        [("1m", candle(i).open_time) for i in (2, 3)]
        + [("5m", candle(i * 5).open_time) for i in (2, 3)]
    )


def test_enabling_a_model_later_needs_no_rebuild_within_the_headroom() -> None:
    p = make(None)  # keep_rows defaults to 64
    p.process(msgs([candle(i) for i in range(80)]))
    p.swap(FakeEnsemble(seq_len=16))
    assert p.stale_streams() == []
    out = p.process(msgs([candle(80)], start=80))
    assert [x.open_time for x in out.predictions] == [candle(80).open_time]
    p.swap(FakeEnsemble(seq_len=65))
    assert p.stale_streams() == [("BTCUSDT", "1m")]


def test_hold_stops_before_a_new_stream_and_lists_every_new_stream_of_the_rest() -> None:
    ens = FakeEnsemble(seq_len=2)
    p = make(ens)
    p.warm([candle(i, "OLD") for i in range(10)], partition=0)
    batch = [
        *msgs([candle(10, "OLD")], partition=0, start=0),
        Inbound(b"not json", 0, 1, 100.0),
        *msgs([candle(20, "NEW")], partition=0, start=2),  # held here
        *msgs([candle(11, "OLD")], partition=0, start=3),
        *msgs([candle(5, "OTHER", is_closed=False)], partition=1, start=0),  # changes nothing
        *msgs([candle(6, "OTHER"), candle(7, "OTHER")], partition=1, start=1),
        *msgs([candle(21, "NEW")], partition=0, start=4),
        *msgs([candle(3, "FREE")], partition=2, start=0),  # hold refuses it: not listed
    ]
    asked: list[tuple[int, str, str]] = []

    def hold(partition: int, symbol: str, interval: str) -> bool:
        asked.append((partition, symbol, interval))
        return symbol != "FREE"

    out = p.process(batch, hold=hold)
    assert out.held_at == 2
    assert [(h.partition, h.offset, h.candle.symbol, h.candle.open_time) for h in out.held] == [
        (0, 2, "NEW", candle(20).open_time),
        (1, 1, "OTHER", candle(6).open_time),
    ]
    # only what came before the held message was processed, and is committable
    assert [x.open_time for x in out.predictions] == [candle(10).open_time]
    assert out.offsets == {0: 1} and out.counts.messages == 2
    assert len(out.dead_letters) == 1 and p.stream_state("NEW", "1m") is None
    assert ("FREE" not in {s.symbol for s in p.stream_states()}) and asked

    # the caller warms the held streams, then goes on from the held message
    p.warm([candle(i, "NEW") for i in range(10, 20)], partition=0)
    rest = p.process(batch[out.held_at :], hold=lambda *_: False)
    assert rest.held_at is None and rest.held == ()
    assert [(x.symbol, x.open_time) for x in rest.predictions] == [
        ("NEW", candle(20).open_time),
        ("OLD", candle(11).open_time),
        ("NEW", candle(21).open_time),
    ]
    assert rest.offsets == {0: 4, 1: 2, 2: 0}
    # without ``hold`` nothing changes: streams start cold
    assert make(ens).process(batch).held_at is None


def test_hold_also_claims_a_stream_too_short_for_a_new_ensemble() -> None:
    p = make(FakeEnsemble(seq_len=2), keep_rows=2)
    p.warm([candle(i) for i in range(10)], partition=0)
    p.swap(FakeEnsemble(seq_len=4))
    out = p.process(msgs([candle(10)], start=10), hold=lambda *_: True)
    assert out.held_at == 0 and [h.candle.open_time for h in out.held] == [candle(10).open_time]
    p.warm([candle(i) for i in range(10)], partition=0)  # now 4 rows are kept
    again = p.process(msgs([candle(10)], start=10), hold=lambda *_: True)
    assert again.held_at is None and len(again.predictions) == 1

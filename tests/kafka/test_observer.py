"""The observer: one event, the same count in Stats and in Prometheus."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

from stream_infer.events import encode_candle
from stream_infer.kafka import (
    BatchClock,
    BatchDone,
    Observer,
    PrometheusObserver,
    Resolved,
    observer_for,
)
from stream_infer.ops import Metrics
from stream_infer.pipeline import Inbound, Pipeline, first_prediction_index
from tests.pipeline.fakes import FakeEnsemble, candle, fake_factory


def value(metric: Any, *labels: str) -> float:
    return float((metric.labels(*labels) if labels else metric)._value.get())


def test_observer_for_keeps_prometheus_only_when_asked() -> None:
    assert type(observer_for()) is Observer
    metrics = Metrics()
    obs = observer_for(None, metrics)
    assert isinstance(obs, PrometheusObserver) and obs.metrics is metrics


def test_each_broker_event_counts_once_in_both() -> None:
    metrics = Metrics()
    obs = PrometheusObserver(None, metrics)
    obs.connect_failed()
    obs.fetch_failed()
    obs.send_retried(3)
    obs.stalled("send")
    obs.commit_failed()
    obs.committed()
    obs.committed()
    obs.history_failed()
    obs.rebalanced()
    st = obs.stats
    assert (st.connect_failures, st.fetch_errors, st.send_retries, st.stalls) == (1, 1, 3, 1)
    assert (st.commit_failures, st.commits, st.history_failures, st.rebalances) == (1, 2, 1, 1)
    errors = metrics.broker_errors
    assert [value(errors, op) for op in ("connect", "fetch", "send", "commit", "history")] == [
        1,
        1,
        4,  # 3 retried + 1 stall
        1,
        1,
    ]
    assert value(metrics.commits) == 2 and value(metrics.rebalances) == 1
    obs.reachable(True)
    obs.serving(True)
    assert value(metrics.broker_reachable) == 1 and value(metrics.ready) == 1
    obs.rebalanced()
    assert value(metrics.ready) == 0, "a rebalance is not ready until settled"


def test_history_events() -> None:
    metrics = Metrics()
    obs = PrometheusObserver(None, metrics)
    obs.rebuilt(500, 0.25)
    obs.candles_left_out(2)
    obs.streams_resolved(
        Resolved(
            from_source=[("A", "1m")], from_topic=[], cold=[("B", "1m"), ("C", "1m")], candles=9
        )
    )
    st = obs.stats
    assert (st.history_candles, st.history_seconds, st.history_failures) == (509, 0.25, 2)
    assert (st.history_postgres_streams, st.history_not_covered) == (1, 2)
    assert value(metrics.rebuilds) == 1
    assert [value(metrics.history_streams, s) for s in ("postgres", "topic", "none")] == [1, 0, 2]
    assert value(metrics.broker_errors, "history") == 0, "a left-out candle is no broker error"


class Record:
    def __init__(self, timestamp: int | None) -> None:
        self.timestamp = timestamp


def test_a_batch_into_stats_and_metrics() -> None:
    pipeline = Pipeline(FakeEnsemble(seq_len=2), features=fake_factory(3), now_ms=lambda: 0)
    msgs = [Inbound(encode_candle(candle(i, "AAA")), 0, i, 0.0, "candles") for i in range(8)]
    msgs.append(Inbound(b"{", 0, 8, 0.0, "candles"))
    result = pipeline.process(msgs)
    metrics = Metrics()
    obs = PrometheusObserver(None, metrics)
    tp = TopicPartition("candles", 0)
    clock = BatchClock(received=1.0, started=1.5, processed=2.0, acked=3.0, committed=3.5)
    obs.batch(BatchDone([result], clock, {tp: [Record(None)]}, lambda: 1, lambda _: 5))
    st = obs.stats
    n = 8 - first_prediction_index(2, warmup=3)
    assert (st.messages, st.candles, st.predictions, st.dead_letters, st.batches) == (9, 8, n, 1, 1)
    assert st.latency.count == n and st.latency.max == 2000.0
    assert st.process_ms.max == 500.0 and st.publish_ms.max == 1000.0 and st.commit_ms.max == 500.0
    assert value(metrics.candles) == 9 and value(metrics.predictions) == n
    assert sum(value(metrics.dead_letters, r) for r in st.dead_letter_reasons) == 1
    assert value(metrics.streams) == 1 and value(metrics.lag, "0") == 5
    # without Prometheus: the same Stats
    plain = Observer()
    plain.batch(BatchDone([result], clock, {tp: []}, lambda: 1, lambda _: 5))
    assert plain.stats.as_dict() == st.as_dict()

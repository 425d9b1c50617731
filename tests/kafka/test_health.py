"""Broker health without a broker: reachability, the idle probe, the stall watch."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from stream_infer.kafka import BrokerHealth, Observer, PartitionBook, PrometheusObserver
from stream_infer.ops import Metrics

P0 = TopicPartition("candles", 0)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeConsumer:
    def __init__(self, ends: dict[TopicPartition, int] | None = None) -> None:
        self.ends = ends or {}
        self.down = False
        self.asked = 0

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.asked += 1
        if self.down:
            raise KafkaConnectionError("gone")
        return {tp: self.ends[tp] for tp in tps}

    async def topics(self) -> set[str]:
        self.asked += 1
        if self.down:
            raise KafkaConnectionError("gone")
        return {"candles"}


def test_mark_logs_the_outage_once_it_is_over(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    health = BrokerHealth("b:9092", Observer(), monotonic=clock)
    assert not health.reachable
    caplog.set_level(logging.INFO, "stream_infer")
    health.mark(True)
    assert health.reachable and not caplog.records, "the first answer is not a comeback"
    health.mark(False)
    clock.t += 3.0
    health.mark(False)
    health.mark(True)
    assert [r.getMessage() for r in caplog.records] == ["Kafka at b:9092 answers again after 3.0 s"]


async def test_probe_asks_at_most_once_per_interval() -> None:
    clock = Clock()
    consumer = FakeConsumer({P0: 42})
    health = BrokerHealth("b:9092", Observer(), probe_interval_s=1.0, monotonic=clock)
    assert await health.probe(consumer) == {P0: 42}
    assert health.reachable
    clock.t += 0.5
    assert await health.probe(consumer) is None and consumer.asked == 1
    clock.t += 0.6
    consumer.ends = {}
    assert await health.probe(consumer) == {}, "nothing assigned: asks for the topics"
    assert consumer.asked == 2


async def test_a_probe_without_an_answer_marks_the_broker_down_and_counts_once() -> None:
    clock = Clock()
    obs = Observer()
    consumer = FakeConsumer({P0: 1})
    health = BrokerHealth("b:9092", obs, probe_interval_s=1.0, monotonic=clock)
    health.mark(True)
    consumer.down = True
    for _ in range(3):
        assert await health.probe(consumer) is None
        clock.t += 1.0
    assert not health.reachable
    assert obs.stats.fetch_errors == 1, "counted when it goes down, not at every probe"
    consumer.down = False
    assert await health.probe(consumer) == {P0: 1} and health.reachable


async def test_the_stall_watch_marks_down_then_back() -> None:
    metrics = Metrics()
    obs = PrometheusObserver(None, metrics)
    health = BrokerHealth("b:9092", obs, probe_interval_s=0.01)
    health.mark(True)
    seen: list[bool] = []
    async with health.stall_watch("commit", "the offset commit"):
        await asyncio.sleep(0.1)
        seen.append(health.reachable)
    assert seen == [False] and health.reachable
    assert obs.stats.stalls == 1
    assert metrics.broker_errors.labels("commit")._value.get() == 1
    async with health.stall_watch("send", "1 sends"):
        pass
    assert obs.stats.stalls == 1, "a quick wait is no stall"


def test_caught_up_sets_the_lag_of_ours_from_the_book() -> None:
    metrics = Metrics()
    obs = PrometheusObserver(None, metrics)
    book = PartitionBook()
    book.assign({P0}, {P0: 30}, held=())
    book.settle({P0})
    metrics.lag_seconds.labels("0").set(12)
    obs.caught_up({P0: 42, TopicPartition("candles", 1): 7}, book)
    assert metrics.lag.labels("0")._value.get() == 12
    assert metrics.lag_seconds.labels("0")._value.get() == 0
    assert metrics.lag.labels("1")._value.get() == 0, "not ours: left alone"

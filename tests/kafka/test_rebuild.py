"""The rebuilder without a broker: history into streams, and the search for a bad candle."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest
from aiokafka import TopicPartition

from stream_infer.candles import Candle
from stream_infer.events import encode_candle
from stream_infer.kafka import HistoryResult, Observer, Rebuilder, collect_history, history_need
from stream_infer.pipeline import Counts, Pipeline, ready_candles
from tests.pipeline.fakes import FakeEnsemble, candle, fake_factory

T = "candles"
P0, P1 = TopicPartition(T, 0), TopicPartition(T, 1)


class PickyPipeline(Pipeline):
    """``warm`` raises (like features hitting a bug) on any ``bad`` (symbol, open_time)."""

    def __init__(self, bad: Iterable[tuple[str, int]] = ()) -> None:
        super().__init__(FakeEnsemble(seq_len=2), features=fake_factory(3), now_ms=lambda: 0)
        self.bad = set(bad)
        self.warmed: list[list[int]] = []

    def warm(self, candles: Iterable[Candle], partition: int | None = None) -> Counts:
        cs = list(candles)
        hit = [c.open_time for c in cs if (c.symbol, c.open_time) in self.bad]
        if hit:
            raise ZeroDivisionError(f"bad candle at {hit[0]}")
        self.warmed.append([c.open_time for c in cs])
        return super().warm(cs, partition=partition)


class FakeTopic:
    """Partition logs in memory, read with the real ``collect_history``; ``down`` fails reads."""

    def __init__(self, parts: Mapping[int, Sequence[Candle]]) -> None:
        self.parts = {p: [encode_candle(c) for c in cs] for p, cs in parts.items()}
        self.down = False
        self.calls: list[tuple[int, int, int]] = []

    async def load(self, tp: Any, committed: int, need: int) -> HistoryResult:
        self.calls.append((tp.partition, committed, need))
        if self.down:
            raise ConnectionError("the topic cannot be read")
        values = self.parts.get(tp.partition, [])

        async def read(start: int, stop: int) -> list[tuple[int, bytes | None]]:
            return [(i, values[i]) for i in range(start, min(stop, len(values)))]

        return await collect_history(read, begin=0, end=committed, need=need)


def test_history_need_is_the_readiness_rule() -> None:
    p = Pipeline(None, keep_rows=64)
    assert history_need(p) == ready_candles(64)
    assert history_need(Pipeline(FakeEnsemble(seq_len=100))) == ready_candles(100)


async def test_rebuild_warms_each_partition_up_to_its_offset() -> None:
    pipeline = PickyPipeline()
    topic = FakeTopic(
        {0: [candle(i, "AAA") for i in range(20)], 1: [candle(i, "BBB") for i in range(9)]}
    )
    obs = Observer()
    rb = Rebuilder(pipeline, topic, obs)
    assert await rb.rebuild({P0: 12, P1: 9}) == {P0, P1}
    assert [(p, end) for p, end, _ in topic.calls] == [(0, 12), (1, 9)]
    assert all(need == history_need(pipeline) for *_, need in topic.calls)
    states = {(s.symbol, s.partition): s for s in pipeline.stream_states()}
    assert set(states) == {("AAA", 0), ("BBB", 1)}
    assert states[("AAA", 0)].last_open_time == candle(11, "AAA").open_time
    assert obs.stats.history_candles == 21 and obs.stats.history_failures == 0


async def test_nothing_before_offset_0_and_a_failed_read_leaves_the_partition_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = PickyPipeline()
    pipeline.warm([candle(i, "OLD") for i in range(5)], partition=1)
    topic = FakeTopic({1: [candle(i, "BBB") for i in range(9)]})
    topic.down = True
    obs = Observer()
    rb = Rebuilder(pipeline, topic, obs)
    assert await rb.rebuild({P0: 0, P1: 9}) == {P0}
    assert [c[0] for c in topic.calls] == [1], "offset 0: nothing to read"
    assert pipeline.stream_states() == [], "the failed partition's streams are dropped"
    assert obs.stats.history_failures == 1
    assert "reading the history of" in caplog.text


def test_warm_leaves_out_exactly_the_bad_candles(caplog: pytest.LogCaptureFixture) -> None:
    aaa = [candle(i, "AAA") for i in range(40)]
    bbb = [candle(i, "BBB") for i in range(10)]
    bad = {("AAA", aaa[7].open_time), ("AAA", aaa[31].open_time)}
    pipeline = PickyPipeline(bad)
    obs = Observer()
    caplog.set_level(logging.ERROR, "stream_infer")
    left_out = Rebuilder(pipeline, FakeTopic({}), obs).warm([*aaa, *bbb], 0)
    assert left_out == 2 and obs.stats.history_failures == 2
    kept = [c.open_time for c in aaa if ("AAA", c.open_time) not in bad]
    assert pipeline.warmed[-2:] == [kept, [c.open_time for c in bbb]]
    assert sum("cannot be applied" in r.getMessage() for r in caplog.records) == 2
    ok = PickyPipeline()
    assert Rebuilder(ok, FakeTopic({}), Observer()).warm(aaa, 0) == 0 and len(ok.warmed) == 1


async def test_keep_forgets_the_streams_of_partitions_gone_elsewhere() -> None:
    pipeline = PickyPipeline()
    pipeline.warm([candle(i, "AAA") for i in range(5)], partition=0)
    pipeline.warm([candle(i, "BBB") for i in range(5)], partition=1)
    rb = Rebuilder(pipeline, FakeTopic({}), Observer())
    assert rb.keep({1, 2}) == {0, 1}, "what was held before"
    assert {s.partition for s in pipeline.stream_states()} == {1}
    assert await rb.by_stream({P1}) == set(), "no stream store: whole partitions"
    assert await rb.usable() is None

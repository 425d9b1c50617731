"""State rebuild from the input topic: ``collect_history`` (pure) and ``KafkaHistory`` on a broker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from stream_infer.candles import Candle
from stream_infer.events import encode_candle
from stream_infer.kafka import KafkaHistory, collect_history, make_producer
from stream_infer.pipeline import ready_candles
from tests.fixtures_kafka import KafkaBroker, TopicsFactory, unique_name
from tests.kafka._util import BTC, interleave, real_candles

NEED = ready_candles(64)  # to warm up, then a 64-row window


def _records(candles: Sequence[Candle | bytes]) -> list[tuple[int, bytes | None]]:
    return [(i, c if isinstance(c, bytes) else encode_candle(c)) for i, c in enumerate(candles)]


class _Reader:
    """A fake partition: ``read(start, stop)`` over a list, counting what was asked."""

    def __init__(self, records: list[tuple[int, bytes | None]]) -> None:
        self.records = records
        self.calls: list[tuple[int, int]] = []

    async def __call__(self, start: int, stop: int) -> list[tuple[int, bytes | None]]:
        self.calls.append((start, stop))
        return [r for r in self.records if start <= r[0] < stop]


def _expected(candles: Sequence[Candle], end: int, need: int) -> dict[str, list[int]]:
    """Per symbol, the open_times of its last ``need`` minutes before offset ``end``."""
    before = candles[:end]
    last = {c.symbol: c.open_time for c in before}
    return {
        s: [c.open_time for c in before if c.symbol == s and c.open_time > t - need * 60_000]
        for s, t in last.items()
    }


def _by_symbol(candles: Sequence[Candle]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for c in candles:
        out.setdefault(c.symbol, []).append(c.open_time)
    return out


async def test_steps_back_only_as_far_as_every_stream_needs() -> None:
    feed = interleave([real_candles(s, 1500) for s in ("AAA", "BBB", "CCC")])
    reader = _Reader(_records(feed))
    end = 4000
    res = await collect_history(reader, begin=0, end=end, need=NEED)
    assert _by_symbol(res.candles) == _expected(feed, end, NEED)
    assert all(len(v) == NEED for v in _by_symbol(res.candles).values())
    assert res.start_offset > 0, "read back to the beginning although it was not needed"
    # doubling steps, each range right below the previous one
    assert reader.calls[0] == (end - 2 * NEED, end)
    for (s0, _), (_, e1) in zip(reader.calls, reader.calls[1:], strict=False):
        assert e1 == s0
    assert res.end_offset == end


async def test_a_new_listing_does_not_pull_the_whole_partition() -> None:
    old = interleave([real_candles(s, 5000) for s in ("AAA", "BBB")])
    new = real_candles("NEW", 30, skip=4970, start_ms=None)  # listed 30 minutes ago
    feed = interleave([old, new])
    reader = _Reader(_records(feed))
    res = await collect_history(reader, begin=0, end=len(feed), need=NEED)
    got = _by_symbol(res.candles)
    assert len(got["NEW"]) == 30
    assert len(got["AAA"]) == len(got["BBB"]) == NEED
    # one range past the new stream's window at most (the ranges double: 926, 1852, 3704)
    assert res.start_offset == len(feed) - 926 - 1852 - 3704


async def test_a_late_candle_does_not_stop_the_search_early() -> None:
    feed = interleave([real_candles(s, 1200) for s in ("AAA", "BBB")])
    late = real_candles("AAA", 1)[0]  # the first minute again, delivered at the very end
    records = [*feed, late]
    reader = _Reader(_records(records))
    res = await collect_history(reader, begin=0, end=len(records), need=NEED)
    got = _by_symbol(res.candles)
    assert len(got["BBB"]) == NEED
    assert len([t for t in got["AAA"] if t != late.open_time]) == NEED


async def test_bad_records_are_skipped_and_short_partitions_read_from_the_beginning() -> None:
    feed = real_candles("AAA", 300)
    records = _records([b"not json", *feed[:100], b'{"symbol": "AAA"}', *feed[100:]])
    records.insert(50, (50, None))
    records = [(i, v) for i, (_, v) in enumerate(records)]
    reader = _Reader(records)
    res = await collect_history(reader, begin=0, end=len(records), need=NEED)
    assert res.start_offset == 0
    assert [c.open_time for c in res.candles] == [c.open_time for c in feed]
    empty = await collect_history(reader, begin=5, end=5, need=NEED)
    assert (empty.candles, empty.records_read, empty.start_offset) == ([], 0, 5)


async def test_max_records_bounds_the_search() -> None:
    feed = interleave([real_candles(s, 1000) for s in ("AAA", "BBB", "CCC")])
    reader = _Reader(_records(feed))
    # a need no stream can meet: only the bound stops the search (after 500 + 1000 records)
    res = await collect_history(
        reader, begin=0, end=len(feed), need=10**6, first_step=500, max_records=1000
    )
    assert res.records_read == 1500
    assert res.start_offset == len(feed) - 1500
    assert reader.calls == [(2500, 3000), (1500, 2500)]


@pytest.mark.services
async def test_kafka_history_on_a_real_broker(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory
) -> None:
    """Two partitions, records produced in big batches; rebuild up to an offset inside the data."""
    await _history_on(kafka_broker, kafka_topics(partitions=2).kafka_candles_topic)


@pytest.mark.services
@pytest.mark.parametrize("which", ["apache_kafka", "tansu_broker"])
async def test_kafka_history_on_both_brokers(which: str, request: pytest.FixtureRequest) -> None:
    """The same on Apache Kafka (high watermark = records) and on Tansu (it counts batches):
    the history reader does not depend on the high watermark."""
    from stream_infer.kafka import create_topics

    broker: KafkaBroker = request.getfixturevalue(which)
    topic = unique_name(request, "t")
    await create_topics(broker.bootstrap, {topic: 2})
    await _history_on(broker, topic)


async def _history_on(kafka_broker: KafkaBroker, topic: str) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    symbols = ("AAA", "BBB", "CCC", "DDD")
    feed = interleave([real_candles(sym, 700, source=BTC) for sym in symbols])
    producer = make_producer(kafka_broker.bootstrap, linger_ms=50)
    await producer.start()
    try:
        futs = [await producer.send(topic, encode_candle(c), key=c.symbol.encode()) for c in feed]
        metas = [await f for f in futs]
    finally:
        await producer.stop()
    per_part: dict[int, list[Candle]] = {}
    for c, m in zip(feed, metas, strict=True):
        assert m.offset == len(per_part.setdefault(m.partition, []))
        per_part[m.partition].append(c)
    assert len(per_part) == 2, "keys should spread over both partitions"

    tps = [TopicPartition(topic, p) for p in sorted(per_part)]
    probe = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap)
    await probe.start()
    try:
        ends = await probe.end_offsets(tps)
    finally:
        await probe.stop()
    if kafka_broker.embedded:
        # The quirk this method avoids: the high watermark counts batches, not records.
        assert all(ends[tp] < len(per_part[tp.partition]) for tp in tps)
    else:
        assert all(ends[tp] == len(per_part[tp.partition]) for tp in tps)

    async with KafkaHistory(kafka_broker.bootstrap) as history:
        for tp in tps:
            part = per_part[tp.partition]
            committed = len(part) - 37  # inside the data, not at its end
            res = await history.load(tp, committed, NEED)
            assert _by_symbol(res.candles) == _expected(part, committed, NEED)
            assert Counter(len(v) for v in _by_symbol(res.candles).values()) == Counter(
                {NEED: len(_expected(part, committed, NEED))}
            )
            # the same method over the records in hand agrees
            offline = await collect_history(
                _Reader(_records(part)), begin=0, end=committed, need=NEED
            )
            assert [c.open_time for c in offline.candles] == [c.open_time for c in res.candles]
            assert res.start_offset == offline.start_offset
        # nothing before the first record: empty, without waiting
        empty = await history.load(tps[0], 0, NEED)
        assert empty.candles == [] and empty.records_read == 0

"""Kafka helpers shared by the tests: fresh topics, reading a topic from the start, committing
and reading a group's offsets, paced producing, and running a coroutine from sync code.

Fixtures that start the brokers live in ``tests/fixtures_kafka.py``; these are the plain
functions and classes the Kafka, reliability and reload tests call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Self

from stream_infer.candles import Candle
from stream_infer.config import KafkaSettings

__all__ = [
    "Collector",
    "commit",
    "committed_offsets",
    "fresh_topics",
    "produce_paced",
    "read_topic",
    "run_sync",
    "topic_partitions",
]


def run_sync(coro: Any) -> Any:
    """Run a coroutine from sync code, also inside a running loop (in a worker thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def fresh_topics(bootstrap: str, name: str, partitions: int = 1, **overrides: Any) -> KafkaSettings:
    """Fresh candles/predictions/dlq topics and group named after ``name`` on ``bootstrap``
    (created: ``partitions`` for the candles, 1 for each output)."""
    from stream_infer.kafka import create_topics

    base = f"r.{name}.{uuid.uuid4().hex[:8]}"
    s = KafkaSettings(
        kafka_bootstrap_servers=bootstrap,
        kafka_candles_topic=f"{base}.candles",
        kafka_predictions_topic=f"{base}.predictions",
        kafka_dlq_topic=f"{base}.candles.dlq",
        kafka_group_id=f"{base}.group",
        **overrides,
    )
    topics = {s.kafka_candles_topic: partitions, s.kafka_predictions_topic: 1, s.kafka_dlq_topic: 1}
    run_sync(create_topics(bootstrap, topics))
    return s


def _reader(bootstrap: str, **kw: Any) -> Any:
    """A consumer outside any group, from the earliest offset."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
        **kw,
    )


async def topic_partitions(consumer: Any, topic: str, timeout_s: float = 20.0) -> list[Any]:
    """The ``TopicPartition``s of ``topic``, from a metadata request for every topic.

    A consumer without a subscription tracks no topic, and Apache Kafka answers its
    metadata with none (Tansu with all), so ``partitions_for_topic`` alone stays empty there.
    """
    from aiokafka import TopicPartition

    deadline = time.monotonic() + timeout_s
    while True:
        cluster = await consumer._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic!r} has no partitions after {timeout_s:g} s")
        await asyncio.sleep(0.05)


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expect: int | None = None,
    idle_s: float = 2.0,
    timeout_s: float = 60.0,
) -> list[Any]:
    """Every record of ``topic`` (all partitions, from the beginning), without a group.

    Stops when ``expect`` records arrived (then waits ``idle_s`` more for extras), or after
    ``idle_s`` without records, or at ``timeout_s``.
    """
    consumer = _reader(bootstrap)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        last = time.monotonic()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=100)
            got = [m for ms in batch.values() for m in ms]
            now = time.monotonic()
            if got:
                out.extend(got)
                last = now
            elif now - last > idle_s:
                break
            if expect is not None and len(out) >= expect and now - last > min(idle_s, 0.5):
                break
        return out
    finally:
        await consumer.stop()


class Collector:
    """Reads a topic (all partitions, from the start) in the background: each record goes to
    ``keep`` (by default into ``records``; a subclass may check and count instead)."""

    def __init__(self, bootstrap: str, topic: str, *, max_poll_records: int | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records: list[Any] = []
        self._poll = {} if max_poll_records is None else {"max_poll_records": max_poll_records}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def keep(self, record: Any) -> None:
        self.records.append(record)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        consumer = _reader(self.bootstrap, **self._poll)
        await consumer.start()
        try:
            tps = await topic_partitions(consumer, self.topic)
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, 0)
            self._ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=100)
                for msgs in batch.values():
                    for r in msgs:
                        self.keep(r)
        finally:
            await consumer.stop()

    async def wait_for(self, n: int, timeout: float = 60.0) -> list[Any]:
        """Until at least ``n`` records arrived (AssertionError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while len(self.records) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: {len(self.records)} of {n} records")
            await asyncio.sleep(0.05)
        return self.records

    async def settle(self, quiet_s: float = 1.0) -> list[Any]:
        """Until nothing new arrived for ``quiet_s``."""
        n, since = len(self.records), time.monotonic()
        while time.monotonic() - since < quiet_s:
            await asyncio.sleep(0.05)
            if len(self.records) != n:
                n, since = len(self.records), time.monotonic()
        return self.records


@contextlib.asynccontextmanager
async def _group_member(s: KafkaSettings) -> AsyncIterator[Any]:
    """A started consumer of ``s``'s group that never joins it (offsets only)."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap_servers,
        group_id=s.kafka_group_id,
        enable_auto_commit=False,
    )
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def committed_offsets(s: KafkaSettings, partitions: int) -> dict[int, int]:
    """The group's committed offset per partition of the candles topic (0 when none)."""
    from aiokafka import TopicPartition

    async with _group_member(s) as c:
        out = {}
        for p in range(partitions):
            off = await c.committed(TopicPartition(s.kafka_candles_topic, p))
            out[p] = off if off is not None else 0
        return out


async def commit(s: KafkaSettings, offsets: Mapping[int, int]) -> None:
    """Commit for the group without joining it, as a member that stopped there would have."""
    from aiokafka import TopicPartition

    async with _group_member(s) as c:
        tps = {TopicPartition(s.kafka_candles_topic, p): o for p, o in offsets.items()}
        c.assign(list(tps))
        await c.commit(tps)


async def produce_paced(
    bootstrap: str,
    topic: str,
    candles: Sequence[Candle],
    rate: float,
    where: dict[tuple[str, int], tuple[int, int]],
) -> None:
    """Produce ``candles`` (key = symbol) at ``rate`` per second, each acknowledged before the
    next; records each one's (partition, offset) in ``where`` by (symbol, open_time)."""
    from stream_infer.events import encode_candle
    from stream_infer.kafka import make_producer

    producer = make_producer(bootstrap)
    await producer.start()
    try:
        t0 = time.perf_counter()
        for i, c in enumerate(candles):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            fut = await producer.send(topic, encode_candle(c), key=c.symbol.encode())
            md = await fut
            where[(c.symbol, c.open_time)] = (md.partition, md.offset)
    finally:
        await producer.stop()

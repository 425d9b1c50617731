"""Helpers for the Kafka tests: real candles under several symbols, and reading a topic back."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import time
from collections.abc import Sequence
from typing import Any

from stream_infer.candles import Candle, read_klines
from stream_infer.kafka import frame_candles
from tests.conftest import DATA

NEAR = DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz"
BTC = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"
START_MS = 1_675_209_600_000  # 2023-02-01 00:00 UTC


@functools.lru_cache(maxsize=4)
def _frame_candles(path: str, n: int) -> tuple[Candle, ...]:
    return tuple(frame_candles(read_klines(path), n))


def real_candles(
    symbol: str, n: int, *, source: Any = NEAR, skip: int = 0, start_ms: int | None = START_MS
) -> list[Candle]:
    """``n`` consecutive real candles of ``source`` (from ``skip`` on), relabelled as ``symbol``.

    Their times are shifted so the first opens at ``start_ms`` (None keeps them): streams
    cut from different files or months then overlap in time, as live symbols do.
    """
    rows = _frame_candles(str(source), skip + n)[skip:]
    shift = 0 if start_ms is None or not rows else start_ms - rows[0].open_time
    return [
        c.model_copy(
            update={
                "symbol": symbol,
                "open_time": c.open_time + shift,
                "close_time": c.close_time + shift,
            }
        )
        for c in rows
    ]


def interleave(streams: Sequence[Sequence[Candle]]) -> list[Candle]:
    """Merge streams by open_time (ties in stream order), as a live feed delivers them."""
    return list(heapq.merge(*streams, key=lambda c: c.open_time))


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
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=5,
    )
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
    """Reads a topic (all partitions, from the start) in the background into ``records``."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Collector:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=5,
        )
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
                    self.records.extend(msgs)
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


def offline(ensemble: Any, values: Sequence[bytes], batch: int = 64) -> tuple[dict[Any, Any], Any]:
    """The replay twin: the same messages through a fresh Pipeline, no broker.

    Returns ({(symbol, open_time): Prediction}, summed Counts).
    """
    from stream_infer.pipeline import Counts, Inbound, Pipeline

    pipeline = Pipeline(ensemble)
    out: dict[Any, Any] = {}
    counts = Counts()
    for i in range(0, len(values), batch):
        chunk = [Inbound(v, 0, i + j, 0.0) for j, v in enumerate(values[i : i + batch])]
        res = pipeline.process(chunk)
        counts.add(res.counts)
        for p in res.predictions:
            assert (p.symbol, p.open_time) not in out
            out[(p.symbol, p.open_time)] = p
    return out, counts


def assert_same_prediction(got: Any, want: Any, tol: float = 1e-6) -> None:
    """Equal event fields; probabilities within ``tol``."""
    assert (got.symbol, got.interval, got.open_time) == (want.symbol, want.interval, want.open_time)
    assert (got.ensemble_id, got.version, got.horizons) == (
        want.ensemble_id,
        want.version,
        want.horizons,
    )
    for a, b in zip(got.predictions, want.predictions, strict=True):
        assert abs(a - b) <= tol, (got.symbol, got.open_time, got.predictions, want.predictions)
    for name, comp in want.components.items():
        for a, b in zip(got.components[name], comp, strict=True):
            assert abs(a - b) <= tol, (name, got.symbol, got.open_time)

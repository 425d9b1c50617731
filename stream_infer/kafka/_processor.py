"""From fetched records to results: which records may be processed, and the pipeline run
that never stops on an unexpected error.

``Pipeline.process`` is pure; what this adds is the service's part of it: on partitions
rebuilt stream by stream it stops before each stream met for the first time, whose history
is read first; and if the pipeline raises, the streams are rebuilt and the batch retried
one message at a time, a message that still fails becoming a dead letter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stream_infer._errors import CandleError
from stream_infer.events import DeadLetter
from stream_infer.kafka._book import PartitionBook
from stream_infer.kafka._rebuild import Rebuilder
from stream_infer.pipeline import BatchResult, Counts, Inbound, Pipeline, StageTimes
from stream_infer.pipeline import wall_ms as _wall_ms

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import ConsumerRecord

__all__ = ["BatchProcessor", "first_offsets", "internal_dead_letter"]

log = logging.getLogger("stream_infer.service")

# A partition whose rebuild failed is read again after this pause.
_RETRY_COLD_S = 0.5


class BatchProcessor:
    """``pipeline.process`` for the service, rebuilding through ``rebuilder`` when needed."""

    def __init__(self, pipeline: Pipeline, rebuilder: Rebuilder, topic: str) -> None:
        self.pipeline = pipeline
        self.topic = topic
        self._rebuilder = rebuilder

    async def collect(
        self,
        consumer: AIOKafkaConsumer,
        book: PartitionBook,
        records: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]],
        received: float,
    ) -> tuple[list[Inbound], dict[tuple[int, int], bytes | None]]:
        """The fetched records of warm partitions as pipeline input, and their keys by
        (partition, offset). A partition of the consumer's assignment that is not warm is
        rebuilt up to its first record first, or sought back to read again later."""
        assigned = consumer.assignment()
        inbound: list[Inbound] = []
        keys: dict[tuple[int, int], bytes | None] = {}
        for tp, msgs in records.items():
            if not msgs:
                continue
            if not book.is_warm(tp):
                if tp not in assigned:
                    continue  # fetched across a rebalance: no longer ours
                # Ours but not rebuilt (the listener's rebuild failed, or has not run):
                # rebuild up to these records, or read them again later.
                if not await self._rebuilder.rebuild({tp: msgs[0].offset}):
                    consumer.seek(tp, msgs[0].offset)
                    await asyncio.sleep(_RETRY_COLD_S)  # the broker may be recovering
                    continue
                book.mark_warm(tp)
            for m in msgs:
                inbound.append(
                    Inbound(m.value, tp.partition, m.offset, received, tp.topic, m.timestamp, m.key)
                )
                keys[(tp.partition, m.offset)] = m.key
        return inbound, keys

    def stale(self, warm: Iterable[TopicPartition]) -> set[TopicPartition]:
        """Of ``warm``, the partitions with streams shorter than a newly swapped ensemble needs."""
        stale = self.pipeline.stale_streams()
        if not stale:
            return set()
        from aiokafka import TopicPartition

        parts = {
            st.partition
            for st in self.pipeline.stream_states()
            if (st.symbol, st.interval) in set(stale) and st.partition is not None
        }
        return {TopicPartition(self.topic, p) for p in parts} & set(warm)

    async def process(
        self, inbound: list[Inbound], first: Mapping[TopicPartition, int]
    ) -> list[BatchResult]:
        """``pipeline.process``; if it raises, rebuild (to just before ``first``, the batch's
        first offset per partition) and retry one message at a time.

        A message that still fails becomes a dead letter (reason ``internal:<Error>``):
        an unexpected error never stops the service.
        """
        try:
            return await self.run(inbound)
        except Exception:
            log.exception("processing a batch of %d failed; retrying one by one", len(inbound))
        # The streams are ahead of these offsets now: rebuild them to just before the batch.
        await self._rebuilder.rebuild(first)
        results: list[BatchResult] = []
        from aiokafka import TopicPartition

        for m in inbound:
            try:
                results.extend(await self.run([m]))
            except Exception as exc:
                log.exception("message %s/%d/%d failed", m.topic, m.partition, m.offset)
                results.append(internal_dead_letter(m, exc))
                # It may have half-moved its stream (the features raised midway): rebuild
                # the partition through it, so the live state is the one a restart would
                # rebuild (``Rebuilder.warm`` leaves out a candle the features cannot take).
                await self._rebuilder.rebuild({TopicPartition(m.topic, m.partition): m.offset + 1})
        return results

    async def run(self, inbound: Sequence[Inbound]) -> list[BatchResult]:
        """``pipeline.process``; on partitions rebuilt stream by stream, it stops before each
        stream met for the first time, whose history is then read (one query for all such
        streams of the batch) before the rest of the batch goes on."""
        lazy = self._rebuilder.lazy
        if lazy is None or not lazy.partitions:
            return [self.pipeline.process(inbound)]
        results: list[BatchResult] = []
        rest = inbound
        while True:
            r = self.pipeline.process(rest, hold=lazy.hold)
            results.append(r)
            if r.held_at is None:
                return results
            rest = rest[r.held_at :]
            if not r.held:  # cannot happen (the held message is claimed); never loop on it
                results.append(self.pipeline.process(rest))
                return results
            await self._rebuilder.resolve(r.held, self.topic)


def internal_dead_letter(m: Inbound, exc: Exception) -> BatchResult:
    """The result of a message the pipeline raised on: one dead letter, ``internal:<Error>``."""
    err = CandleError(f"{type(exc).__name__}: {exc}"[:500])
    err.reason = f"internal:{type(exc).__name__}"
    dl = DeadLetter.from_error(
        err,
        value=m.value,
        topic=m.topic,
        partition=m.partition,
        offset=m.offset,
        timestamp_ms=m.timestamp_ms,
        failed_at=_wall_ms(),
    )
    counts = Counts(messages=1, dead_letters={err.reason: 1})
    return BatchResult([], [dl], counts, {m.partition: m.offset}, StageTimes(), None)


def first_offsets(inbound: Iterable[Inbound]) -> dict[TopicPartition, int]:
    """The first offset of each partition in ``inbound``."""
    from aiokafka import TopicPartition

    first: dict[TopicPartition, int] = {}
    for m in inbound:
        tp = TopicPartition(m.topic, m.partition)
        if m.offset < first.get(tp, m.offset + 1):
            first[tp] = m.offset
    return first

"""Rebuilding stream state from history: whole partitions from the topic, or stream by stream.

On assignment (and whenever a partition's streams fell behind) its streams are replaced by
ones warmed from history: from ``history`` (the topic, ``KafkaHistory``), or, with a
``LazyHistory`` (HISTORY_SOURCE=postgres), each stream from its store before the stream's
first record. A candle the features raise on is searched for and left out (``warm``), so
one bad candle in history can never stop every rebuild of its partition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stream_infer.kafka._history import HistorySource
from stream_infer.kafka._observer import Observer
from stream_infer.kafka._stream_history import LazyHistory, Resolved
from stream_infer.pipeline import HeldStream, Pipeline, ready_candles

if TYPE_CHECKING:
    from aiokafka import TopicPartition

__all__ = ["Rebuilder", "history_need"]

log = logging.getLogger("stream_infer.service")


def history_need(pipeline: Pipeline) -> int:
    """Candles a stream needs to predict at once with the rows ``pipeline`` keeps (readiness)."""
    return ready_candles(pipeline.keep_rows)


class Rebuilder:
    """Warms ``pipeline``'s streams from ``history`` (and ``lazy``, when given)."""

    def __init__(
        self,
        pipeline: Pipeline,
        history: HistorySource,
        observer: Observer,
        *,
        lazy: LazyHistory | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.history = history
        self.lazy = lazy
        self._observer = observer

    @property
    def need(self) -> int:
        """Candles of history a stream needs for the ensemble serving now."""
        return history_need(self.pipeline)

    # -- which partitions ------------------------------------------------------------------

    def keep(self, partitions: Collection[int]) -> set[int]:
        """A new assignment: forget the streams of every other partition; returns the
        partitions whose streams were held (before forgetting)."""
        held = {p for st in self.pipeline.stream_states() if (p := st.partition) is not None}
        gone = {p for p in held if p not in partitions}
        if gone:
            self.pipeline.drop_partitions(gone)
        lazy = self.lazy
        if lazy is not None:
            for p in lazy.partitions - set(partitions):
                lazy.end(p)
        return held

    async def by_stream(self, todo: Collection[TopicPartition]) -> set[TopicPartition]:
        """Which of ``todo`` are rebuilt stream by stream from the store: all of them when it
        answers now, none when it does not (or there is no store)."""
        lazy = self.lazy
        if lazy is None or not todo:
            return set()
        # Even from offset 0: Postgres may hold what the topic no longer does.
        chosen = set(todo) if await lazy.usable() else set()
        for tp in todo:
            if tp in chosen:
                lazy.begin(tp.partition)
            else:
                lazy.end(tp.partition)
        return chosen

    async def usable(self) -> bool | None:
        """Whether the stream store answers now (None without one); logs when it does not."""
        return None if self.lazy is None else await self.lazy.usable()

    # -- the rebuild -------------------------------------------------------------------------

    async def rebuild(self, upto: Mapping[TopicPartition, int]) -> set[TopicPartition]:
        """Replace the streams of these partitions by ones warmed from history before ``upto``.

        Returns the partitions rebuilt; one whose history cannot be read is logged and left
        out (its streams stay dropped: it warms up live, or the caller retries). A partition
        rebuilt stream by stream forgets its streams: each is read again before its next
        record, bounded by that record.
        """
        self.pipeline.drop_partitions(tp.partition for tp in upto)
        need = self.need
        done: set[TopicPartition] = set()
        lazy = self.lazy
        if lazy is not None:
            for tp in [tp for tp in upto if tp.partition in lazy.partitions]:
                lazy.begin(tp.partition)
                done.add(tp)
        for tp, end in upto.items():
            if tp in done:
                continue
            if end <= 0 or await self._from_topic(tp, end, need):
                done.add(tp)
        return done

    async def _from_topic(self, tp: TopicPartition, end: int, need: int) -> bool:
        t0 = time.perf_counter()
        try:
            hist = await self.history.load(tp, end, need)
        except Exception:
            self._observer.history_failed()
            log.exception("reading the history of %s up to %d failed", tp, end)
            return False
        self.warm(hist.candles, tp.partition)
        dt = time.perf_counter() - t0
        self._observer.rebuilt(len(hist.candles), dt)
        log.info(
            "rebuilt %s from offsets %d..%d: %d candles of %d streams (%d records read) in %.2f s",
            tp,
            hist.start_offset,
            end,
            len(hist.candles),
            len(hist.per_stream),
            hist.records_read,
            dt,
        )
        return True

    async def resolve(self, held: Sequence[HeldStream], topic: str) -> Resolved:
        """Warm the streams ``Pipeline.process`` held (met for the first time on a partition
        rebuilt stream by stream) from the store, or the topic for those it does not cover."""
        if self.lazy is None:
            return Resolved()
        return await self.lazy.resolve(held, topic=topic, need=self.need, warm=self.warm)

    def warm(self, candles: list[Any], partition: int) -> int:
        """``pipeline.warm``, leaving out any candle the features raise on (it was dead-lettered
        as ``internal:<Error>`` when consumed); returns how many were left out.

        Without this, one such candle in a partition's history would stop every rebuild of
        it: the service would crash, or retry the partition forever, after each restart.
        """
        try:
            self.pipeline.warm(candles, partition=partition)
            return 0
        except Exception as exc:
            log.error("warming partition %d failed (%r); finding the candle", partition, exc)
        groups: dict[tuple[str, str], list[Any]] = {}
        for c in candles:
            groups.setdefault((c.symbol, c.interval), []).append(c)
        left_out = 0
        for group in groups.values():
            left_out += self._warm_group(group, partition)
        self._observer.candles_left_out(left_out)
        return left_out

    def _warm_group(self, group: list[Any], partition: int) -> int:
        """Warm one stream's candles, leaving out each one that raises; returns how many."""
        left_out = 0
        while True:
            try:
                self.pipeline.warm(group, partition=partition)
                return left_out
            except Exception as exc:
                bad = self._first_bad(group, partition)
                c = group[bad]
                log.error(
                    "history: %s %s at open_time %d cannot be applied (%r); left out",
                    c.symbol,
                    c.interval,
                    c.open_time,
                    exc,
                )
                group = group[:bad] + group[bad + 1 :]
                left_out += 1

    def _first_bad(self, group: list[Any], partition: int) -> int:
        """The index of the first candle ``pipeline.warm`` raises on (``group`` as a whole
        raises): the first prefix that raises ends with it, as warm is sequential."""
        ok, bad = 0, len(group)
        while bad - ok > 1:
            mid = (ok + bad) // 2
            try:
                self.pipeline.warm(group[:mid], partition=partition)
                ok = mid
            except Exception:
                bad = mid
        return bad - 1

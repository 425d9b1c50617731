"""State rebuild per stream from a time-indexed store (Postgres ``candles``), in front of the topic.

``HISTORY_SOURCE=postgres`` (docs/service.md, "State"). The rebuilt state must be the one an
uninterrupted run would hold: each stream's candles strictly before the first of its
records the partition will process. Why per stream, lazily (when a stream's first candle
after the assignment arrives), rather than per partition at assignment time:

* The exact bound is a stream's own first unprocessed record. In an interleaved feed the
  record at the committed offset bounds one symbol only (the others' candles of that
  minute may lie on either side of it), and at the live edge, the usual restart, no record
  after the committed offset exists yet when the partition is assigned.
* Postgres alone does not know which streams live on a partition: the default partitioner
  (murmur2 of the key) maps symbols only when every producer uses it with the symbol as
  the key, and still gives no bound.

So the pipeline stops before a stream it does not hold (``Pipeline.process(hold=...)``),
the streams met in that batch are read in one query, and the batch goes on. A stream whose
rows do not end right before its first live candle with ``need`` consecutive intervals (the
table lags, has a hole, or the stream is young) is not warmed from them: it is rebuilt
from the topic like ``HISTORY_SOURCE=kafka`` does (exact, as far as the topic reaches),
and counted and logged. Postgres unreachable: the topic for everything, never a crash.

Known limit: a stream whose first record after the committed offset is a *late* candle
(older than one already processed, which the stream rules drop) is bounded too early;
only reading the topic backwards can tell. Producers that re-send old candles should keep
``HISTORY_SOURCE=kafka``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from stream_infer.candles import Candle, interval_to_ms
from stream_infer.kafka._history import HistorySource, StreamKey
from stream_infer.kafka._observer import Observer
from stream_infer.kafka._stats import Stats
from stream_infer.pipeline import HeldStream

__all__ = [
    "LazyHistory",
    "Resolved",
    "StreamHistorySource",
    "not_covered_reason",
]

log = logging.getLogger(__name__)

WarmFn = Callable[[list[Candle], int], object]
"""``(candles, partition)``: warm the pipeline's streams of these candles."""


class StreamHistorySource(Protocol):
    """History by stream and time (``stream_infer.db.PostgresHistory`` is one)."""

    async def ping(self) -> None:
        """Raise when the source cannot be read now."""
        ...

    async def fetch_many(
        self, bounds: Mapping[StreamKey, int], n: int
    ) -> dict[StreamKey, list[Candle]]:
        """Per stream, its last ``n`` candles with ``open_time < bound``, oldest first."""
        ...


def not_covered_reason(
    candles: Sequence[Candle], bound: int, interval: str, need: int
) -> str | None:
    """None when ``candles`` (oldest first, all before ``bound``) end with ``need`` consecutive
    intervals, the last one right before ``bound``; else why not.

    Anything less could warm a stream that differs from the live one (a lagging table
    would be gap-filled as if the market had stood still), so it is refused, never patched.
    """
    if need <= 0:
        return None
    iv = interval_to_ms(interval)
    if not candles:
        return "no rows before it"
    last = candles[-1].open_time
    if last != bound - iv:
        return f"newest row opens at {last}, {(bound - last) // iv - 1} intervals short of it"
    if len(candles) < need:
        return f"{len(candles)} of {need} rows"
    tail = candles[-need:]
    for a, b in itertools.pairwise(tail):
        if b.open_time - a.open_time != iv:
            return f"a hole after {a.open_time}"
    return None


@dataclass
class Resolved:
    """What one ``LazyHistory.resolve`` did."""

    from_source: list[StreamKey] = field(default_factory=list)
    from_topic: list[StreamKey] = field(default_factory=list)  # not covered; the topic had some
    cold: list[StreamKey] = field(default_factory=list)  # found nowhere: warms up live
    candles: int = 0
    seconds: float = 0.0


class LazyHistory:
    """Per-stream rebuild for the partitions ``begin`` marks, from ``source`` then ``fallback``.

    For each marked partition it remembers the streams already settled (rebuilt, or known
    to have no history): ``hold`` claims every other stream of it, ``resolve`` settles them.
    """

    def __init__(
        self,
        source: StreamHistorySource,
        fallback: HistorySource,
        *,
        observer: Observer | None = None,
        ping_timeout_s: float = 5.0,
    ) -> None:
        self.source = source
        self.fallback = fallback
        self.observer = observer or Observer()
        self.ping_timeout_s = ping_timeout_s
        self._settled: dict[int, set[StreamKey]] = {}
        self._usable: bool | None = None

    # -- which partitions and streams --------------------------------------------------

    @property
    def stats(self) -> Stats:
        return self.observer.stats

    @property
    def partitions(self) -> set[int]:
        return set(self._settled)

    def begin(self, partition: int) -> None:
        """Rebuild this partition's streams one by one as their first candles arrive."""
        self._settled[partition] = set()

    def end(self, partition: int) -> None:
        self._settled.pop(partition, None)

    def hold(self, partition: int, symbol: str, interval: str) -> bool:
        """``Pipeline.process``'s ``hold``: a stream of a marked partition not settled yet."""
        settled = self._settled.get(partition)
        return settled is not None and (symbol, interval) not in settled

    async def usable(self) -> bool:
        """Whether the source answers now; logs when that changes (the first failure too)."""
        try:
            await asyncio.wait_for(self.source.ping(), self.ping_timeout_s)
        except Exception as exc:  # any failure means: use the topic, never crash
            if self._usable is not False:
                log.warning(
                    "history: %s cannot be read (%s); rebuilding state from the Kafka topic "
                    "instead",
                    self.source,
                    str(exc) or type(exc).__name__,
                )
            self._usable = False
            return False
        if self._usable is False:
            log.info("history: %s answers again; rebuilding state from it", self.source)
        self._usable = True
        return True

    # -- the rebuild -------------------------------------------------------------------

    async def resolve(
        self, held: Sequence[HeldStream], *, topic: str, need: int, warm: WarmFn
    ) -> Resolved:
        """Warm every held stream from the source, or else from the topic; settle them all.

        Bound per stream: the open_time of its first live candle (``HeldStream.candle``).
        One ``fetch_many`` for all of them; one topic read per partition for the streams
        the source does not cover, up to the offset of the first of them (the stream has no
        record between the partition's first unprocessed offset and its own first one).
        """
        t0 = time.perf_counter()
        out = Resolved()
        todo = [h for h in held if self.hold(h.partition, h.candle.symbol, h.candle.interval)]
        if not todo:
            return out
        try:
            bounds = {(h.candle.symbol, h.candle.interval): h.candle.open_time for h in todo}
            try:
                rows = await self.source.fetch_many(bounds, need)
            except Exception as exc:
                self.observer.history_failed()
                log.warning(
                    "history: reading %d streams from %s failed (%s); the topic instead",
                    len(todo),
                    self.source,
                    str(exc) or type(exc).__name__,
                )
                rows = {}
            missing: dict[int, list[HeldStream]] = {}
            reasons: list[str] = []
            for h in todo:
                c = h.candle
                key = (c.symbol, c.interval)
                got = rows.get(key, [])
                why = not_covered_reason(got, c.open_time, c.interval, need)
                if why is None:
                    candles = got[-need:]
                    warm(candles, h.partition)
                    out.from_source.append(key)
                    out.candles += len(candles)
                else:
                    missing.setdefault(h.partition, []).append(h)
                    reasons.append(f"{c.symbol} {c.interval} before {c.open_time}: {why}")
            if missing:
                log.warning(
                    "history: %s does not cover %d streams (%s%s); reading them from the topic",
                    self.source,
                    len(reasons),
                    "; ".join(reasons[:5]),
                    f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "",
                )
                for partition, streams in missing.items():
                    await self._from_topic(partition, streams, topic, need, warm, out)
        finally:
            for h in todo:
                self._settled.setdefault(h.partition, set()).add(
                    (h.candle.symbol, h.candle.interval)
                )
        out.seconds = time.perf_counter() - t0
        self.observer.streams_resolved(out)
        log.info(
            "history: %d streams from %s, %d not covered (%d from the topic, %d warm up live): "
            "%d candles in %.3f s",
            len(out.from_source),
            self.source,
            len(out.from_topic) + len(out.cold),
            len(out.from_topic),
            len(out.cold),
            out.candles,
            out.seconds,
        )
        return out

    async def _from_topic(
        self,
        partition: int,
        streams: Sequence[HeldStream],
        topic: str,
        need: int,
        warm: WarmFn,
        out: Resolved,
    ) -> None:
        from aiokafka import TopicPartition

        keys = {(h.candle.symbol, h.candle.interval) for h in streams}
        end = min(h.offset for h in streams)
        try:
            res = await self.fallback.load(TopicPartition(topic, partition), end, need)
        except Exception:
            self.observer.history_failed()
            log.exception(
                "history: reading partition %d up to %d from the topic failed; %d streams warm "
                "up live",
                partition,
                end,
                len(keys),
            )
            out.cold.extend(sorted(keys))
            return
        # The topic read rebuilds every stream it saw; only these were missing.
        candles = [c for c in res.candles if (c.symbol, c.interval) in keys]
        if candles:
            warm(candles, partition)
        out.candles += len(candles)
        found = {(c.symbol, c.interval) for c in candles}
        out.from_topic.extend(sorted(found))
        out.cold.extend(sorted(keys - found))

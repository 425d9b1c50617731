"""State rebuild: the candles before a partition's committed offset, enough to warm every stream.

On start and after a rebalance the service must be ready at once (docs/feature-spec.md, Readiness;
docs/design.md, Delivery and state). The history comes from a :class:`HistorySource`; the one
here re-reads the input topic itself.

Why offsets and not the broker's offset queries: the embedded broker answers
``offsets_for_times`` with 0 and its high watermark counts record batches, not records
(docs/design.md, Local stack). Fetching from an explicit offset is right on every broker, and
the committed offset bounds the range from above. So :class:`KafkaHistory` steps back
from the committed offset, doubling the step, until every stream it has seen holds
``need`` candles (or the records reach back further in time than ``need`` intervals
before that stream's last candle, or the partition's beginning is reached), reading each
range with a plain (group-less) consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from stream_infer._errors import BrokerError, CandleError
from stream_infer.candles import Candle, interval_to_ms

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = [
    "HistoryResult",
    "HistorySource",
    "KafkaHistory",
    "collect_history",
]

log = logging.getLogger(__name__)

# (offset, value) of one record.
Record = tuple[int, bytes | None]
StreamKey = tuple[str, str]


class HistorySource(Protocol):
    """Where warm-up history comes from (the input topic here; Postgres ``candles`` later)."""

    async def load(self, tp: TopicPartition, committed: int, need: int) -> HistoryResult:
        """Candles of ``tp``'s streams from before offset ``committed``, in input order.

        ``need``: candles per stream to predict at once (see ``collect_history``).
        """
        ...


@dataclass
class HistoryResult:
    """Candles to warm, oldest first (input order), and what it took to find them."""

    candles: list[Candle]
    start_offset: int  # first offset read
    end_offset: int  # offsets read are < this (the committed offset)
    records_read: int = 0
    reads: int = 0  # ranges fetched
    per_stream: dict[StreamKey, int] = field(default_factory=dict)  # candles kept per stream
    seconds: float = 0.0


def _decode(value: bytes | None) -> Candle | None:
    from stream_infer.events import decode_candle

    try:
        return decode_candle(value)
    except CandleError:
        return None  # it went to the dead-letter topic when it was first consumed


async def collect_history(
    read: Callable[[int, int], Awaitable[Sequence[Record]]],
    *,
    begin: int,
    end: int,
    need: int,
    first_step: int | None = None,
    max_records: int = 5_000_000,
) -> HistoryResult:
    """Read back from ``end`` in doubling steps until every stream seen is covered; pure but for ``read``.

    ``read(start, stop)`` returns the records with ``start <= offset < stop`` in offset
    order (it may return fewer: compacted or transactional topics have holes). A stream
    is covered when ``need`` of its candles were read, or when a whole range read is
    older than ``need`` intervals before its last candle (earlier candles cannot be in
    its window; e.g. a symbol listed recently). The candles kept per stream are those of its
    last ``need`` intervals, in offset order.
    """
    t0 = time.perf_counter()
    if need <= 0 or end <= begin:
        return HistoryResult([], end, end, seconds=time.perf_counter() - t0)
    step = max(first_step or need * 2, 1)
    chunks: list[list[Candle]] = []
    times: dict[StreamKey, set[int]] = {}  # open_times read per stream
    last: dict[StreamKey, int] = {}
    # The newest open_time of the oldest range read: robust to a late candle (an old
    # open_time among new records), which a plain minimum is not.
    reached: int | None = None
    lo, records, reads = end, 0, 0
    while lo > begin:
        start = max(begin, lo - step)
        recs = await read(start, lo)
        reads += 1
        records += len(recs)
        chunk = [c for _, v in recs if (c := _decode(v)) is not None]
        chunks.append(chunk)
        newest: int | None = None
        for c in chunk:
            k = (c.symbol, c.interval)
            times.setdefault(k, set()).add(c.open_time)
            if c.open_time > last.get(k, -1):
                last[k] = c.open_time
            if newest is None or c.open_time > newest:
                newest = c.open_time
        if newest is not None and (reached is None or newest < reached):
            reached = newest
        lo = start
        if times and all(
            _covered(ts, last[k], need * interval_to_ms(k[1]), need, reached)
            for k, ts in times.items()
        ):
            break
        if records >= max_records:
            log.warning(
                "history: stopped after %d records from offset %d; some streams may warm up live",
                records,
                lo,
            )
            break
        step *= 2
    ordered = [c for chunk in reversed(chunks) for c in chunk]
    # Keep each stream's last ``need`` intervals, in input order.
    kept: list[Candle] = []
    per_stream: dict[StreamKey, int] = {}
    for c in ordered:
        k = (c.symbol, c.interval)
        if c.open_time > last[k] - need * interval_to_ms(c.interval):
            kept.append(c)
            per_stream[k] = per_stream.get(k, 0) + 1
    return HistoryResult(
        kept,
        start_offset=lo,
        end_offset=end,
        records_read=records,
        reads=reads,
        per_stream=per_stream,
        seconds=time.perf_counter() - t0,
    )


def _covered(times: set[int], last: int, span_ms: int, need: int, reached: int | None) -> bool:
    """``need`` distinct minutes (intervals) inside the window, or the records are older than it."""
    if reached is not None and reached <= last - span_ms:
        return True
    return sum(1 for t in times if t > last - span_ms) >= need


class KafkaHistory:
    """History from the input topic itself, read with a group-less consumer.

    Use as an async context manager or call ``start``/``stop`` (``load`` starts it).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        client: Mapping[str, Any] | None = None,
        first_step: int | None = None,
        max_records: int = 5_000_000,
        idle_timeout_s: float = 5.0,
    ) -> None:
        self.bootstrap = bootstrap
        self.first_step = first_step
        self.max_records = max_records
        self.idle_timeout_s = idle_timeout_s
        self._client = dict(client or {})
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def client(self) -> dict[str, Any]:
        """The connection options its consumer is built with (``client_kwargs``)."""
        return dict(self._client)

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        kw = dict(self._client)
        kw.update(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=5,
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
        )
        consumer = AIOKafkaConsumer(**kw)
        try:
            await consumer.start()
        except Exception as exc:
            await consumer.stop()
            raise BrokerError(f"history: cannot reach Kafka at {self.bootstrap}: {exc}") from exc
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await asyncio.wait_for(consumer.stop(), 10)
            except TimeoutError:
                log.warning("history: the consumer did not stop within 10 s")

    async def __aenter__(self) -> KafkaHistory:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def load(self, tp: TopicPartition, committed: int, need: int) -> HistoryResult:
        """See :meth:`HistorySource.load`."""
        if self._consumer is None:
            await self.start()
        consumer = self._consumer
        assert consumer is not None
        begin = (await consumer.beginning_offsets([tp]))[tp]
        if committed <= begin:
            return HistoryResult([], committed, committed)

        async def read(start: int, stop: int) -> list[Record]:
            return await self._read_range(consumer, tp, start, stop)

        try:
            return await collect_history(
                read,
                begin=begin,
                end=committed,
                need=need,
                first_step=self.first_step,
                max_records=self.max_records,
            )
        finally:
            consumer.assign([])

    async def _read_range(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int
    ) -> list[Record]:
        """Records with start <= offset < stop. Stops at ``stop``, not at the high watermark."""
        if set(consumer.assignment()) != {tp}:
            consumer.assign([tp])
        # Seek at once: on the embedded broker a consumer stopped while its offset reset
        # is in flight waits for an answer that never comes.
        consumer.seek(tp, start)
        out: list[Record] = []
        idle_since: float | None = None
        while True:
            batch = await consumer.getmany(tp, timeout_ms=100, max_records=10_000)
            recs = batch.get(tp, [])
            for r in recs:
                if r.offset >= stop:
                    return out
                out.append((r.offset, r.value))
            if out and out[-1][0] >= stop - 1:
                return out
            if await consumer.position(tp) >= stop:
                return out  # holes at the end of the range (control records)
            if recs:
                idle_since = None
            else:
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since > self.idle_timeout_s:
                    # The committed offset is past the last record the broker serves.
                    log.warning(
                        "history: %s has no records from %d up to the committed %d",
                        tp,
                        await consumer.position(tp),
                        stop,
                    )
                    return out
            await asyncio.sleep(0)

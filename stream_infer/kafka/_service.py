"""The service loop: consumer group -> ``Pipeline.process`` -> producer -> commit (at-least-once).

One batch at a time, under a lock the rebalance listener also takes: ``getmany``; the
records of warm partitions through the pipeline (``BatchProcessor``); every prediction and
dead letter sent and acknowledged (``Publisher``); then ``offset + 1`` committed per
partition (``Committer``). So an input offset is committed only after everything it
produced is acknowledged (docs/design.md, Delivery and state); a crash replays at most the
uncommitted batch. A newly assigned partition's streams are rebuilt from history before
its first record (``Rebuilder``). ``PartitionBook``: which partitions are ours, warm, and
where they resume; ``BrokerHealth``: whether Kafka answers; ``Observer``: every count.
See docs/service.md ("The parts").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stream_infer._errors import BrokerError
from stream_infer.config import KafkaSettings
from stream_infer.kafka._book import PartitionBook
from stream_infer.kafka._client import client_kwargs
from stream_infer.kafka._clients import (
    connect,
    leave_generation_zero,
    open_clients,
    rebalance_listener,
)
from stream_infer.kafka._committer import Committer
from stream_infer.kafka._health import BrokerHealth
from stream_infer.kafka._history import HistorySource, KafkaHistory
from stream_infer.kafka._observer import BatchClock, BatchDone, Observer, observer_for
from stream_infer.kafka._processor import BatchProcessor, first_offsets
from stream_infer.kafka._publisher import Publisher
from stream_infer.kafka._rebuild import Rebuilder
from stream_infer.kafka._stats import Stats
from stream_infer.kafka._stream_history import LazyHistory, StreamHistorySource
from stream_infer.pipeline import BatchResult, EnsembleLike, Pipeline, wall_ms

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import ConsumerRecord

    from stream_infer.ops import Metrics
    from stream_infer.reload import BatchGate

__all__ = ["EnsembleProvider", "Service"]

log = logging.getLogger("stream_infer.service")

EnsembleProvider = Callable[[], EnsembleLike | None]
"""Returns the ensemble to serve now; called between batches (the hot-reload seam)."""

Records = Mapping["TopicPartition", Sequence["ConsumerRecord[Any, Any]"]]


class Service:
    """One instance of ``stream-infer run``: a member of the consumer group.

    ``run()`` until ``request_stop()`` (or SIGTERM/SIGINT when the CLI runs it), then it
    finishes the batch in flight, commits, leaves the group and logs one summary line.
    ``stats`` holds the running numbers; ``ready`` is true once partitions are assigned
    and warm; ``serving`` also requires a model when ``model_required`` says one is
    configured (what /readyz answers).

    ``start_timeout_s``: how long ``start`` keeps trying to reach the broker (None: until
    ``request_stop``; 0: one attempt). ``metrics``: a ``stream_infer.ops.Metrics`` updated
    after each batch. ``gate``: held around each batch (``stream_infer.reload.BatchGate``, the
    hot reload's ``gate``), so a reload's load steps run between batches, not inside them.

    ``history``: where partitions are rebuilt from (default: the topic, ``KafkaHistory``).
    ``stream_history`` (e.g. ``stream_infer.db.PostgresHistory``): rebuild each stream of a
    newly assigned partition from it when the stream's first record arrives, and from
    ``history`` only the streams it does not cover; when it cannot be reached at an
    assignment, that assignment uses ``history`` alone.

    Its parts are attributes: ``book``, ``health``, ``publisher``, ``committer``,
    ``rebuilder``, ``processor``, ``observer``.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        settings: KafkaSettings | None = None,
        *,
        bootstrap: str | None = None,
        ensemble: EnsembleProvider | None = None,
        history: HistorySource | None = None,
        stats: Stats | None = None,
        clock: Callable[[], float] = time.perf_counter,
        linger_ms: int = 0,
        poll_timeout_ms: int = 100,
        send_timeout_s: float = 120.0,
        session_timeout_ms: int = 10_000,
        client_id: str = "stream-infer",
        on_batch: Callable[[BatchResult], Awaitable[None] | None] | None = None,
        metrics: Metrics | None = None,
        gate: BatchGate | None = None,
        model_required: bool | Callable[[], bool] = False,
        start_timeout_s: float | None = 0.0,
        start_retry_s: float = 1.0,
        probe_interval_s: float = 1.0,
        stream_history: StreamHistorySource | None = None,
    ) -> None:
        self.settings = settings or KafkaSettings()
        self.bootstrap = bootstrap or self.settings.kafka_bootstrap_servers
        self.pipeline = pipeline
        self.metrics = metrics
        self.observer: Observer = observer_for(stats, metrics)
        self.client = client_kwargs(self.settings, self.bootstrap)
        self.history: HistorySource = history or KafkaHistory(self.bootstrap, client=self.client)
        self._own_history = history is None
        topic = self.settings.kafka_candles_topic
        # HISTORY_SOURCE=postgres: streams rebuilt one by one, the topic for the rest.
        lazy = (
            LazyHistory(stream_history, self.history, observer=self.observer)
            if stream_history is not None
            else None
        )
        self.book = PartitionBook()
        self.health = BrokerHealth(self.bootstrap, self.observer, probe_interval_s=probe_interval_s)
        self.publisher = Publisher(
            self.settings, self.health, self.observer, send_timeout_s=send_timeout_s
        )
        self.committer = Committer(self.book, self.health, self.observer)
        self.rebuilder = Rebuilder(pipeline, self.history, self.observer, lazy=lazy)
        self.processor = BatchProcessor(pipeline, self.rebuilder, topic)
        self._provider = ensemble
        self._clock = clock
        self._linger_ms = linger_ms
        self._poll_timeout_ms = poll_timeout_ms
        self._session_timeout_ms = session_timeout_ms
        self._client_id = client_id
        self._on_batch = on_batch
        self._gate = gate
        self._model_required = model_required
        self._start_timeout_s = start_timeout_s
        self._start_retry_s = start_retry_s
        self._held_since: float | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._assigned_once = asyncio.Event()

    # -- state ------------------------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        return self.observer.stats

    @property
    def ready(self) -> bool:
        """Partitions are assigned and every one is warm."""
        c = self._consumer
        return c is not None and self.book.ready(c.assignment())

    def _required(self) -> bool:
        need = self._model_required
        return need() if callable(need) else need

    @property
    def holding(self) -> bool:
        """A model is required (``model_required``) and none is loaded: consuming now would
        commit candles without their predictions, so the service pauses instead."""
        return self._required() and self.pipeline.ensemble is None

    @property
    def reachable(self) -> bool:
        """The broker answered the last request (a fetch with records, or the idle probe)."""
        return self.health.reachable

    @property
    def serving(self) -> bool:
        """``ready``, the broker reachable, and a model loaded unless inference is disabled
        by configuration (what /readyz answers)."""
        ok = (
            self.ready
            and self.health.reachable
            and (self.pipeline.ensemble is not None or not self._required())
        )
        self.observer.serving(ok)
        return ok

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def request_stop(self) -> None:
        """Stop after the batch in flight (safe to call from a signal handler)."""
        self._stop.set()

    async def check_history(self) -> bool | None:
        """Whether ``stream_history`` answers now (None without one); logs when it does not."""
        return await self.rebuilder.usable()

    async def wait_assigned(self, timeout: float = 30.0) -> None:
        """Until the first assignment has been warmed (for tests and benchmarks)."""
        await asyncio.wait_for(self._assigned_once.wait(), timeout)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the consumer and the producer and subscribe; retried until the broker
        answers, for up to ``start_timeout_s`` (BrokerError after that)."""
        await connect(
            self._start_once,
            self.health,
            self.observer,
            self._stop,
            timeout_s=self._start_timeout_s,
            retry_s=self._start_retry_s,
        )

    async def _start_once(self) -> None:
        consumer, producer = await open_clients(
            self.settings,
            self.client,
            client_id=self._client_id,
            linger_ms=self._linger_ms,
            session_timeout_ms=self._session_timeout_ms,
        )
        self._consumer = self.committer.consumer = consumer
        self.publisher.producer = producer
        consumer.subscribe(
            [self.settings.kafka_candles_topic],
            listener=rebalance_listener(self._on_revoked, self._on_assigned),
        )
        if self.stats.connect_failures:
            log.info("connected to Kafka at %s", self.bootstrap)
        self.observer.ensemble(self.pipeline.ensemble)

    async def close(self) -> None:
        """Leave the group and flush the producer; idempotent."""
        consumer, self._consumer = self._consumer, None
        producer, self.publisher.producer = self.publisher.producer, None
        self.committer.consumer = None
        if consumer is not None:
            await leave_generation_zero(consumer)
            await consumer.stop()
        if producer is not None:
            await producer.stop()
        if self._own_history and isinstance(self.history, KafkaHistory):
            await self.history.stop()

    async def run(self) -> Stats:
        """Consume until ``request_stop``; returns the stats (also logged as one line)."""
        if self._consumer is None:
            try:
                await self.start()
            except BrokerError:
                if self._stop.is_set():  # asked to stop while waiting for the broker
                    log.info("stream-infer run stopped before Kafka was reached")
                    return self.stats
                raise
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                await self._poll_once(consumer)
        finally:
            await self.close()
            log.info("stream-infer run stopped: %s", self.stats.summary())
        return self.stats

    async def _poll_once(self, consumer: AIOKafkaConsumer) -> None:
        from aiokafka.errors import KafkaError

        self._maybe_swap()
        self._hold_or_resume(consumer)
        _ = self.serving  # refreshes the ready gauge
        try:
            records = await consumer.getmany(
                timeout_ms=self._poll_timeout_ms,
                max_records=self.settings.kafka_max_poll_records,
            )
        except KafkaError as exc:
            # e.g. the broker went away: aiokafka reconnects; keep polling
            self.observer.fetch_failed()
            log.warning("fetch failed: %r; retrying", exc)
            await asyncio.sleep(0.5)
            return
        if records:
            self.health.mark(True)
            await self._handle(records, self._clock())
        else:
            ends = await self.health.probe(consumer)
            if ends is not None:
                self.observer.caught_up(ends, self.book, consumer.paused())

    def _hold_or_resume(self, consumer: AIOKafkaConsumer) -> None:
        """Pause every assigned partition while ``holding`` (polling goes on, so the member
        stays in the group), resume when a model is loaded."""
        if self.holding:
            assigned = consumer.assignment()
            if assigned:
                consumer.pause(*assigned)  # again after each rebalance: new ones start resumed
            if self._held_since is None:
                self._held_since = time.monotonic()
                log.warning(
                    "a model is configured but none could be loaded: consumption paused, "
                    "nothing committed, until one loads"
                )
        elif self._held_since is not None:
            paused = consumer.paused()
            if paused:
                consumer.resume(*paused)
            log.info(
                "a model is loaded: consumption resumed after %.1f s paused",
                time.monotonic() - self._held_since,
            )
            self._held_since = None

    def _maybe_swap(self) -> None:
        if self._provider is None:
            return
        ens = self._provider()
        if ens is not self.pipeline.ensemble:
            old = self.pipeline.swap(ens)
            self.observer.ensemble(ens)
            log.info("serving ensemble %s (was %s)", _ens_name(ens), _ens_name(old))

    # -- one batch --------------------------------------------------------------------------

    async def _handle(self, records: Records, received: float) -> None:
        gate = self._gate.batch() if self._gate is not None else contextlib.nullcontext()
        async with self._lock, gate:
            consumer = self._consumer
            if consumer is None:
                return
            inbound, keys = await self.processor.collect(consumer, self.book, records, received)
            if not inbound:
                return
            first = first_offsets(inbound)
            # The ensemble to use is the one serving now (a swap may have landed while the
            # fetch waited, e.g. across a rebalance); none while one is required: read later.
            self._maybe_swap()
            if self.holding:
                for tp, o in first.items():
                    consumer.seek(tp, o)
                return
            stale = self.processor.stale(self.book.warm)
            if stale:
                await self.rebuilder.rebuild({tp: o for tp, o in first.items() if tp in stale})
            t0 = self._clock()
            results = await self.processor.process(inbound, first)
            t1 = self._clock()
            await self.publisher.publish(results, keys)
            acked = self._clock()
            offsets: dict[int, int] = {}
            for r in results:
                for p, o in r.offsets.items():
                    offsets[p] = max(o, offsets.get(p, -1))
            await self.committer.commit(self.settings.kafka_candles_topic, offsets)
            clock = BatchClock(received, t0, t1, acked, self._clock())
            self.observer.batch(
                BatchDone(
                    results,
                    clock,
                    records,
                    lambda: self.pipeline.streams,
                    self._behind,
                    lambda: self._idle_positions(records),
                )
            )
            if self._on_batch is not None:
                for r in results:
                    res = self._on_batch(r)
                    if asyncio.iscoroutine(res):
                        await res

    def _behind(self, tp: TopicPartition) -> int | None:
        """Records of ``tp`` after our last commit, by the consumer's high watermark."""
        consumer = self._consumer
        hw = consumer.highwater(tp) if consumer is not None else None
        done = self.book.next_offset(tp)
        return None if hw is None or done is None else max(0, hw - done)

    def _idle_positions(self, records: Records) -> dict[int, float]:
        """Warm, unpaused partitions with nothing in this batch that are caught up, with when
        they were last polled (epoch s): while others keep the polls busy, the idle probe
        never runs, so a partition's last fetch says whether it is caught up."""
        consumer = self._consumer
        if consumer is None:
            return {}
        paused, out = consumer.paused(), {}
        for tp in consumer.assignment():
            if tp in records or not self.book.is_warm(tp) or tp in paused:
                continue
            hw, done = consumer.highwater(tp), self.book.next_offset(tp)
            if hw is not None and done is not None and done >= hw:
                polled = consumer.last_poll_timestamp(tp)
                out[tp.partition] = (polled if polled else wall_ms()) / 1000.0
        return out

    # -- rebalance --------------------------------------------------------------------------

    async def _on_revoked(self, revoked: Collection[TopicPartition]) -> None:
        # Taking the lock waits for the batch in flight: it is published and committed.
        async with self._lock:
            self.book.revoke(revoked)
            self.observer.rebalanced()

    async def _on_assigned(self, assigned: Collection[TopicPartition]) -> None:
        async with self._lock:
            consumer = self._consumer
            if consumer is None:
                return
            tps = set(assigned)
            # Streams of partitions that went elsewhere are forgotten.
            held = self.rebuilder.keep({tp.partition for tp in tps})
            committed = {tp: await consumer.committed(tp) for tp in sorted(tps)}
            todo = self.book.assign(tps, committed, held)
            by_stream = await self.rebuilder.by_stream(todo)
            done = await self.rebuilder.rebuild(todo) if todo else set()
            self.book.settle(done)
            self.observer.assigned({tp.partition for tp in tps})
            self._assigned_once.set()
            lazy = self.rebuilder.lazy
            log.info(
                "assigned %s (rebuilt %s%s)",
                sorted(tp.partition for tp in tps),
                sorted(tp.partition for tp in done - by_stream),
                f"; stream by stream from {lazy.source} on their first records: "
                f"{sorted(tp.partition for tp in by_stream)}"
                if lazy is not None and by_stream
                else "",
            )


def _ens_name(ens: EnsembleLike | None) -> str:
    return "none (inference disabled)" if ens is None else f"{ens.ensemble_id}@{ens.version}"

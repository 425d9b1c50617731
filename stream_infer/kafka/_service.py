"""The service loop: consumer group -> ``Pipeline.process`` -> producer -> commit (at-least-once).

One batch at a time, under a lock the rebalance listener also takes:

1. ``getmany`` on the candles topic (a consumer group, no auto-commit).
2. ``Pipeline.process`` (pure, synchronous) on the records of partitions whose state is warm.
3. Send predictions (key = symbol) and dead letters (key = the original key) and wait
   until the broker acknowledges every one (``acks=all``; retried until ``send_timeout_s``).
4. Commit ``offset + 1`` per partition of what was processed.

So an input offset is committed only after everything it produced is acknowledged
(DESIGN.md, Delivery and state); a crash replays at most the uncommitted batch.
On assignment each new partition's streams are rebuilt from history before its first
record is processed: from the topic (``_history.py``), or with ``stream_history`` (Postgres
``candles``) stream by stream before each stream's first record (``_stream_history.py``).
See docs/service.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any

from stream_infer._errors import BrokerError, CandleError
from stream_infer.config import KafkaSettings
from stream_infer.events import DeadLetter, encode_dead_letter, encode_prediction
from stream_infer.kafka._client import client_kwargs
from stream_infer.kafka._history import HistorySource, KafkaHistory
from stream_infer.kafka._produce import make_producer
from stream_infer.kafka._stats import Stats
from stream_infer.kafka._stream_history import LazyHistory, StreamHistorySource
from stream_infer.pipeline import BatchResult, Counts, EnsembleLike, Inbound, Pipeline, StageTimes
from stream_infer.pipeline import wall_ms as _wall_ms

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.structs import ConsumerRecord

    from stream_infer.ops import Metrics
    from stream_infer.reload import BatchGate

__all__ = ["READY_INDEX", "EnsembleProvider", "Service", "history_need"]

log = logging.getLogger("stream_infer.service")

# FEATURES.md, Readiness: features are ready from the 400th candle of a stream (index 399).
READY_INDEX = 399

EnsembleProvider = Callable[[], EnsembleLike | None]
"""Returns the ensemble to serve now; called between batches (the hot-reload seam)."""


def history_need(pipeline: Pipeline) -> int:
    """Candles a stream needs to predict at once: 400 to warm up, then ``seq_len - 1`` more."""
    return READY_INDEX + pipeline.keep_rows


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
        self.stats = stats or Stats()
        self._provider = ensemble
        self._client = client_kwargs(self.settings, self.bootstrap)
        self._history: HistorySource = history or KafkaHistory(self.bootstrap, client=self._client)
        self._own_history = history is None
        self._clock = clock
        self._linger_ms = linger_ms
        self._poll_timeout_ms = poll_timeout_ms
        self._send_timeout_s = send_timeout_s
        self._session_timeout_ms = session_timeout_ms
        self._client_id = client_id
        self._on_batch = on_batch
        self._gate = gate
        self.metrics = metrics
        self._model_required = model_required
        self._start_timeout_s = start_timeout_s
        self._start_retry_s = start_retry_s
        self._probe_interval_s = probe_interval_s
        # HISTORY_SOURCE=postgres: streams rebuilt one by one, the topic for the rest.
        self._lazy = (
            LazyHistory(stream_history, self._history, stats=self.stats, metrics=metrics)
            if stream_history is not None
            else None
        )
        self._last_probe = 0.0
        self._reachable = False
        self._down_since: float | None = None
        self._held_since: float | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._warm: set[TopicPartition] = set()  # assigned and rebuilt: records may be processed
        self._next: dict[TopicPartition, int] = {}  # next offset to process (committed)
        self._assigned_once = asyncio.Event()
        self._metric_partitions: set[int] = set()  # partitions with per-partition series

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Partitions are assigned and every one is warm."""
        c = self._consumer
        if c is None or not self._assigned_once.is_set():
            return False
        return set(c.assignment()) <= self._warm

    @property
    def holding(self) -> bool:
        """A model is required (``model_required``) and none is loaded: consuming now would
        commit candles without their predictions, so the service pauses instead."""
        need = self._model_required
        required = need() if callable(need) else need
        return required and self.pipeline.ensemble is None

    @property
    def reachable(self) -> bool:
        """The broker answered the last request (a fetch with records, or the idle probe)."""
        return self._reachable

    @property
    def serving(self) -> bool:
        """``ready``, the broker reachable, and a model loaded unless inference is disabled
        by configuration (what /readyz answers)."""
        need = self._model_required
        required = need() if callable(need) else need
        ok = self.ready and self._reachable and (self.pipeline.ensemble is not None or not required)
        if self.metrics is not None:
            self.metrics.ready.set(1 if ok else 0)
        return ok

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    def request_stop(self) -> None:
        """Stop after the batch in flight (safe to call from a signal handler)."""
        self._stop.set()

    async def check_history(self) -> bool | None:
        """Whether ``stream_history`` answers now (None without one); logs when it does not."""
        return None if self._lazy is None else await self._lazy.usable()

    async def wait_assigned(self, timeout: float = 30.0) -> None:
        """Until the first assignment has been warmed (for tests and benchmarks)."""
        await asyncio.wait_for(self._assigned_once.wait(), timeout)

    async def start(self) -> None:
        """Connect the consumer and the producer and subscribe; retried until the broker
        answers, for up to ``start_timeout_s`` (BrokerError after that)."""
        loop = asyncio.get_running_loop()
        deadline = None if self._start_timeout_s is None else loop.time() + self._start_timeout_s
        delay = self._start_retry_s
        while True:
            try:
                await self._start_once()
                self._set_reachable(True)
                return
            except BrokerError as exc:
                self._set_reachable(False)
                self.stats.connect_failures += 1
                if self.metrics is not None:
                    self.metrics.broker_errors.labels("connect").inc()
                if self._stop.is_set() or (deadline is not None and loop.time() + delay > deadline):
                    raise
                log.warning("%s; not ready, retrying in %.1f s", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                raise BrokerError(f"stopped before Kafka at {self.bootstrap} could be reached")
            delay = min(delay * 2, 5.0)

    async def _start_once(self) -> None:
        from aiokafka import AIOKafkaConsumer

        s = self.settings
        consumer = AIOKafkaConsumer(
            **self._client,
            group_id=s.kafka_group_id,
            client_id=self._client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            max_poll_records=s.kafka_max_poll_records,
            # how soon the group notices a dead member and hands its partitions over
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(100, self._session_timeout_ms // 3),
            max_partition_fetch_bytes=max(s.kafka_max_message_bytes, 1 << 20),
        )
        producer = make_producer(
            self.bootstrap,
            client={k: v for k, v in self._client.items() if k != "bootstrap_servers"},
            linger_ms=self._linger_ms,
            client_id=self._client_id,
            max_request_size=max(s.kafka_max_message_bytes * 2, 1 << 20),
        )
        try:
            await producer.start()
            await consumer.start()
        except Exception as exc:
            await consumer.stop()
            await producer.stop()
            raise BrokerError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc
        self._consumer, self._producer = consumer, producer
        consumer.subscribe([s.kafka_candles_topic], listener=_Listener(self))
        if self.stats.connect_failures:
            log.info("connected to Kafka at %s", self.bootstrap)
        if self.metrics is not None:
            ens = self.pipeline.ensemble
            self.metrics.set_ensemble(
                None if ens is None else str(ens.ensemble_id),
                None if ens is None else str(ens.version),
            )

    async def close(self) -> None:
        """Leave the group and flush the producer; idempotent."""
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            await _leave_generation_zero(consumer)
            await consumer.stop()
        if producer is not None:
            await producer.stop()
        if self._own_history and isinstance(self._history, KafkaHistory):
            await self._history.stop()

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
        from aiokafka.errors import KafkaError

        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
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
                    self.stats.fetch_errors += 1
                    if self.metrics is not None:
                        self.metrics.broker_errors.labels("fetch").inc()
                    log.warning("fetch failed: %r; retrying", exc)
                    await asyncio.sleep(0.5)
                    continue
                if records:
                    self._set_reachable(True)
                    received = self._clock()
                    await self._handle(records, received)
                else:
                    await self._probe(consumer)
        finally:
            await self.close()
            log.info("stream-infer run stopped: %s", self.stats.summary())
        return self.stats

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

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """When idle, ask the broker for the end offsets (at most every ``probe_interval_s``):
        an empty poll alone cannot tell "caught up" from "the broker is gone"."""
        from aiokafka.errors import KafkaError

        now = time.monotonic()
        if now - self._last_probe < self._probe_interval_s:
            return
        self._last_probe = now
        tps = list(consumer.assignment())
        try:
            if tps:
                ends = await asyncio.wait_for(consumer.end_offsets(tps), 2.0)
            else:
                await asyncio.wait_for(consumer.topics(), 2.0)
                ends = {}
        except (KafkaError, TimeoutError, OSError) as exc:
            if self._reachable:
                self.stats.fetch_errors += 1
                if self.metrics is not None:
                    self.metrics.broker_errors.labels("fetch").inc()
                log.warning(
                    "Kafka at %s does not answer (%r); not ready until it does",
                    self.bootstrap,
                    exc,
                )
            self._set_reachable(False)
            return
        self._set_reachable(True)
        if self.metrics is not None:
            paused = consumer.paused()
            now_s = time.time()
            for tp, end in ends.items():
                part = str(tp.partition)
                done = self._next.get(tp)
                if done is not None:
                    self.metrics.lag.labels(part).set(max(0, end - done))
                if tp in self._warm:  # nothing fetched and the broker answers: caught up
                    self.metrics.lag_seconds.labels(part).set(0)
                    # ... unless held (paused) or behind the end: then the position stays
                    # where it is and its age grows.
                    if tp not in paused and done is not None and end <= done:
                        self.metrics.set_position(tp.partition, now_s)

    @contextlib.asynccontextmanager
    async def _stall_watch(self, op: str, what: str) -> AsyncIterator[None]:
        """Around a wait on the broker: when it lasts longer than ``2 * probe_interval_s``, log
        it, count it under ``op`` and mark the broker unreachable (aiokafka retries quietly);
        when it then completes, the broker is back."""
        stalled = False

        async def watch() -> None:
            nonlocal stalled
            await asyncio.sleep(2 * self._probe_interval_s)
            stalled = True
            self.stats.stalls += 1
            if self.metrics is not None:
                self.metrics.broker_errors.labels(op).inc()
            log.warning(
                "%s not acknowledged after %.0f s; Kafka at %s does not answer, waiting",
                what,
                2 * self._probe_interval_s,
                self.bootstrap,
            )
            self._set_reachable(False)

        watcher = asyncio.create_task(watch())
        try:
            yield
        finally:
            watcher.cancel()
        if stalled:
            self._set_reachable(True)

    def _set_reachable(self, ok: bool) -> None:
        if ok and not self._reachable and self._down_since is not None:
            log.info(
                "Kafka at %s answers again after %.1f s",
                self.bootstrap,
                time.monotonic() - self._down_since,
            )
        if not ok and self._down_since is None:
            self._down_since = time.monotonic()
        if ok:
            self._down_since = None
        self._reachable = ok
        if self.metrics is not None:
            self.metrics.broker_reachable.set(1 if ok else 0)

    # -- one batch ----------------------------------------------------------------------

    def _maybe_swap(self) -> None:
        if self._provider is None:
            return
        ens = self._provider()
        if ens is not self.pipeline.ensemble:
            old = self.pipeline.swap(ens)
            if self.metrics is not None:
                self.metrics.set_ensemble(
                    None if ens is None else str(ens.ensemble_id),
                    None if ens is None else str(ens.version),
                )
            log.info(
                "serving ensemble %s (was %s)",
                _ens_name(ens),
                _ens_name(old),
            )

    async def _handle(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]], received: float
    ) -> None:
        gate = self._gate.batch() if self._gate is not None else contextlib.nullcontext()
        async with self._lock, gate:
            consumer = self._consumer
            if consumer is None:
                return
            assigned = consumer.assignment()
            inbound: list[Inbound] = []
            keys: dict[tuple[int, int], bytes | None] = {}
            topic = self.settings.kafka_candles_topic
            for tp, msgs in records.items():
                if not msgs:
                    continue
                if tp not in self._warm:
                    if tp not in assigned:
                        continue  # fetched across a rebalance: no longer ours
                    # Ours but not rebuilt (the listener's rebuild failed, or has not run):
                    # rebuild up to these records, or read them again later.
                    if not await self._rebuild({tp: msgs[0].offset}):
                        consumer.seek(tp, msgs[0].offset)
                        await asyncio.sleep(0.5)  # the broker may be recovering
                        continue
                    self._warm.add(tp)
                for m in msgs:
                    inbound.append(
                        Inbound(
                            m.value, tp.partition, m.offset, received, tp.topic, m.timestamp, m.key
                        )
                    )
                    keys[(tp.partition, m.offset)] = m.key
            if not inbound:
                return
            first = _first_offsets(inbound)
            # The ensemble to use is the one serving now (a swap may have landed while the
            # fetch waited, e.g. across a rebalance); none while one is required: read later.
            self._maybe_swap()
            if self.holding:
                for tp, o in first.items():
                    consumer.seek(tp, o)
                return
            stale = self._stale_partitions(topic)
            if stale:
                await self._rebuild({tp: o for tp, o in first.items() if tp in stale})
            t0 = self._clock()
            results = await self._process(inbound, first)
            t1 = self._clock()
            await self._publish(results, keys)
            acked = self._clock()
            offsets: dict[int, int] = {}
            for r in results:
                for p, o in r.offsets.items():
                    offsets[p] = max(o, offsets.get(p, -1))
            await self._commit(topic, offsets)
            st = self.stats
            st.process_ms.add((t1 - t0) * 1000.0)
            st.publish_ms.add((acked - t1) * 1000.0)
            st.commit_ms.add((self._clock() - acked) * 1000.0)
            st.batches += 1
            for r in results:
                st.add_counts(r.counts)
                st.predictions += len(r.predictions)
                st.dead_letters += len(r.dead_letters)
                ack_ms = (acked - received) * 1000.0
                for _ in r.predictions:
                    st.latency.add(ack_ms)
            if self.metrics is not None:
                self._observe(results, records, t1, acked, received)
            if self._on_batch is not None:
                for r in results:
                    res = self._on_batch(r)
                    if asyncio.iscoroutine(res):
                        await res

    def _observe(
        self,
        results: Sequence[BatchResult],
        records: Mapping[TopicPartition, Sequence[ConsumerRecord[Any, Any]]],
        processed: float,
        acked: float,
        received: float,
    ) -> None:
        """One batch into the Prometheus metrics (the clock is in seconds)."""
        m = self.metrics
        assert m is not None
        stage = m.stage_latency
        n_pred = 0
        for r in results:
            c = r.counts
            m.candles.inc(c.messages)
            n_pred += len(r.predictions)
            for reason, n in c.dead_letters.items():
                m.dead_letters.labels(reason).inc(n)
            if c.duplicates:
                m.duplicates.labels("duplicate").inc(c.duplicates)
            if c.late:
                m.duplicates.labels("late").inc(c.late)
            stage.labels("decode").observe(r.times.decode)
            stage.labels("features").observe(r.times.features)
            if r.predictions:
                stage.labels("models").observe(r.times.models)
        m.predictions.inc(n_pred)
        stage.labels("produce").observe(acked - processed)
        e2e = stage.labels("end_to_end")
        for _ in range(n_pred):
            e2e.observe(acked - received)
        m.streams.set(self.pipeline.streams)
        consumer = self._consumer
        now_ms = _wall_ms()
        for tp, msgs in records.items():
            part = str(tp.partition)
            if msgs and msgs[-1].timestamp is not None:
                m.lag_seconds.labels(part).set(max(0.0, (now_ms - msgs[-1].timestamp) / 1000.0))
                m.set_position(tp.partition, msgs[-1].timestamp / 1000.0)
            hw = consumer.highwater(tp) if consumer is not None else None
            done = self._next.get(tp)
            if hw is not None and done is not None:
                # On the embedded broker the high watermark counts batches (docs/service.md):
                # there this undercounts; lag_seconds does not depend on it.
                m.lag.labels(part).set(max(0, hw - done))
        if consumer is not None:
            # A partition with nothing in this batch while others keep the polls busy: the
            # idle probe never runs, so its last fetch says whether it is caught up.
            paused = consumer.paused()
            for tp in consumer.assignment():
                if tp in records or tp not in self._warm or tp in paused:
                    continue
                hw = consumer.highwater(tp)
                done = self._next.get(tp)
                if hw is not None and done is not None and done >= hw:
                    polled = consumer.last_poll_timestamp(tp)
                    m.set_position(tp.partition, (polled if polled else now_ms) / 1000.0)

    def _stale_partitions(self, topic: str) -> set[TopicPartition]:
        """Partitions with streams shorter than a newly swapped ensemble needs."""
        stale = self.pipeline.stale_streams()
        if not stale:
            return set()
        from aiokafka import TopicPartition

        parts = {
            st.partition
            for st in self.pipeline.stream_states()
            if (st.symbol, st.interval) in set(stale) and st.partition is not None
        }
        return {TopicPartition(topic, p) for p in parts} & self._warm

    async def _process(
        self, inbound: list[Inbound], first: Mapping[TopicPartition, int]
    ) -> list[BatchResult]:
        """``pipeline.process``; if it raises, rebuild and retry one message at a time.

        A message that still fails becomes a dead letter (reason ``internal:<Error>``):
        an unexpected error never stops the service.
        """
        try:
            return await self._run_pipeline(inbound)
        except Exception:
            log.exception("processing a batch of %d failed; retrying one by one", len(inbound))
        # The streams are ahead of these offsets now: rebuild them to just before the batch.
        await self._rebuild(first)
        results: list[BatchResult] = []
        from aiokafka import TopicPartition

        for m in inbound:
            try:
                results.extend(await self._run_pipeline([m]))
            except Exception as exc:
                log.exception("message %s/%d/%d failed", m.topic, m.partition, m.offset)
                results.append(self._internal_dead_letter(m, exc))
                # It may have half-moved its stream (the features raised midway): rebuild
                # the partition through it, so the live state is the one a restart would
                # rebuild (``_warm_history`` leaves out a candle the features cannot take).
                await self._rebuild({TopicPartition(m.topic, m.partition): m.offset + 1})
        return results

    async def _run_pipeline(self, inbound: Sequence[Inbound]) -> list[BatchResult]:
        """``pipeline.process``; on partitions rebuilt stream by stream, it stops before each
        stream met for the first time, whose history is then read (one query for all such
        streams of the batch) before the rest of the batch goes on."""
        lazy = self._lazy
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
            await lazy.resolve(
                r.held,
                topic=self.settings.kafka_candles_topic,
                need=history_need(self.pipeline),
                warm=self._warm_history,
            )

    def _internal_dead_letter(self, m: Inbound, exc: Exception) -> BatchResult:
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

    async def _publish(
        self, results: Sequence[BatchResult], keys: Mapping[tuple[int, int], bytes | None]
    ) -> None:
        """Send every prediction and dead letter; return once all are acknowledged."""
        s = self.settings
        out: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]] = []
        for r in results:
            for p in r.predictions:
                out.append((s.kafka_predictions_topic, p.message_key, encode_prediction(p), None))
            for d in r.dead_letters:
                value = encode_dead_letter(d)
                if len(value) > s.kafka_max_message_bytes:
                    value = encode_dead_letter(_shrunk(d, s.kafka_max_message_bytes))
                out.append(
                    (s.kafka_dlq_topic, keys.get((d.partition, d.offset)), value, d.headers())
                )
        if out:
            await self._send_all(out)

    async def _send_all(
        self, out: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]]
    ) -> None:
        from aiokafka.errors import KafkaError

        producer = self._producer
        assert producer is not None
        deadline = time.monotonic() + self._send_timeout_s
        pending = out
        delay = 0.1
        while True:
            futs: list[asyncio.Future[Any]] = []
            for topic, key, value, headers in pending:
                try:
                    futs.append(await producer.send(topic, value, key=key, headers=headers))
                except KafkaError as exc:
                    log.warning("send to %s failed: %r", topic, exc)
                    # counted with the failed results below
                    fut = asyncio.get_running_loop().create_future()
                    fut.set_exception(exc)
                    futs.append(fut)
            async with self._stall_watch("send", f"{len(futs)} sends"):
                results = await asyncio.gather(*futs, return_exceptions=True)
            failed = [i for i, res in enumerate(results) if isinstance(res, BaseException)]
            if not failed:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{len(failed)} of {len(pending)} messages not acknowledged within "
                    f"{self._send_timeout_s:g} s: {results[failed[0]]!r}"
                )
            self.stats.send_retries += len(failed)
            if self.metrics is not None:
                self.metrics.broker_errors.labels("send").inc(len(failed))
            log.warning("%d sends failed (%r); retrying", len(failed), results[failed[0]])
            # At-least-once: resending is safe, keys identify the events downstream.
            pending = [pending[i] for i in failed]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _commit(self, topic: str, offsets: Mapping[int, int]) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

        consumer = self._consumer
        assert consumer is not None
        assigned = consumer.assignment()
        commit = {
            tp: o + 1 for p, o in offsets.items() if (tp := TopicPartition(topic, p)) in assigned
        }
        if not commit:
            return
        try:
            async with self._stall_watch("commit", "the offset commit"):
                await consumer.commit(commit)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took the partitions: the new owner replays from the last commit.
            self.stats.commit_failures += 1
            if self.metrics is not None:
                self.metrics.broker_errors.labels("commit").inc()
            log.warning("commit of %s failed (%s); the new owner replays them", commit, exc)
            return
        except KafkaError as exc:
            self.stats.commit_failures += 1
            if self.metrics is not None:
                self.metrics.broker_errors.labels("commit").inc()
            log.warning("commit of %s failed: %r; will be retried with the next batch", commit, exc)
            return
        self.stats.commits += 1
        if self.metrics is not None:
            self.metrics.commits.inc()
        self._next.update(commit)

    # -- rebalance ----------------------------------------------------------------------

    async def _rebuild(self, upto: Mapping[TopicPartition, int]) -> set[TopicPartition]:
        """Replace the streams of these partitions by ones warmed from history before ``upto``.

        Returns the partitions rebuilt; one whose history cannot be read is logged and left
        out (its streams stay dropped: it warms up live, or the caller retries). A partition
        rebuilt stream by stream (``stream_history``) forgets its streams: each is read again
        before its next record, bounded by that record.
        """
        self.pipeline.drop_partitions(tp.partition for tp in upto)
        need = history_need(self.pipeline)
        done: set[TopicPartition] = set()
        lazy = self._lazy
        if lazy is not None:
            for tp in [tp for tp in upto if tp.partition in lazy.partitions]:
                lazy.begin(tp.partition)
                done.add(tp)
        for tp, end in upto.items():
            if tp in done:
                continue
            if end <= 0:
                done.add(tp)
                continue
            t0 = time.perf_counter()
            try:
                hist = await self._history.load(tp, end, need)
            except Exception:
                self.stats.history_failures += 1
                if self.metrics is not None:
                    self.metrics.broker_errors.labels("history").inc()
                log.exception("reading the history of %s up to %d failed", tp, end)
                continue
            self._warm_history(hist.candles, tp.partition)
            dt = time.perf_counter() - t0
            self.stats.history_candles += len(hist.candles)
            self.stats.history_seconds += dt
            if self.metrics is not None:
                self.metrics.rebuilds.inc()
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
            done.add(tp)
        return done

    def _warm_history(self, candles: list[Any], partition: int) -> int:
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
            while True:
                try:
                    self.pipeline.warm(group, partition=partition)
                    break
                except Exception as exc:
                    # The first prefix that raises ends with the bad candle (warm is sequential).
                    ok, bad = 0, len(group)
                    while bad - ok > 1:
                        mid = (ok + bad) // 2
                        try:
                            self.pipeline.warm(group[:mid], partition=partition)
                            ok = mid
                        except Exception:
                            bad = mid
                    c = group[bad - 1]
                    log.error(
                        "history: %s %s at open_time %d cannot be applied (%r); left out",
                        c.symbol,
                        c.interval,
                        c.open_time,
                        exc,
                    )
                    group = group[: bad - 1] + group[bad:]
                    left_out += 1
        self.stats.history_failures += left_out
        return left_out

    async def _on_revoked(self, revoked: Collection[TopicPartition]) -> None:
        # Taking the lock waits for the batch in flight: it is published and committed.
        async with self._lock:
            self._warm -= set(revoked)
            self.stats.rebalances += 1
            if self.metrics is not None:
                self.metrics.rebalances.inc()
                self.metrics.ready.set(0)

    async def _on_assigned(self, assigned: Collection[TopicPartition]) -> None:
        async with self._lock:
            consumer = self._consumer
            if consumer is None:
                return
            assigned = set(assigned)
            # Streams of partitions that went elsewhere are forgotten.
            held = {p for st in self.pipeline.stream_states() if (p := st.partition) is not None}
            gone = {p for p in held if all(tp.partition != p for tp in assigned)}
            if gone:
                self.pipeline.drop_partitions(gone)
            lazy = self._lazy
            if lazy is not None:
                for p in lazy.partitions - {tp.partition for tp in assigned}:
                    lazy.end(p)
            todo: dict[TopicPartition, int] = {}
            for tp in sorted(assigned, key=lambda t: t.partition):
                committed = await consumer.committed(tp)
                start = committed if committed is not None else 0
                if tp.partition in held and self._next.get(tp) == start and start > 0:
                    # Ours before the rebalance and nobody committed since: state is current.
                    self._warm.add(tp)
                    continue
                todo[tp] = start
                self._next[tp] = start
            by_stream: set[TopicPartition] = set()
            if todo and lazy is not None:
                if await lazy.usable():
                    # Even from offset 0: Postgres may hold what the topic no longer does.
                    by_stream = set(todo)
                for tp in todo:
                    if tp in by_stream:
                        lazy.begin(tp.partition)
                    else:
                        lazy.end(tp.partition)
            done = await self._rebuild(todo) if todo else set()
            self._warm = (self._warm | done) & assigned
            for tp in list(self._next):
                if tp not in assigned:
                    del self._next[tp]
            if self.metrics is not None:
                owned = {tp.partition for tp in assigned}
                self.metrics.forget_partitions(self._metric_partitions - owned)
                self._metric_partitions = owned
            self._assigned_once.set()
            log.info(
                "assigned %s (rebuilt %s%s)",
                sorted(tp.partition for tp in assigned),
                sorted(tp.partition for tp in done - by_stream),
                f"; stream by stream from {lazy.source} on their first records: "
                f"{sorted(tp.partition for tp in by_stream)}"
                if lazy is not None and by_stream
                else "",
            )


async def _leave_generation_zero(consumer: AIOKafkaConsumer) -> None:
    """Leave the group when it is in generation 0, which aiokafka does not do itself.

    The embedded broker numbers a group's first generation 0 (Kafka starts at 1), and
    aiokafka only sends LeaveGroup for a generation > 0: without this, the next member
    would wait out the session timeout before it gets the partitions.
    """
    coordinator: Any = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "generation", None) != 0:
        return
    try:
        from aiokafka.errors import KafkaError
        from aiokafka.protocol.group import LeaveGroupRequest

        await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, coordinator.member_id))
    except (KafkaError, AttributeError, TypeError) as exc:
        log.debug("LeaveGroup in generation 0 failed: %r", exc)


def _first_offsets(inbound: Iterable[Inbound]) -> dict[TopicPartition, int]:
    from aiokafka import TopicPartition

    first: dict[TopicPartition, int] = {}
    for m in inbound:
        tp = TopicPartition(m.topic, m.partition)
        if m.offset < first.get(tp, m.offset + 1):
            first[tp] = m.offset
    return first


def _ens_name(ens: EnsembleLike | None) -> str:
    return "none (inference disabled)" if ens is None else f"{ens.ensemble_id}@{ens.version}"


def _shrunk(d: DeadLetter, limit: int) -> DeadLetter:
    """The dead letter with the original value cut so the record fits under ``limit`` bytes."""
    import base64

    keep = max(0, (limit // 2) * 3 // 4 - 1024)
    raw = base64.b64decode(d.value)[:keep]
    return d.model_copy(
        update={
            "value": base64.b64encode(raw).decode(),
            "error": f"{d.error} [value truncated to {len(raw)} bytes]"[:500],
        }
    )


class _Listener:
    """aiokafka's ConsumerRebalanceListener, forwarding to the service (built lazily to keep imports light)."""

    def __new__(cls, service: Service) -> Any:
        from aiokafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
                await service._on_revoked(list(revoked))

            async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
                await service._on_assigned(list(assigned))

        return Listener()

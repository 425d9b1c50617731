"""What happened, said once: every part of the service reports here, and this updates ``Stats``.

``Observer`` keeps the running numbers (``Stats``: the summary line, benchmarks, tests);
``PrometheusObserver`` also moves the service's Prometheus metrics from the same events, so
a counter and its metric can never drift apart. ``observer_for(stats, metrics)`` picks one:
no part of the service asks whether metrics are configured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stream_infer.kafka._stats import Stats
from stream_infer.pipeline import BatchResult, EnsembleLike
from stream_infer.pipeline import wall_ms as _wall_ms

if TYPE_CHECKING:
    from aiokafka import TopicPartition

    from stream_infer.kafka._book import PartitionBook
    from stream_infer.kafka._stream_history import Resolved
    from stream_infer.ops import Metrics

__all__ = ["BatchClock", "BatchDone", "Observer", "PrometheusObserver", "observer_for"]

# The broker operations counted under ``stream_infer_broker_errors{op=...}``.
BrokerOp = str


@dataclass(frozen=True, slots=True)
class BatchClock:
    """One batch's moments on the service clock (seconds)."""

    received: float  # the fetch returned
    started: float  # the pipeline began
    processed: float  # the pipeline returned
    acked: float  # every send acknowledged
    committed: float  # the commit returned


@dataclass(frozen=True, slots=True)
class BatchDone:
    """One batch published and committed, as the observer sees it."""

    results: Sequence[BatchResult]
    clock: BatchClock
    records: Mapping[TopicPartition, Sequence[Any]]  # what the fetch returned
    streams: Callable[[], int]  # how many streams are held now
    behind: Callable[[TopicPartition], int | None]  # records left in a partition
    # Partitions of ours with nothing in this batch that are caught up: partition -> when
    # they were last polled (epoch s). Others kept the polls busy, so no idle probe ran.
    idle_positions: Callable[[], Mapping[int, float]] = dict


class Observer:
    """The service's events into ``stats``."""

    def __init__(self, stats: Stats | None = None) -> None:
        self.stats = stats or Stats()

    # -- the broker ---------------------------------------------------------------------

    def connect_failed(self) -> None:
        self.stats.connect_failures += 1

    def fetch_failed(self) -> None:
        self.stats.fetch_errors += 1

    def send_retried(self, n: int) -> None:
        self.stats.send_retries += n

    def stalled(self, op: BrokerOp) -> None:
        """A send or commit waited longer than the stall bound."""
        self.stats.stalls += 1

    def commit_failed(self) -> None:
        self.stats.commit_failures += 1

    def committed(self) -> None:
        self.stats.commits += 1

    def reachable(self, ok: bool) -> None:
        """The broker answered (or stopped answering)."""

    def serving(self, ok: bool) -> None:
        """What /readyz answers, refreshed once per poll."""

    # -- partitions and history ----------------------------------------------------------

    def rebalanced(self) -> None:
        self.stats.rebalances += 1

    def history_failed(self) -> None:
        """Reading a partition's (or streams') history failed."""
        self.stats.history_failures += 1

    def candles_left_out(self, n: int) -> None:
        """History candles the features raise on, left out of a rebuild."""
        self.stats.history_failures += n

    def rebuilt(self, candles: int, seconds: float) -> None:
        """One partition rebuilt from the topic."""
        self.stats.history_candles += candles
        self.stats.history_seconds += seconds

    def streams_resolved(self, out: Resolved) -> None:
        """Streams rebuilt one by one (HISTORY_SOURCE=postgres)."""
        st = self.stats
        st.history_postgres_streams += len(out.from_source)
        st.history_not_covered += len(out.from_topic) + len(out.cold)
        st.history_candles += out.candles
        st.history_seconds += out.seconds

    def caught_up(
        self,
        ends: Mapping[TopicPartition, int],
        book: PartitionBook,
        paused: Collection[TopicPartition] = (),
    ) -> None:
        """An idle probe answered with these end offsets (``paused``: partitions held)."""

    def assigned(self, partitions: Collection[int]) -> None:
        """A settled assignment: these partitions are ours now."""

    # -- serving ---------------------------------------------------------------------------

    def ensemble(self, ens: EnsembleLike | None) -> None:
        """This ensemble serves now (None: inference disabled)."""

    def batch(self, done: BatchDone) -> None:
        """One batch published and committed."""
        results, clock = done.results, done.clock
        st = self.stats
        st.process_ms.add((clock.processed - clock.started) * 1000.0)
        st.publish_ms.add((clock.acked - clock.processed) * 1000.0)
        st.commit_ms.add((clock.committed - clock.acked) * 1000.0)
        st.batches += 1
        ack_ms = (clock.acked - clock.received) * 1000.0
        for r in results:
            st.add_counts(r.counts)
            st.predictions += len(r.predictions)
            st.dead_letters += len(r.dead_letters)
            for _ in r.predictions:
                st.latency.add(ack_ms)


class PrometheusObserver(Observer):
    """``Observer`` that also keeps ``metrics`` (``stream_infer.ops.Metrics``) in step."""

    def __init__(self, stats: Stats | None, metrics: Metrics) -> None:
        super().__init__(stats)
        self.metrics = metrics
        self._partitions: set[int] = set()  # partitions with per-partition series

    def connect_failed(self) -> None:
        super().connect_failed()
        self.metrics.broker_errors.labels("connect").inc()

    def fetch_failed(self) -> None:
        super().fetch_failed()
        self.metrics.broker_errors.labels("fetch").inc()

    def send_retried(self, n: int) -> None:
        super().send_retried(n)
        self.metrics.broker_errors.labels("send").inc(n)

    def stalled(self, op: BrokerOp) -> None:
        super().stalled(op)
        self.metrics.broker_errors.labels(op).inc()

    def commit_failed(self) -> None:
        super().commit_failed()
        self.metrics.broker_errors.labels("commit").inc()

    def committed(self) -> None:
        super().committed()
        self.metrics.commits.inc()

    def reachable(self, ok: bool) -> None:
        self.metrics.broker_reachable.set(1 if ok else 0)

    def serving(self, ok: bool) -> None:
        self.metrics.ready.set(1 if ok else 0)

    def rebalanced(self) -> None:
        super().rebalanced()
        self.metrics.rebalances.inc()
        self.metrics.ready.set(0)

    def history_failed(self) -> None:
        super().history_failed()
        self.metrics.broker_errors.labels("history").inc()

    def rebuilt(self, candles: int, seconds: float) -> None:
        super().rebuilt(candles, seconds)
        self.metrics.rebuilds.inc()

    def streams_resolved(self, out: Resolved) -> None:
        super().streams_resolved(out)
        for source, n in (
            ("postgres", len(out.from_source)),
            ("topic", len(out.from_topic)),
            ("none", len(out.cold)),
        ):
            if n:
                self.metrics.history_streams.labels(source).inc(n)

    def caught_up(
        self,
        ends: Mapping[TopicPartition, int],
        book: PartitionBook,
        paused: Collection[TopicPartition] = (),
    ) -> None:
        m = self.metrics
        now_s = time.time()
        for tp, end in ends.items():
            part = str(tp.partition)
            done = book.next_offset(tp)
            if done is not None:
                m.lag.labels(part).set(max(0, end - done))
            if book.is_warm(tp):  # nothing fetched and the broker answers: caught up
                m.lag_seconds.labels(part).set(0)
                # ... unless held (paused) or behind the end: then the position stays
                # where it is and its age grows.
                if tp not in paused and done is not None and end <= done:
                    m.set_position(tp.partition, now_s)

    def assigned(self, partitions: Collection[int]) -> None:
        # Series of partitions now owned by another member would stay beside its own.
        owned = set(partitions)
        self.metrics.forget_partitions(self._partitions - owned)
        self._partitions = owned

    def ensemble(self, ens: EnsembleLike | None) -> None:
        self.metrics.set_ensemble(
            None if ens is None else str(ens.ensemble_id),
            None if ens is None else str(ens.version),
        )

    def batch(self, done: BatchDone) -> None:
        super().batch(done)
        results, clock = done.results, done.clock
        m = self.metrics
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
        stage.labels("produce").observe(clock.acked - clock.processed)
        e2e = stage.labels("end_to_end")
        for _ in range(n_pred):
            e2e.observe(clock.acked - clock.received)
        m.streams.set(done.streams())
        now_ms = _wall_ms()
        for tp, msgs in done.records.items():
            part = str(tp.partition)
            if msgs and msgs[-1].timestamp is not None:
                m.lag_seconds.labels(part).set(max(0.0, (now_ms - msgs[-1].timestamp) / 1000.0))
                m.set_position(tp.partition, msgs[-1].timestamp / 1000.0)
            left = done.behind(tp)
            if left is not None:
                # On the embedded broker the high watermark counts batches (docs/service.md):
                # there this undercounts; lag_seconds does not depend on it.
                m.lag.labels(part).set(left)
        for partition, polled_s in done.idle_positions().items():
            m.set_position(partition, polled_s)


def observer_for(stats: Stats | None = None, metrics: Metrics | None = None) -> Observer:
    """The observer for these stats, keeping ``metrics`` too when given."""
    return Observer(stats) if metrics is None else PrometheusObserver(stats, metrics)

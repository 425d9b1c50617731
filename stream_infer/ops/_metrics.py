"""The service's Prometheus metrics, on a registry of their own."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric

from stream_infer.candles import RULES, Candle
from stream_infer.events import DECODE_REASONS

# Stages timed per batch; "end_to_end" is candle received -> prediction acknowledged.
STAGES: tuple[str, ...] = ("decode", "features", "models", "produce", "end_to_end")


def _dead_letter_reasons() -> tuple[str, ...]:
    """The dead-letter reasons known in advance: decoding, every candle field's schema, every
    rule. Their series start at 0, so a rate over them counts the first dead letter too
    (a counter born at 1 has no increase to show). ``internal:<Error>`` and the schema of
    the exchange's wrapper fields still appear with their first dead letter."""
    return (
        *(r for r in DECODE_REASONS if "<" not in r),
        *(f"schema:{f}" for f in Candle.model_fields),
        *(f"rule:{r}" for r in RULES),
    )


DEAD_LETTER_REASONS: tuple[str, ...] = _dead_letter_reasons()

# Why a closed candle is not part of a stream (stream_infer_candles_skipped_total{why}); the
# series exist from the start, so a query over them returns 0, not nothing.
SKIP_REASONS: tuple[str, ...] = ("duplicate", "late")

# Sub-millisecond resolution where the service lives, seconds where a stall would show.
_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)


class Metrics:
    """All service metrics on one private registry (several services may share a process in tests).

    The service updates them after each batch (``stream_infer.kafka.Service(metrics=...)``);
    the reload manager counts reloads and sets the ensemble info.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._ensemble_activated: dict[tuple[str, str], float] = {}
        r = self.registry
        self.candles = Counter(
            "stream_infer_candles_consumed", "Candle messages consumed.", registry=r
        )
        self.predictions = Counter(
            "stream_infer_predictions_produced",
            "Predictions acknowledged by the broker.",
            registry=r,
        )
        self.dead_letters = Counter(
            "stream_infer_dead_letters",
            "Messages sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "stream_infer_candles_skipped",
            "Closed candles not part of a stream.",
            ["why"],
            registry=r,
        )
        self.stage_latency = Histogram(
            "stream_infer_stage_latency_seconds",
            "Latency per stage (per batch; end_to_end per prediction).",
            ["stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "stream_infer_consumer_lag",
            "Records behind the end of each partition.",
            ["partition"],
            registry=r,
        )
        self.streams = Gauge(
            "stream_infer_streams_held", "(symbol, interval) streams in memory.", registry=r
        )
        self.ensemble_info = Gauge(
            "stream_infer_ensemble_info",
            "The serving ensemble (value 1).",
            ["ensemble_id", "version"],
            registry=r,
        )
        self.ensemble_loaded_at = Gauge(
            "stream_infer_ensemble_loaded_timestamp_seconds",
            "When the serving ensemble was swapped in.",
            registry=r,
        )
        # Unlike loaded_at, a restart does not reset it for a database row: the ensemble
        # age alert (ops/prometheus) is about how old the model is, not the process.
        self.ensemble_activated_at = Gauge(
            "stream_infer_ensemble_activated_timestamp_seconds",
            "When the serving ensemble was made active: its active_ensembles row's created_at, "
            "else (environment, TOML, --models) when this process loaded it.",
            ["ensemble_id", "version"],
            registry=r,
        )
        self.reloads = Counter(
            "stream_infer_reloads", "Hot reloads by result.", ["result"], registry=r
        )
        self.ready = Gauge(
            "stream_infer_ready",
            "1 when partitions are assigned and warm and a model is loaded.",
            registry=r,
        )
        # What went wrong and what was done about it (docs/RELIABILITY.md's faults show here).
        self.lag_seconds = Gauge(
            "stream_infer_consumer_lag_seconds",
            "Age of the newest record processed per partition (0 once a poll finds nothing new).",
            ["partition"],
            registry=r,
        )
        # The same figure as a point in time: Prometheus computes the age (time() - this),
        # so the lag keeps growing in a query while the process is stuck, stopped or not
        # answering scrapes, where lag_seconds would freeze or vanish.
        self.position_at = Gauge(
            "stream_infer_consumer_position_timestamp_seconds",
            "Per partition, the time up to which its input is processed: the timestamp of the "
            "newest record processed, or the time of the last idle poll that found nothing new.",
            ["partition"],
            registry=r,
        )
        self.broker_errors = Counter(
            "stream_infer_broker_errors",
            "Kafka operations that failed and were retried, by operation.",
            ["op"],
            registry=r,
        )
        self.broker_reachable = Gauge(
            "stream_infer_broker_reachable",
            "1 when the broker answered the last fetch or probe.",
            registry=r,
        )
        self.commits = Counter("stream_infer_commits", "Offset commits that succeeded.", registry=r)
        self.rebalances = Counter(
            "stream_infer_rebalances", "Partition revocations (rebalances).", registry=r
        )
        self.rebuilds = Counter(
            "stream_infer_partitions_rebuilt",
            "Partitions whose streams were rebuilt from history.",
            registry=r,
        )
        self.history_streams = Counter(
            "stream_infer_history_streams",
            "Streams rebuilt one by one (HISTORY_SOURCE=postgres), by where their history came "
            "from: postgres, topic (Postgres did not cover it), none (warms up live).",
            ["source"],
            registry=r,
        )
        for stage in STAGES:
            self.stage_latency.labels(stage)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        for op in ("connect", "fetch", "send", "commit", "history"):
            self.broker_errors.labels(op)
        for source in ("postgres", "topic", "none"):
            self.history_streams.labels(source)
        for why in SKIP_REASONS:
            self.duplicates.labels(why)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason)

    def add_callback(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Also export what ``collect()`` returns at each scrape (numbers owned by another
        object, e.g. the predictions sink's counters)."""

        class _Callback:
            def collect(self) -> Iterable[Metric]:
                return collect()

        self.registry.register(_Callback())

    def set_ensemble(
        self, ensemble_id: str | None, version: str | None, *, activated_at: float | None = None
    ) -> None:
        """The serving ensemble (None: none serves). ``activated_at`` (epoch seconds) is when
        it was made active; without it, an ensemble already shown keeps its time and a new
        one gets now (the service and the reload manager both report a swap)."""
        labels = None if ensemble_id is None else (ensemble_id, version or "")
        kept = self._ensemble_activated.get(labels) if labels is not None else None
        self.ensemble_info.clear()
        self.ensemble_activated_at.clear()
        self._ensemble_activated = {}
        if labels is None:
            return
        self.ensemble_info.labels(*labels).set(1)
        self.ensemble_loaded_at.set(time.time())
        when = activated_at if activated_at is not None else kept
        when = when if when is not None else time.time()
        self.ensemble_activated_at.labels(*labels).set(when)
        self._ensemble_activated[labels] = when

    def set_position(self, partition: int, timestamp_s: float) -> None:
        """Partition ``partition`` is processed up to ``timestamp_s`` (epoch seconds)."""
        self.position_at.labels(str(partition)).set(timestamp_s)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the per-partition series of partitions this member no longer owns: their
        last values would otherwise stay beside the new owner's (a lag that never moves)."""
        for p in partitions:
            for gauge in (self.lag, self.lag_seconds, self.position_at):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(p))

    def render(self) -> bytes:
        return generate_latest(self.registry)

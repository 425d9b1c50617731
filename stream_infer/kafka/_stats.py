"""The service's running numbers in one place (the metrics exporter and the summary line read them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LatencyWindow", "Stats"]


class LatencyWindow:
    """The last ``size`` latencies (ms) in a ring, plus the all-time count and maximum."""

    def __init__(self, size: int = 100_000) -> None:
        self._buf = np.zeros(size, dtype=np.float64)
        self._n = 0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self._buf[self._n % len(self._buf)] = ms
        self._n += 1
        if ms > self.max:
            self.max = ms

    def extend(self, values: list[float]) -> None:
        for v in values:
            self.add(v)

    @property
    def count(self) -> int:
        return self._n

    def values(self) -> np.ndarray:
        return self._buf[: min(self._n, len(self._buf))].copy()

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the window; NaN when empty."""
        if self._n == 0:
            return math.nan
        return float(np.quantile(self._buf[: min(self._n, len(self._buf))], q))


@dataclass
class Stats:
    """Counters since the start of a service, and latency candle received -> prediction acknowledged."""

    messages: int = 0
    candles: int = 0
    predictions: int = 0
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # duplicates and late candles (not part of a stream)
    gap_filled: int = 0
    restarts: int = 0
    not_closed: int = 0
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    rebalances: int = 0
    connect_failures: int = 0  # start attempts that could not reach the broker
    fetch_errors: int = 0
    send_retries: int = 0  # sends that failed and were sent again
    stalls: int = 0  # sends or commits that waited > 2 s for the broker
    history_failures: int = 0
    history_candles: int = 0  # candles read back to rebuild state
    history_seconds: float = 0.0
    # HISTORY_SOURCE=postgres: streams warmed from Postgres, and those it did not cover
    # far enough (rebuilt from the topic instead, or warming up live).
    history_postgres_streams: int = 0
    history_not_covered: int = 0
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    # Per batch (ms): the pipeline, sending until every ack, the offset commit.
    process_ms: LatencyWindow = field(default_factory=lambda: LatencyWindow(10_000))
    publish_ms: LatencyWindow = field(default_factory=lambda: LatencyWindow(10_000))
    commit_ms: LatencyWindow = field(default_factory=lambda: LatencyWindow(10_000))

    def add_counts(self, counts: Any) -> None:
        """Add one batch's ``pipeline.Counts``."""
        self.messages += counts.messages
        self.candles += counts.candles
        self.duplicates += counts.duplicates + counts.late
        self.gap_filled += counts.gap_filled
        self.restarts += counts.restarts
        self.not_closed += counts.not_closed
        for reason, n in counts.dead_letters.items():
            self.dead_letter_reasons[reason] = self.dead_letter_reasons.get(reason, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "candles": self.candles,
            "predictions": self.predictions,
            "dead_letters": self.dead_letters,
            "dead_letter_reasons": dict(self.dead_letter_reasons),
            "duplicates": self.duplicates,
            "gap_filled": self.gap_filled,
            "restarts": self.restarts,
            "batches": self.batches,
            "commits": self.commits,
            "commit_failures": self.commit_failures,
            "rebalances": self.rebalances,
            "connect_failures": self.connect_failures,
            "fetch_errors": self.fetch_errors,
            "send_retries": self.send_retries,
            "stalls": self.stalls,
            "history_failures": self.history_failures,
            "history_candles": self.history_candles,
            "history_postgres_streams": self.history_postgres_streams,
            "history_not_covered": self.history_not_covered,
            "latency_ms_p50": self.latency.quantile(0.5),
            "latency_ms_p99": self.latency.quantile(0.99),
            "latency_ms_max": self.latency.max if self.latency.count else math.nan,
            "batch_process_ms_p50": self.process_ms.quantile(0.5),
            "batch_publish_ms_p50": self.publish_ms.quantile(0.5),
            "batch_commit_ms_p50": self.commit_ms.quantile(0.5),
        }

    def summary(self) -> str:
        """One line for the log at shutdown."""
        lat = self.latency
        if lat.count:
            timing = (
                f"latency ms p50={lat.quantile(0.5):.2f} p99={lat.quantile(0.99):.2f} "
                f"max={lat.max:.2f}"
            )
        else:
            timing = "latency ms n/a"
        faults = {
            "connect_failures": self.connect_failures,
            "fetch_errors": self.fetch_errors,
            "stalls": self.stalls,
            "send_retries": self.send_retries,
            "commit_failures": self.commit_failures,
            "history_failures": self.history_failures,
        }
        seen = " ".join(f"{k}={v}" for k, v in faults.items() if v)
        return (
            f"candles={self.candles} predictions={self.predictions} "
            f"dead_letters={self.dead_letters} duplicates={self.duplicates} "
            f"messages={self.messages} batches={self.batches} {timing}"
            + (f"; faults: {seen}" if seen else "")
        )

"""The pure, synchronous pipeline core: candle messages in, predictions and dead letters out.

``Pipeline.process(batch)`` is what both the Kafka consumer (``stream-infer run``) and the
offline twin (``stream-infer replay``) call; it does no I/O and reads no clock of its own.
"""

from __future__ import annotations

from stream_infer.pipeline._pipeline import FeaturesFactory, Pipeline, wall_ms
from stream_infer.pipeline._readiness import (
    READY_INDEX,
    first_prediction_index,
    ready_candles,
)
from stream_infer.pipeline._replay import ReplayStats, merged_candle_messages, replay_klines
from stream_infer.pipeline._types import (
    BatchResult,
    Counts,
    EnsembleLike,
    EnsembleOutput,
    FeatureStream,
    HeldStream,
    Inbound,
    StageTimes,
    StreamState,
)

__all__ = [
    "READY_INDEX",
    "BatchResult",
    "Counts",
    "EnsembleLike",
    "EnsembleOutput",
    "FeatureStream",
    "FeaturesFactory",
    "HeldStream",
    "Inbound",
    "Pipeline",
    "ReplayStats",
    "StageTimes",
    "StreamState",
    "first_prediction_index",
    "merged_candle_messages",
    "ready_candles",
    "replay_klines",
    "wall_ms",
]

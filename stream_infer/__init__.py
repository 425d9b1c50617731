"""stream_infer: closed candles from Kafka -> features -> ensemble -> predictions.

The features are those of docs/feature-spec.md (version 1).

The data flow, one package per concern::

    candles/   the input event, its rules, the exchange's klines files
    features/  the 27 features, batch (training) and streaming (serving), equal to 1e-9
    models/    Mamba (TorchScript) + LightGBM (ONNX): train, export, evaluate, run
    pipeline/  the pure core: message bytes in, predictions and dead letters out
    events/    the wire formats: Candle, Prediction, DeadLetter, JSON Schemas
    kafka/     the edges: embedded broker, producer, the ``run`` service loop
    db/        Postgres: migrations, ensemble rows, predictions sink, candle history
    pgsource/  predictions from the Postgres candles table: the seed's library call
               (run_inference_pipeline) and ``run --source postgres``
    reload/    configuration at start and zero-downtime hot reload
    ops/       metrics, health, logging

The public API is what ``__all__`` lists; modules whose names start with ``_`` are private.
Names from ``models`` and ``kafka`` load on first use (they import torch and aiokafka).
"""

from __future__ import annotations

import importlib
from typing import Any

from stream_infer._errors import (
    ArtifactError,
    BrokerError,
    CandleError,
    ConfigError,
    DatabaseError,
    DecodeError,
    ExportCheckError,
    InvalidCandle,
    ModelError,
    StreamInferError,
    StreamNotReady,
)
from stream_infer.candles import Candle, check_candle, read_klines
from stream_infer.config import EnsembleConfig, ServiceSettings, resolve_ensemble
from stream_infer.events import DeadLetter, Prediction, decode_candle
from stream_infer.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    WARMUP,
    StreamingFeatures,
    batch_features,
    compute_extended_features,
)
from stream_infer.pipeline import Inbound, Pipeline

__version__ = "0.1.0"

_LAZY = {
    "Ensemble": "stream_infer.models",
    "EnsembleResult": "stream_infer.models",
    "load_ensemble": "stream_infer.models",
    "train_ensemble": "stream_infer.models",
    "evaluate": "stream_infer.models",
    "EmbeddedBroker": "stream_infer.kafka",
    "Service": "stream_infer.kafka",
    "Database": "stream_infer.db",
    "PredictionSink": "stream_infer.db",
    "PostgresHistory": "stream_infer.db",
    "migrate": "stream_infer.db",
    "EnsembleRuntime": "stream_infer.reload",
    "ModelManager": "stream_infer.reload",
    "Reloader": "stream_infer.reload",
    "activate": "stream_infer.reload",
    "check_hot_reload": "stream_infer.reload",
    "initialize": "stream_infer.reload",
    "InferenceResult": "stream_infer.pgsource",
    "PostgresSource": "stream_infer.pgsource",
    "run_inference_pipeline": "stream_infer.pgsource",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stream_infer' has no attribute {name!r}")


__all__ = [
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "WARMUP",
    "ArtifactError",
    "BrokerError",
    "Candle",
    "CandleError",
    "ConfigError",
    "Database",
    "DatabaseError",
    "DeadLetter",
    "DecodeError",
    "EmbeddedBroker",
    "Ensemble",
    "EnsembleConfig",
    "EnsembleResult",
    "EnsembleRuntime",
    "ExportCheckError",
    "Inbound",
    "InferenceResult",
    "InvalidCandle",
    "ModelError",
    "ModelManager",
    "Pipeline",
    "PostgresHistory",
    "PostgresSource",
    "Prediction",
    "PredictionSink",
    "Reloader",
    "Service",
    "ServiceSettings",
    "StreamInferError",
    "StreamNotReady",
    "StreamingFeatures",
    "__version__",
    "activate",
    "batch_features",
    "check_candle",
    "check_hot_reload",
    "compute_extended_features",
    "decode_candle",
    "evaluate",
    "initialize",
    "load_ensemble",
    "migrate",
    "read_klines",
    "resolve_ensemble",
    "run_inference_pipeline",
    "train_ensemble",
]

"""Postgres: connections with backoff, migrations, the ensemble rows, the predictions sink
and the candle history. See docs/postgres.md."""

from __future__ import annotations

from stream_infer.db._conn import TRANSIENT_ERRORS, Backoff, Database, db_errors
from stream_infer.db._ensembles import EnsembleRow, activate_row, deactivate, fetch_active
from stream_infer.db._history import (
    CANDLE_COLUMNS,
    PostgresHistory,
    load_candles,
    load_klines_files,
)
from stream_infer.db._schema import (
    CANDLES_CHANNEL,
    CHANNEL,
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    migrate,
    schema_version,
)
from stream_infer.db._sink import (
    PredictionLike,
    PredictionSink,
    insert_predictions,
    prediction_row,
)

__all__ = [
    "CANDLES_CHANNEL",
    "CANDLE_COLUMNS",
    "CHANNEL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TRANSIENT_ERRORS",
    "Backoff",
    "Database",
    "EnsembleRow",
    "Migration",
    "PostgresHistory",
    "PredictionLike",
    "PredictionSink",
    "activate_row",
    "db_errors",
    "deactivate",
    "fetch_active",
    "insert_predictions",
    "load_candles",
    "load_klines_files",
    "migrate",
    "prediction_row",
    "schema_version",
]

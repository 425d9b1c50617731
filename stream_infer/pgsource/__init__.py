"""Predictions from the Postgres ``candles`` table: the seed's way of working, without Kafka.

* ``run_inference_pipeline(db, manager)``: the seed's library call. The newest candle of
  each stream (or of one symbol), read back as far as readiness needs, through the
  service's own features and ensemble in one batch; the ``Prediction`` events the Kafka
  path publishes; ``write=True`` stores them. ``stream-infer predict`` is one call of it.
* ``PostgresSource``: ``stream-infer run --source postgres``. It watches ``candles``
  (LISTEN/NOTIFY from the insert trigger, polling as the fallback), predicts every new
  closed candle through the pure core (``stream_infer.pipeline``) and stores the
  predictions with a per-stream cursor in one transaction, so a restart resumes exactly.

Every row is checked before it can reach a feature stream; a refused one is reported
with its reason (``Rejected``). See docs/postgres.md.
"""

from __future__ import annotations

from stream_infer.pgsource._infer import (
    INCREMENTAL_MAX,
    InferenceResult,
    history_need_of,
    run_inference_pipeline,
)
from stream_infer.pgsource._read import DUPLICATE, Rejected, checked, stream_since_restart
from stream_infer.pgsource._source import SOURCE_LOCK, PostgresSource, SourceStats
from stream_infer.pgsource._topic import TopicPublisher

__all__ = [
    "DUPLICATE",
    "INCREMENTAL_MAX",
    "SOURCE_LOCK",
    "InferenceResult",
    "PostgresSource",
    "Rejected",
    "SourceStats",
    "TopicPublisher",
    "checked",
    "history_need_of",
    "run_inference_pipeline",
    "stream_since_restart",
]

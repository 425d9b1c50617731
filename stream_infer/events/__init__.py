"""Events: the candle, prediction and dead-letter messages, their JSON and their schemas.

See docs/events.md. Every decoder raises only :class:`~stream_infer.CandleError`
subclasses (``DecodeError``, ``InvalidCandle``), with a short stable ``reason``.
"""

from __future__ import annotations

from stream_infer.events._candle import (
    DECODE_REASONS,
    MAX_BYTES,
    candle_to_dict,
    decode_candle,
    encode_candle,
)
from stream_infer.events._dead_letter import DeadLetter, decode_dead_letter, encode_dead_letter
from stream_infer.events._prediction import (
    Prediction,
    PredictionKey,
    decode_prediction,
    encode_prediction,
    prediction_to_dict,
)
from stream_infer.events._schemas import (
    BinanceKlineEvent,
    event_schemas,
    schema_bytes,
    write_schemas,
)

__all__ = [
    "DECODE_REASONS",
    "MAX_BYTES",
    "BinanceKlineEvent",
    "DeadLetter",
    "Prediction",
    "PredictionKey",
    "candle_to_dict",
    "decode_candle",
    "decode_dead_letter",
    "decode_prediction",
    "encode_candle",
    "encode_dead_letter",
    "encode_prediction",
    "event_schemas",
    "prediction_to_dict",
    "schema_bytes",
    "write_schemas",
]

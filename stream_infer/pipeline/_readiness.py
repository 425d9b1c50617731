"""Readiness, the one rule: when a stream first predicts, and how much history that takes.

docs/feature-spec.md, Readiness: a stream's features are ready from its ``WARMUP``-th candle (index
``WARMUP - 1``); a model with a window of ``seq_len`` rows then needs ``seq_len`` ready rows,
so a stream first predicts at candle index ``WARMUP - 1 + seq_len - 1`` (gap-filled candles
count). Everything else (the service's history reads, the demo's first send, benchmarks,
docs and tests) derives from these functions, never from a number of its own.
"""

from __future__ import annotations

from stream_infer.features import WARMUP

__all__ = ["READY_INDEX", "first_prediction_index", "ready_candles"]

READY_INDEX = WARMUP - 1
"""Index of a stream's first candle with ready features."""


def first_prediction_index(seq_len: int, warmup: int = WARMUP) -> int:
    """0-based index, in its stream, of the first candle that gets a prediction from a model
    with a ``seq_len``-row window (``warmup``: the features' warm-up, ``WARMUP``)."""
    if seq_len < 1 or warmup < 1:
        raise ValueError(f"seq_len and warmup must be >= 1, got {seq_len} and {warmup}")
    return warmup - 1 + seq_len - 1


def ready_candles(seq_len: int, warmup: int = WARMUP) -> int:
    """Candles a stream holds when it first predicts: ``warmup`` to warm up, then
    ``seq_len - 1`` more. A stream warmed with this many predicts on its next candle."""
    return first_prediction_index(seq_len, warmup) + 1

"""Helpers for the Kafka tests: real candles under several symbols and the offline twin.

Reading topics, committed offsets and paced producing: ``tests/kafka_helpers.py``."""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence
from typing import Any

from stream_infer.candles import Candle, read_klines
from stream_infer.kafka import frame_candles
from tests.conftest import DATA

NEAR = DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz"
BTC = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"
START_MS = 1_675_209_600_000  # 2023-02-01 00:00 UTC


@functools.lru_cache(maxsize=4)
def _frame_candles(path: str, n: int) -> tuple[Candle, ...]:
    return tuple(frame_candles(read_klines(path), n))


def real_candles(
    symbol: str, n: int, *, source: Any = NEAR, skip: int = 0, start_ms: int | None = START_MS
) -> list[Candle]:
    """``n`` consecutive real candles of ``source`` (from ``skip`` on), relabelled as ``symbol``.

    Their times are shifted so the first opens at ``start_ms`` (None keeps them): streams
    cut from different files or months then overlap in time, as live symbols do.
    """
    rows = _frame_candles(str(source), skip + n)[skip:]
    shift = 0 if start_ms is None or not rows else start_ms - rows[0].open_time
    return [
        c.model_copy(
            update={
                "symbol": symbol,
                "open_time": c.open_time + shift,
                "close_time": c.close_time + shift,
            }
        )
        for c in rows
    ]


def interleave(streams: Sequence[Sequence[Candle]]) -> list[Candle]:
    """Merge streams by open_time (ties in stream order), as a live feed delivers them."""
    return list(heapq.merge(*streams, key=lambda c: c.open_time))


def offline(ensemble: Any, values: Sequence[bytes], batch: int = 64) -> tuple[dict[Any, Any], Any]:
    """The replay twin: the same messages through a fresh Pipeline, no broker.

    Returns ({(symbol, open_time): Prediction}, summed Counts).
    """
    from stream_infer.pipeline import Counts, Inbound, Pipeline

    pipeline = Pipeline(ensemble)
    out: dict[Any, Any] = {}
    counts = Counts()
    for i in range(0, len(values), batch):
        chunk = [Inbound(v, 0, i + j, 0.0) for j, v in enumerate(values[i : i + batch])]
        res = pipeline.process(chunk)
        counts.add(res.counts)
        for p in res.predictions:
            assert (p.symbol, p.open_time) not in out
            out[(p.symbol, p.open_time)] = p
    return out, counts


def assert_same_prediction(got: Any, want: Any, tol: float = 1e-6) -> None:
    """Equal event fields; probabilities within ``tol``."""
    assert (got.symbol, got.interval, got.open_time) == (want.symbol, want.interval, want.open_time)
    assert (got.ensemble_id, got.version, got.horizons) == (
        want.ensemble_id,
        want.version,
        want.horizons,
    )
    for a, b in zip(got.predictions, want.predictions, strict=True):
        assert abs(a - b) <= tol, (got.symbol, got.open_time, got.predictions, want.predictions)
    for name, comp in want.components.items():
        for a, b in zip(got.components[name], comp, strict=True):
            assert abs(a - b) <= tol, (name, got.symbol, got.open_time)

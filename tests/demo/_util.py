"""Helpers for the demo tests: real candles and predictions shaped like the service's."""

from __future__ import annotations

from stream_infer.candles import Candle, read_klines
from stream_infer.events import Prediction
from stream_infer.kafka import frame_candles
from tests.conftest import DATA


def candles(symbol: str = "BTCUSDT", n: int = 600) -> list[Candle]:
    name = {
        "BTCUSDT": "BTCUSDT-1m-2023-01-head.csv.gz",
        "NEARUSDT": "NEARUSDT-1m-2023-02.csv.gz",
    }[symbol]
    return frame_candles(read_klines(DATA / "klines" / name), n)


def prediction(
    c: Candle,
    p: float = 0.55,
    *,
    version: str = "v1",
    ensemble_id: str = "file:v1",
    latency: float = 1.0,
) -> Prediction:
    probs = (p, 1 - p, 0.5)
    return Prediction(
        symbol=c.symbol,
        interval=c.interval,
        open_time=c.open_time,
        horizons=(1, 5, 15),
        predictions=probs,
        confidences=tuple(abs(2 * x - 1) for x in probs),
        components={"mamba": probs, "lgbm": probs},
        ensemble_id=ensemble_id,
        version=version,
        feature_version=1,
        latency_ms=latency,
        produced_at=c.close_time + 1,
    )

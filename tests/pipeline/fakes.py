"""Small fakes of the features and the ensemble, for the pipeline's unit tests.

``FakeFeatures`` follows the stream rules of docs/feature-spec.md (duplicates, late candles,
gaps <= 60 filled, longer gaps restart the stream) with a short warm-up; its rows carry
(open_time, close, synthetic) so a test can see which candles a window holds.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_infer.candles import Candle, check_candle

N_FEATURES = 27


class FakeFeatures:
    def __init__(self, interval_ms: int, keep_rows: int = 1, *, warmup: int = 3) -> None:
        self.interval_ms = interval_ms
        self.keep_rows = keep_rows
        self.warmup = warmup
        self.seen = 0
        self.rows: collections.deque[np.ndarray] = collections.deque(maxlen=keep_rows)
        self.last_open_time: int | None = None
        self.last_close = 0.0
        self.last_outcome = "NONE"
        self.last_filled = 0

    @property
    def ready(self) -> bool:
        return self.seen >= self.warmup

    @property
    def rows_available(self) -> int:
        return len(self.rows)

    def _push(self, open_time: int, close: float, synthetic: bool) -> np.ndarray | None:
        self.seen += 1
        self.last_open_time, self.last_close = open_time, close
        if self.seen < self.warmup:
            return None
        row = np.zeros(N_FEATURES)
        row[0], row[1], row[2] = open_time, close, float(synthetic)
        self.rows.append(row)
        return row

    def update(self, candle: Candle) -> np.ndarray | None:
        check_candle(candle)
        self.last_filled = 0
        last = self.last_open_time
        if last is not None and candle.open_time <= last:
            self.last_outcome = "DUPLICATE" if candle.open_time == last else "LATE"
            return None
        restarted = False
        if last is not None:
            missing = (candle.open_time - last) // self.interval_ms - 1
            if missing > 60:
                self.seen, restarted = 0, True
                self.rows.clear()
            else:
                for i in range(missing):
                    self._push(last + (i + 1) * self.interval_ms, self.last_close, True)
                self.last_filled = missing
        row = self._push(candle.open_time, candle.close, False)
        self.last_outcome = (
            "RESTARTED" if restarted else ("READY" if row is not None else "WARMING")
        )
        return row

    def warm(self, candles: Iterable[Candle]) -> None:
        for c in candles:
            self.update(c)

    def window(self, n: int) -> np.ndarray:
        assert n <= len(self.rows)
        return np.stack(list(self.rows)[-n:])


def fake_factory(warmup: int = 3) -> Any:
    def make(interval_ms: int, keep_rows: int) -> FakeFeatures:
        return FakeFeatures(interval_ms, keep_rows, warmup=warmup)

    return make


@dataclass
class FakeResult:
    probabilities: np.ndarray
    confidences: np.ndarray
    mamba: np.ndarray
    lgbm: np.ndarray


@dataclass
class FakeEnsemble:
    """P(up) = the fractional part of the window's last close, for every horizon."""

    seq_len: int = 4
    ensemble_id: str = "fake-1"
    version: str = "v1"
    horizons: tuple[int, ...] = (1, 5, 15)
    mamba_weight: float = 0.5
    feature_version: int = 1
    calls: list[np.ndarray] = field(default_factory=list)
    on_predict: Any = None

    def predict(self, windows: np.ndarray) -> FakeResult:
        assert windows.ndim == 3 and windows.shape[1:] == (self.seq_len, N_FEATURES)
        assert windows.dtype == np.float64
        self.calls.append(windows.copy())
        if self.on_predict is not None:
            self.on_predict()
        last_close = windows[:, -1, 1]
        p = np.repeat((last_close % 1.0)[:, None], len(self.horizons), axis=1)
        m = np.clip(p + 0.01, 0, 1)
        g = np.clip(p - 0.01, 0, 1)
        return FakeResult(p, np.abs(2 * p - 1), m, g)


def candle(
    i: int, symbol: str = "BTCUSDT", *, interval: str = "1m", close: float | None = None, **kw: Any
) -> Candle:
    """The i-th 1m candle of a simple valid stream."""
    c = 100.0 + (i % 97) / 100 if close is None else close
    fields: dict[str, Any] = {
        "symbol": symbol,
        "interval": interval,
        "open_time": 1_672_531_200_000 + i * 60_000,
        "close_time": 1_672_531_200_000 + i * 60_000 + 59_999,
        "open": 100.0,
        "high": max(100.0, c) + 0.5,
        "low": min(100.0, c) - 0.5,
        "close": c,
        "volume": 10.0,
        "quote_volume": 1000.0,
        "trades": 7,
        "taker_buy_base": 4.0,
        "taker_buy_quote": 400.0,
    }
    fields.update(kw)
    return Candle(**fields)

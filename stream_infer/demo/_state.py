"""What the demo has seen: candles sent, predictions received, per symbol (pure, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_infer.candles import Candle
from stream_infer.events import Prediction

__all__ = ["DemoState", "DemoSummary", "SymbolBoard", "quantiles", "version_label"]


def version_label(p: Prediction) -> str:
    """``version`` of the ensemble that made ``p`` (its id when it has no version)."""
    return p.version or p.ensemble_id


def quantiles(values: Sequence[float], qs: Iterable[float] = (0.5, 0.99)) -> tuple[float, ...]:
    """The ``qs`` quantiles of ``values`` (linear interpolation); NaN each when empty."""
    qs = tuple(qs)
    if not values:
        return tuple(math.nan for _ in qs)
    return tuple(float(v) for v in np.quantile(np.asarray(values, dtype=np.float64), qs))


@dataclass
class SymbolBoard:
    """One symbol's row of the live view, and its points for the chart."""

    symbol: str
    interval: str
    candles_sent: int = 0
    predictions: int = 0
    last_sent: Candle | None = None
    last: Prediction | None = None
    last_close: float | None = None  # close of the candle ``last`` was made from
    live_from: int | None = None  # open_time of the first candle sent at the live pace
    closes: dict[int, float] = field(default_factory=dict)  # open_time -> close, every candle sent
    points: list[tuple[int, float, str]] = field(
        default_factory=list
    )  # (open_time, P(up) h0, version)


@dataclass(frozen=True)
class DemoSummary:
    """The numbers the demo ends with (``line()`` is the stable, tested summary line)."""

    candles: int  # processed by the service
    candles_sent: int
    predictions: int
    dead_letters: int
    latency_p50: float  # ms, candle received -> prediction handed to the producer, live part
    latency_p99: float
    latency_n: int
    latency_scope: str  # "live", or "all" when nothing was sent at the live pace
    catchup_p50: float  # the same for predictions made while catching up on the history prefix
    catchup_p99: float
    catchup_n: int
    e2e_p50: (
        float  # ms, candle handed to the producer -> prediction consumed by the demo (same scope)
    )
    e2e_p99: float
    symbols: int  # symbols with at least one prediction
    version: str | None  # version of the latest prediction
    per_version: dict[str, int]
    per_symbol: dict[str, int]
    duplicates: int

    def line(self) -> str:
        return (
            f"summary: candles={self.candles} predictions={self.predictions} "
            f"dead_letters={self.dead_letters} latency_ms p50={_ms(self.latency_p50)} "
            f"p99={_ms(self.latency_p99)} symbols={self.symbols} version={self.version or 'none'}"
        )

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for k, v in out.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
        return out


def _ms(v: float) -> str:
    return f"{v:.2f}" if math.isfinite(v) else "n/a"


class DemoState:
    """Fed by the producer (``sent``) and the predictions consumer (``predicted``).

    A prediction is counted once per (symbol, interval, open_time, ensemble_id), its
    identity (docs/design.md, Events): a redelivery is counted under ``duplicates``.
    """

    def __init__(self, streams: Sequence[tuple[str, str]]) -> None:
        self.boards: dict[str, SymbolBoard] = {s: SymbolBoard(s, i) for s, i in streams}
        self.phase = "starting"
        self.candles_sent = 0
        self.candles_processed = 0
        self.dead_letters = 0
        self.predictions = 0
        self.duplicates = 0
        self.per_version: dict[str, int] = {}
        # (symbol, open_time, old version, new version) at each change of the serving ensemble
        self.version_changes: list[tuple[str, int, str, str]] = []
        self.latency_live: list[float] = []
        self.latency_catchup: list[float] = []
        self.e2e: list[float] = []
        self.e2e_catchup: list[float] = []
        self._sent_at: dict[tuple[str, int], float] = {}
        self._seen: set[tuple[str, str, int, str]] = set()
        self._version: str | None = None

    @property
    def version(self) -> str | None:
        """Version of the ensemble behind the latest prediction."""
        return self._version

    def sent(self, candle: Candle, at: float, *, live: bool) -> None:
        """``candle`` was handed to the producer at ``at`` (seconds, the demo's clock)."""
        b = self.boards[candle.symbol]
        b.candles_sent += 1
        b.last_sent = candle
        b.closes[candle.open_time] = candle.close
        if live and b.live_from is None:
            b.live_from = candle.open_time
        self.candles_sent += 1
        self._sent_at[(candle.symbol, candle.open_time)] = at

    def predicted(self, p: Prediction, at: float) -> bool:
        """A prediction consumed at ``at``; False (and counted as a duplicate) if seen before."""
        key = p.key
        if key in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(key)
        b = self.boards.get(p.symbol)
        if b is None:  # not a symbol we sent: not ours to show
            b = self.boards[p.symbol] = SymbolBoard(p.symbol, p.interval)
        label = version_label(p)
        if self._version is not None and label != self._version:
            self.version_changes.append((p.symbol, p.open_time, self._version, label))
        self._version = label
        self.predictions += 1
        self.per_version[label] = self.per_version.get(label, 0) + 1
        b.predictions += 1
        b.last = p
        b.last_close = b.closes.get(p.open_time)
        b.points.append((p.open_time, p.predictions[0], label))
        live = b.live_from is not None and p.open_time >= b.live_from
        (self.latency_live if live else self.latency_catchup).append(p.latency_ms)
        sent = self._sent_at.pop((p.symbol, p.open_time), None)
        if sent is not None:
            (self.e2e if live else self.e2e_catchup).append((at - sent) * 1000.0)
        return True

    def caught_up(self, first_index: int) -> bool:
        """Every symbol has a prediction for its last candle sent (if that one can have one)."""
        for b in self.boards.values():
            if b.last_sent is None or b.candles_sent <= first_index:
                continue
            if b.last is None or b.last.open_time < b.last_sent.open_time:
                return False
        return True

    def summary(self) -> DemoSummary:
        # The live part is what a running service sees; while catching up on the prefix a
        # prediction waits for its whole batch. Without a live part, all of them.
        live = self.latency_live or self.latency_catchup
        p50, p99 = quantiles(live)
        c50, c99 = quantiles(self.latency_catchup)
        e50, e99 = quantiles(self.e2e or self.e2e_catchup)
        return DemoSummary(
            candles=self.candles_processed,
            candles_sent=self.candles_sent,
            predictions=self.predictions,
            dead_letters=self.dead_letters,
            latency_p50=p50,
            latency_p99=p99,
            latency_n=len(live),
            latency_scope="live" if self.latency_live else "all",
            catchup_p50=c50,
            catchup_p99=c99,
            catchup_n=len(self.latency_catchup),
            e2e_p50=e50,
            e2e_p99=e99,
            symbols=sum(1 for b in self.boards.values() if b.predictions),
            version=self._version,
            per_version=dict(self.per_version),
            per_symbol={s: b.predictions for s, b in self.boards.items()},
            duplicates=self.duplicates,
        )

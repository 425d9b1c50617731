"""Load for the backpressure and soak tests: many synthetic-symbol streams cut from the real
klines in tests/data/klines, pre-encoded, and a producer that sends them as fast as the
broker acknowledges (optionally held back by a callback), recording where each landed.

The real files have no gap (checked here), so a stream of ``n`` candles is predicted from
its candle index ``first_prediction_index(seq_len)`` on (docs/feature-spec.md, Readiness; ``Pipeline``):
``ready_keys`` lists those keys without running the features.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream_infer.events import encode_candle
from stream_infer.kafka import make_producer
from stream_infer.pipeline import first_prediction_index
from tests.conftest import DATA
from tests.kafka._util import START_MS, real_candles

Key = tuple[str, int]  # (symbol, open_time)
MINUTE_MS = 60_000
# The whole months (40,320 to 43,200 candles each); BTCUSDT's 5,738 are too short to cut from.
SOURCES = (
    "NEARUSDT-1m-2023-02.csv.gz",
    "FILUSDT-1m-2023-02.csv.gz",
    "AVAXUSDT-1m-2023-02.csv.gz",
    "FILUSDT-1m-2023-04.csv.gz",
    "NEARUSDT-1m-2023-04.csv.gz",
)


@functools.cache
def _source(name: str) -> tuple[dict[str, Any], ...]:
    rows = real_candles("X", 10**6, source=DATA / "klines" / name, start_ms=None)
    for a, b in itertools.pairwise(rows):
        assert b.open_time - a.open_time == MINUTE_MS, f"{name}: a gap at {a.open_time}"
    return tuple(orjson.loads(encode_candle(c)) for c in rows)


@dataclass
class Feed:
    """``n_symbols`` streams of ``length`` real candles, one candle of each in turn (as a
    live feed of many symbols delivers them), as (key, value, (symbol, open_time))."""

    n_symbols: int
    length: int
    events: list[tuple[bytes, bytes, Key]] = field(default_factory=list)

    @property
    def symbols(self) -> list[str]:
        return [symbol(k) for k in range(self.n_symbols)]

    def values(self) -> list[bytes]:
        return [v for _, v, _ in self.events]

    def ready_keys(self, seq_len: int, upto: int | None = None) -> set[Key]:
        """The keys that get a prediction, of the first ``upto`` events (all by default)."""
        first = first_prediction_index(seq_len)
        start = START_MS + first * MINUTE_MS
        return {k for _, _, k in self.events[:upto] if k[1] >= start}


def symbol(k: int) -> str:
    return f"S{k:03d}USDT"


def make_feed(n_symbols: int, length: int) -> Feed:
    """Symbol ``k`` is ``length`` consecutive candles of source ``k % 5`` from row
    ``(k // 5) * 1499`` on (wrapping), relabelled, its times shifted to open at START_MS."""
    streams: list[list[dict[str, Any]]] = []
    for k in range(n_symbols):
        rows = _source(SOURCES[k % len(SOURCES)])
        assert length <= len(rows), (length, len(rows))
        skip = ((k // len(SOURCES)) * 1499) % (len(rows) - length + 1)
        streams.append(list(rows[skip : skip + length]))
    feed = Feed(n_symbols, length)
    names = [symbol(k).encode() for k in range(n_symbols)]
    for t in range(length):
        open_time = START_MS + t * MINUTE_MS
        for k, rows in enumerate(streams):
            d = dict(rows[t])
            d["symbol"] = names[k].decode()
            d["open_time"] = open_time
            d["close_time"] = open_time + MINUTE_MS - 1
            feed.events.append((names[k], orjson.dumps(d), (d["symbol"], open_time)))
    return feed


@dataclass
class Produced:
    """What ``produce_feed`` sent: per key its (partition, offset), per partition the end."""

    where: dict[Key, tuple[int, int]] = field(default_factory=dict)
    ends: dict[int, int] = field(default_factory=dict)
    count: int = 0
    seconds: float = 0.0


async def produce_feed(
    bootstrap: str,
    topic: str,
    events: Sequence[tuple[bytes, bytes, Key]],
    out: Produced,
    *,
    window: int = 2000,
    rate: float | None = None,
    until: float | None = None,
    hold: Callable[[], Awaitable[None]] | None = None,
) -> Produced:
    """Send the events in order, ``window`` unacknowledged at a time: as fast as the broker
    acknowledges, or ``rate`` per second on a fixed schedule; stop at the monotonic time
    ``until`` (after a whole window) if given. ``hold`` is awaited before each window (to
    pace against the consumer). ``out`` is updated as acknowledgements arrive, so another
    task may read it meanwhile."""
    producer = make_producer(bootstrap, request_timeout_ms=60_000)
    await producer.start()
    t0 = time.monotonic()
    try:
        for i in range(0, len(events), window):
            if until is not None and time.monotonic() >= until:
                break
            if hold is not None:
                await hold()
            if rate is not None:
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            chunk = events[i : i + window]
            futs = [await producer.send(topic, v, key=key) for key, v, _ in chunk]
            for (_, _, k), md in zip(chunk, await asyncio.gather(*futs), strict=True):
                out.where[k] = (md.partition, md.offset)
                out.ends[md.partition] = max(out.ends.get(md.partition, 0), md.offset + 1)
            out.count += len(chunk)
    finally:
        out.seconds = time.monotonic() - t0
        await producer.stop()
    return out

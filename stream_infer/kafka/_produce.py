"""Producing candles: klines files -> Candle JSON events keyed by symbol, like a live feed."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream_infer._errors import BrokerError
from stream_infer.candles import Candle, read_klines

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

__all__ = [
    "frame_candles",
    "klines_events",
    "make_producer",
    "produce_events",
    "produce_files",
    "start_producer",
]

log = logging.getLogger("stream_infer.service")

# Await acknowledgements every so many sends: bounds memory, keeps the pipe full.
_WINDOW = 5000


def make_producer(
    bootstrap: str, *, client: Mapping[str, Any] | None = None, **overrides: Any
) -> AIOKafkaProducer:
    """An (unstarted) producer: acks from all in-sync replicas, no idempotence unless
    ``enable_idempotence=True`` is passed (the embedded broker cannot serve InitProducerId;
    ``start_producer`` asks the broker and picks).
    """
    from aiokafka import AIOKafkaProducer

    kw: dict[str, Any] = dict(client or {})
    kw.update(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=0,
        max_batch_size=1 << 20,
    )
    kw.update(overrides)
    return AIOKafkaProducer(**kw)


async def start_producer(
    bootstrap: str,
    *,
    idempotence: str = "auto",
    client: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> tuple[AIOKafkaProducer, bool]:
    """A started producer and whether it is idempotent.

    An idempotent producer makes the broker drop a batch the producer re-sends after a lost
    acknowledgement (a connection cut after the append), which would otherwise land twice.
    ``idempotence``: ``"true"`` insists, ``"false"`` never asks, ``"auto"`` asks and falls
    back to a plain producer where the broker cannot serve InitProducerId (the embedded
    Tansu broker answers it with an error at once). Connection errors are not a refusal:
    they raise ``BrokerError`` in every mode.
    """
    from aiokafka.errors import KafkaConnectionError, KafkaError

    want = idempotence in ("auto", "true")
    producer = make_producer(bootstrap, client=client, enable_idempotence=want, **overrides)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    except KafkaError as exc:
        await producer.stop()
        if idempotence != "auto":
            raise BrokerError(f"the broker refused an idempotent producer: {exc!r}") from exc
        log.warning(
            "the broker at %s cannot serve an idempotent producer (%r): producing without; "
            "a send retried after a lost acknowledgement may land twice",
            bootstrap,
            exc,
        )
        producer = make_producer(bootstrap, client=client, **overrides)
        await producer.start()
        return producer, False
    return producer, want


def frame_candles(frame: Any, limit: int | None = None) -> list[Candle]:
    """The rows of a ``read_klines`` frame as candles (NaN spread -> absent)."""
    rows = frame.head(limit) if limit is not None else frame
    out: list[Candle] = []
    for rec in rows.to_dict("records"):
        s = rec.get("spread_bps")
        rec["spread_bps"] = None if s is None or (isinstance(s, float) and math.isnan(s)) else s
        rec["trades"] = int(rec["trades"])
        out.append(Candle.model_validate(rec))
    return out


def klines_events(
    files: Sequence[str | Path],
    *,
    interleave: bool = True,
    limit: int | None = None,
) -> list[tuple[bytes, bytes]]:
    """(key, value) per candle of the files: key = symbol, value = Candle JSON.

    ``interleave`` merges the files by open_time (ties in file order), as candles of
    several symbols arrive live; otherwise file after file. ``limit`` keeps the first
    ``limit`` candles of each file.
    """
    from stream_infer.events import encode_candle

    streams = [frame_candles(read_klines(f), limit) for f in files]
    ordered: Iterable[Candle]
    if interleave:
        ordered = heapq.merge(*streams, key=lambda c: c.open_time)
    else:
        ordered = (c for s in streams for c in s)
    return [(c.symbol.encode(), encode_candle(c)) for c in ordered]


async def produce_events(
    producer: AIOKafkaProducer,
    topic: str,
    events: Iterable[tuple[bytes | None, bytes]],
    *,
    rate: float | None = None,
    progress: Any = None,
) -> int:
    """Send (key, value) events and wait for every acknowledgement; returns how many.

    ``rate`` paces the sends (events per second, on a fixed schedule so it does not
    drift); ``None`` sends as fast as the broker acknowledges. ``progress`` is called
    with the number of events acknowledged so far.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    pending: list[asyncio.Future[Any]] = []
    sent = 0
    t0 = time.perf_counter()
    try:
        for key, value in events:
            if rate is not None:
                delay = t0 + sent / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(await producer.send(topic, value, key=key))
            sent += 1
            if len(pending) >= _WINDOW or rate is not None:
                await _drain(pending, progress, sent)
        await _drain(pending, progress, sent)
    except BrokerError:
        raise
    except Exception as exc:
        from aiokafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            raise BrokerError(f"producing to {topic!r} failed: {exc!r}") from exc
        raise
    return sent


async def _drain(pending: list[asyncio.Future[Any]], progress: Any, sent: int) -> None:
    if pending:
        await asyncio.gather(*pending)
        pending.clear()
    if progress is not None:
        progress(sent)


async def produce_files(
    bootstrap: str,
    topic: str,
    files: Sequence[str | Path],
    *,
    rate: float | None = None,
    interleave: bool = True,
    limit: int | None = None,
    client: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> int:
    """Replay klines files onto ``topic`` (see :func:`klines_events`); returns the count sent."""
    events = klines_events(files, interleave=interleave, limit=limit)
    producer = make_producer(bootstrap, client=client)
    try:
        await producer.start()
    except Exception as exc:
        await producer.stop()
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        if not progress:
            return await produce_events(producer, topic, events, rate=rate)
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(f"producing to {topic}", total=len(events))
            return await produce_events(
                producer,
                topic,
                events,
                rate=rate,
                progress=lambda n: bar.update(task, completed=n),
            )
    finally:
        await producer.stop()

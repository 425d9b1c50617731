"""Replay: klines files through the same ``Pipeline.process`` path, with no broker.

The candles of all files are merged in ``open_time`` order (as a broker delivers
interleaved symbols), encoded to Candle JSON and fed in micro-batches, so replay is the
offline twin of ``stream-infer run``: same decoder, same rules, same streams, same model
call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import orjson
import pandas as pd

from stream_infer.candles import CANDLE_COLUMNS, read_klines
from stream_infer.events import encode_dead_letter, encode_prediction
from stream_infer.pipeline._pipeline import Pipeline
from stream_infer.pipeline._types import BatchResult, Counts, Inbound

__all__ = ["ReplayStats", "merged_candle_messages", "replay_klines"]


@dataclass(slots=True)
class ReplayStats:
    """What a replay did: the pipeline's counts summed over every batch."""

    counts: Counts = field(default_factory=Counts)
    batches: int = 0
    files: int = 0


def _load(paths: Sequence[str | Path], interval: str | None) -> pd.DataFrame:
    frames = []
    for k, p in enumerate(paths):
        # not validated here: bad rows take the service's path (dead letters)
        df = read_klines(p, interval=interval, validate=False)
        df["_file"] = k
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*CANDLE_COLUMNS, "_file"])
    df = pd.concat(frames, ignore_index=True)
    # open_time order across files; a file's own order breaks ties (a stable sort)
    order = np.lexsort((np.arange(len(df)), df["_file"].to_numpy(), df["open_time"].to_numpy()))
    return df.iloc[order].reset_index(drop=True)


def merged_candle_messages(
    paths: Sequence[str | Path], *, interval: str | None = None
) -> tuple[int, Iterator[bytes]]:
    """(count, Candle JSON values) of the files' candles merged in ``open_time`` order."""
    df = _load(paths, interval)
    records = df[list(CANDLE_COLUMNS)].to_dict("records")

    def values() -> Iterator[bytes]:
        opt = orjson.OPT_SERIALIZE_NUMPY
        for r in records:
            s = r["spread_bps"]
            if s != s:  # NaN: absent
                r["spread_bps"] = None
            yield orjson.dumps(r, option=opt)

    return len(records), values()


def replay_klines(
    paths: Sequence[str | Path],
    pipeline: Pipeline,
    out: BinaryIO,
    *,
    interval: str | None = None,
    batch_size: int = 64,
    dead_letters: BinaryIO | None = None,
    clock: Callable[[], float] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> ReplayStats:
    """Feed the files through ``pipeline``; predictions to ``out`` as JSON lines.

    ``dead_letters``, when given, receives the dead-letter records as JSON lines;
    ``on_start(total)`` is called once the files are read, ``on_batch`` after each batch.
    Output is deterministic apart from ``latency_ms`` and ``produced_at``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    clock = clock or pipeline.clock
    stats = ReplayStats(files=len(paths))
    total, values = merged_candle_messages(paths, interval=interval)
    if on_start is not None:
        on_start(total)
    batch: list[Inbound] = []

    def flush() -> None:
        result = pipeline.process(batch)
        stats.batches += 1
        stats.counts.add(result.counts)
        if result.predictions:
            out.write(b"".join(encode_prediction(p) + b"\n" for p in result.predictions))
        if dead_letters is not None and result.dead_letters:
            dead_letters.write(b"".join(encode_dead_letter(d) + b"\n" for d in result.dead_letters))
        if on_batch is not None:
            on_batch(result)
        batch.clear()

    for offset, value in enumerate(values):
        batch.append(Inbound(value, 0, offset, clock(), topic="replay"))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return stats

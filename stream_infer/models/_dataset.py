"""Training data: features per stream (``batch_features``), labels, samples and the time split.

Label choice (docs/models.md, "Labels and split"): for a row t and horizon h,
``y_h = 1 if close[t+h] > close[t] else 0`` with h counted in rows of the stream (synthetic
gap-fill rows count: they are candles of the stream). A row t is a *sample* only when

* row t is a real candle (the service predicts only on real candles),
* its window rows t-L+1 .. t are all ready (every feature finite) and in t's segment,
* for every horizon, row t+h exists, is in t's segment (no label across a stream break) and
  is a real candle (a synthetic row's close is a copy, not a price the market printed).

One sample set serves every model and horizon, so the ensemble is scored on the same rows.
The split is by time per (symbol, interval): the span from the first sample's window start
to the last sample's label end is cut 70/15/15; a sample belongs to a part only when its
whole footprint (window and labels, rows t-L+1 .. t+max(h)) lies inside that part, so the
samples dropped at each cut form a purge gap of L + max(h) - 1 rows and no window or label
crosses a boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stream_infer._errors import ModelError
from stream_infer.candles import INTERVAL_MS, klines_meta, read_klines
from stream_infer.features import N_FEATURES, batch_features, prepare_stream

__all__ = [
    "SPLITS",
    "Samples",
    "StreamData",
    "load_streams",
    "make_samples",
    "sample_mask",
    "split_parts",
    "stream_from_frame",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)


@dataclass(frozen=True)
class StreamData:
    """One (symbol, interval) stream: the rows ``batch_features`` returns, with their candles."""

    symbol: str
    interval: str
    files: tuple[str, ...]
    open_time: np.ndarray  # (T,) int64
    close: np.ndarray  # (T,) float64
    synthetic: np.ndarray  # (T,) bool
    segment: np.ndarray  # (T,) int64
    features: np.ndarray  # (T, 27) float64, NaN where not ready

    @property
    def rows(self) -> int:
        return int(self.open_time.size)


def load_streams(paths: Sequence[str | Path]) -> list[StreamData]:
    """Read klines files, group them by (symbol, interval) and compute each stream's features.

    Files of one symbol and interval are concatenated (the stream rules then fill short gaps
    and restart after long ones), so two consecutive months form one stream.
    """
    if not paths:
        raise ModelError("no data files given")
    groups: dict[tuple[str, str], list[str]] = {}
    for p in paths:
        groups.setdefault(klines_meta(p), []).append(str(p))
    streams = []
    for (symbol, interval), files in sorted(groups.items()):
        frame = pd.concat([read_klines(f) for f in sorted(files)], ignore_index=True)
        streams.append(stream_from_frame(frame, symbol, interval, tuple(sorted(files))))
    return streams


def stream_from_frame(
    frame: pd.DataFrame, symbol: str, interval: str, files: tuple[str, ...] = ()
) -> StreamData:
    """One stream's rows and features from its candles (``read_klines`` columns)."""
    ms = INTERVAL_MS[interval]
    feats = batch_features(frame, interval_ms=ms)
    prep = prepare_stream(frame, interval_ms=ms)
    ot = prep["open_time"].to_numpy(dtype=np.int64)
    if not np.array_equal(ot, feats.index.to_numpy(dtype=np.int64)):
        raise ModelError(f"features and stream rows disagree for {symbol} {interval}")
    return StreamData(
        symbol=symbol,
        interval=interval,
        files=files,
        open_time=ot,
        close=prep["close"].to_numpy(dtype=np.float64),
        synthetic=prep["synthetic"].to_numpy(dtype=bool),
        segment=prep["segment"].to_numpy(dtype=np.int64),
        features=feats.to_numpy(dtype=np.float64),
    )


def labels(close: np.ndarray, horizons: Sequence[int]) -> np.ndarray:
    """(T, H) float64: 1.0 where close[t+h] > close[t], 0.0 where not, NaN past the end."""
    size = close.size
    y = np.full((size, len(horizons)), np.nan)
    for j, h in enumerate(horizons):
        if h < size:
            y[: size - h, j] = (close[h:] > close[:-h]).astype(np.float64)
    return y


def sample_mask(
    synthetic: np.ndarray,
    segment: np.ndarray,
    ready: np.ndarray,
    horizons: Sequence[int],
    seq_len: int,
) -> np.ndarray:
    """(T,) bool: the rows that are samples (module docstring)."""
    size = synthetic.size
    ok = ~synthetic.copy()
    # Window: seq_len ready rows ending at t, all in t's segment.
    cs = np.concatenate([[0], np.cumsum(ready.astype(np.int64))])
    idx = np.arange(size)
    start = idx - seq_len + 1
    has_start = start >= 0
    s0 = np.where(has_start, start, 0)
    window_ready = has_start & (cs[idx + 1] - cs[s0] == seq_len)
    ok &= window_ready & (segment[s0] == segment)
    for h in horizons:
        target = idx + h
        inside = target < size
        tc = np.where(inside, target, 0)
        ok &= inside & (segment[tc] == segment) & ~synthetic[tc]
    return ok


def split_parts(
    mask: np.ndarray,
    seq_len: int,
    max_h: int,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> np.ndarray:
    """(T,) int8: 0/1/2 (train/val/test) for samples whose footprint lies in one part, -1 else."""
    size = mask.size
    part = np.full(size, -1, dtype=np.int8)
    ts = np.flatnonzero(mask)
    if ts.size == 0:
        return part
    lo = int(ts[0]) - seq_len + 1
    hi = int(ts[-1]) + max_h + 1  # exclusive
    span = hi - lo
    c1 = lo + int(np.floor(span * fractions[0]))
    c2 = lo + int(np.floor(span * (fractions[0] + fractions[1])))
    first = ts - seq_len + 1
    last = ts + max_h
    for k, (a, b) in enumerate(((lo, c1), (c1, c2), (c2, hi))):
        inside = (first >= a) & (last < b)
        part[ts[inside]] = k
    return part


@dataclass
class Samples:
    """Samples of one split over all streams, addressing rows of the concatenated features."""

    rows: np.ndarray  # (n,) int64 index into ``features`` (the window's last row)
    y: np.ndarray  # (n, H) float64 in {0, 1}
    stream: np.ndarray  # (n,) int64 index into the stream list
    open_time: np.ndarray  # (n,) int64
    features: np.ndarray = field(repr=False)  # (sum T, 27) float64, shared by the splits
    seq_len: int = 64

    def __len__(self) -> int:
        return int(self.rows.size)

    def windows(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """RAW feature windows (n, seq_len, 27) float64 of the selected samples."""
        rows = self.rows if index is None else self.rows[index]
        offsets = np.arange(-self.seq_len + 1, 1)
        return self.features[rows[:, None] + offsets]

    def latest(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """The latest RAW feature row (n, 27) float64 of the selected samples."""
        rows = self.rows if index is None else self.rows[index]
        return self.features[rows]


def make_samples(
    streams: Sequence[StreamData],
    horizons: Sequence[int],
    seq_len: int,
    *,
    split: bool = True,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> dict[str, Samples]:
    """Samples per split (``split``) or all of them under the key ``"all"``."""
    if not horizons or min(horizons) < 1:
        raise ModelError(f"horizons must be positive candle counts, got {list(horizons)}")
    feats = np.concatenate([s.features for s in streams]) if streams else np.empty((0, 27))
    if feats.shape[1] != N_FEATURES:
        raise ModelError(f"expected {N_FEATURES} features, got {feats.shape[1]}")
    names = list(SPLITS) if split else ["all"]
    acc: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {
        k: [] for k in names
    }
    offset = 0
    for i, s in enumerate(streams):
        ready = np.isfinite(s.features).all(axis=1)
        mask = sample_mask(s.synthetic, s.segment, ready, horizons, seq_len)
        y = labels(s.close, horizons)
        if split:
            part = split_parts(mask, seq_len, max(horizons), fractions)
            chosen = [np.flatnonzero(part == k) for k in range(3)]
        else:
            chosen = [np.flatnonzero(mask)]
        for name, t in zip(names, chosen, strict=True):
            acc[name].append((t + offset, y[t], np.full(t.size, i), s.open_time[t]))
        offset += s.rows
    out = {}
    for name in names:
        parts = acc[name]
        out[name] = Samples(
            rows=np.concatenate([p[0] for p in parts]).astype(np.int64),
            y=np.concatenate([p[1] for p in parts]).reshape(-1, len(horizons)),
            stream=np.concatenate([p[2] for p in parts]).astype(np.int64),
            open_time=np.concatenate([p[3] for p in parts]).astype(np.int64),
            features=feats,
            seq_len=seq_len,
        )
    return out

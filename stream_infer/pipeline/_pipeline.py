"""The synchronous core: a batch of candle messages in, predictions and dead letters out.

No I/O and no clock of its own: the Kafka edge (``stream-infer run``) and the offline
twin (``stream-infer replay``) both call :meth:`Pipeline.process` with what they read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from stream_infer._errors import CandleError, ModelError
from stream_infer.candles import Candle, interval_to_ms
from stream_infer.events import MAX_BYTES, DeadLetter, Prediction, decode_candle
from stream_infer.pipeline._types import (
    BatchResult,
    Counts,
    EnsembleLike,
    FeatureStream,
    HeldStream,
    Inbound,
    StageTimes,
    StreamState,
)

__all__ = ["FeaturesFactory", "HoldPredicate", "Pipeline", "wall_ms"]

FeaturesFactory = Callable[[int, int], FeatureStream]
"""``(interval_ms, keep_rows) -> FeatureStream``; the default is ``StreamingFeatures``."""

HoldPredicate = Callable[[int, str, str], bool]
"""``(partition, symbol, interval) -> bool``: stop before a stream the pipeline does not hold
(or holds too short) to fetch its history first; see ``Pipeline.process``."""


def wall_ms() -> int:
    """Wall clock, ms since the epoch (the default ``now_ms``)."""
    return time.time_ns() // 1_000_000


def _streaming_features(interval_ms: int, keep_rows: int) -> FeatureStream:
    from stream_infer.features import StreamingFeatures

    stream: FeatureStream = StreamingFeatures(interval_ms, keep_rows=keep_rows)
    return stream


def _outcome(o: object) -> str:
    """The outcome's name, whether the features module gives an enum or a string."""
    name = getattr(o, "name", o)
    return str(name).upper()


@dataclass(slots=True)
class _Stream:
    features: FeatureStream
    partition: int | None
    keep: int


class Pipeline:
    """Candles -> per-(symbol, interval) streams -> one batched model call -> predictions.

    * A stream is created on its first candle, keeping ``keep_rows`` feature rows: the
      largest ``seq_len`` of any ensemble served so far, or the ``keep_rows`` given if
      larger (default 64, so that enabling a model later rarely needs a rebuild).
    * Readiness: a candle gets a prediction when its stream's features are ready (the
      ``WARMUP``-th candle on, docs/feature-spec.md) and ``seq_len`` ready rows are kept: the first
      one is at candle index ``first_prediction_index(seq_len)`` of a stream (gap-filled
      candles count; ``_readiness.py``).
    * Bad input becomes a :class:`~stream_infer.events.DeadLetter`; it never raises and
      never touches a stream.
    * ``swap`` replaces the ensemble for the next ``process`` call, never mid-batch. If
      the new ``seq_len`` is longer than a stream keeps, that stream is replaced by a
      fresh one on its next candle (it must warm up again, or be rebuilt with
      :meth:`warm`; :meth:`stale_streams` lists them).
    * If ``process`` raises (only a model failure can), the streams are ahead of the
      messages' offsets: the caller must not commit, and must rebuild (``drop_partitions``
      then ``warm``) or restart.
    * ``process(batch, hold=...)`` stops before the first candle whose stream is missing
      (or too short) and that ``hold`` claims, so the caller can ``warm`` it first (the
      history of a stream bounded by its own first live candle); see ``BatchResult.held``.
    """

    def __init__(
        self,
        ensemble: EnsembleLike | None,
        *,
        clock: Callable[[], float] = time.perf_counter,
        now_ms: Callable[[], int] = wall_ms,
        max_bytes: int = MAX_BYTES,
        keep_rows: int = 64,
        features: FeaturesFactory | None = None,
    ) -> None:
        self._ensemble = ensemble
        self._clock = clock
        self._now_ms = now_ms
        self._max_bytes = max_bytes
        self._keep = max(1, keep_rows, ensemble.seq_len if ensemble is not None else 1)
        self._factory = features or _streaming_features
        self._streams: dict[tuple[str, str], _Stream] = {}

    @property
    def clock(self) -> Callable[[], float]:
        """The clock ``Inbound.received`` must be read from."""
        return self._clock

    # -- the ensemble -------------------------------------------------------------------

    @property
    def ensemble(self) -> EnsembleLike | None:
        """The ensemble the next batch will use (None: inference disabled)."""
        return self._ensemble

    def swap(self, ensemble: EnsembleLike | None) -> EnsembleLike | None:
        """Serve ``ensemble`` from the next ``process`` call on; returns the previous one."""
        previous, self._ensemble = self._ensemble, ensemble
        return previous

    @property
    def keep_rows(self) -> int:
        """Feature rows a stream must keep for the serving ensemble."""
        ens = self._ensemble
        return max(self._keep, ens.seq_len if ens is not None else 1)

    # -- streams ------------------------------------------------------------------------

    @property
    def streams(self) -> int:
        """How many (symbol, interval) streams are held."""
        return len(self._streams)

    def stream_state(self, symbol: str, interval: str) -> StreamState | None:
        """A view of one stream, or None when it is not held."""
        s = self._streams.get((symbol, interval))
        if s is None:
            return None
        f = s.features
        return StreamState(
            symbol=symbol,
            interval=interval,
            partition=s.partition,
            ready=bool(f.ready),
            rows_available=int(f.rows_available),
            keep_rows=s.keep,
            last_open_time=f.last_open_time,
        )

    def stream_states(self) -> list[StreamState]:
        """Every stream's view, in creation order."""
        return [s for k in list(self._streams) if (s := self.stream_state(*k)) is not None]

    def stale_streams(self) -> list[tuple[str, str]]:
        """Streams that keep fewer rows than the serving ensemble needs (rebuild them with ``warm``)."""
        need = self.keep_rows
        return [k for k, s in self._streams.items() if s.keep < need]

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the streams whose candles came from these partitions; returns how many."""
        gone = set(partitions)
        keys = [k for k, s in self._streams.items() if s.partition in gone]
        for k in keys:
            del self._streams[k]
        return len(keys)

    def _new_stream(self, interval: str, partition: int | None) -> _Stream:
        keep = self.keep_rows
        self._keep = keep
        return _Stream(self._factory(interval_to_ms(interval), keep), partition, keep)

    def warm(self, candles: Iterable[Candle], partition: int | None = None) -> Counts:
        """Rebuild the streams of these candles from history, emitting nothing.

        Each (symbol, interval) present is replaced by a fresh stream fed its candles in
        the order given, which must be the order they were consumed (offset order): the
        stream rules then drop the same late candles live processing dropped, so the
        rebuilt state is the live state. Candles that are not closed are skipped, bad ones
        counted under ``dead_letters`` by reason (history is not dead-lettered again).
        """
        counts = Counts()
        by_key: dict[tuple[str, str], list[Candle]] = {}
        for c in candles:
            counts.messages += 1
            if not c.is_closed:
                counts.not_closed += 1
                continue
            by_key.setdefault((c.symbol, c.interval), []).append(c)
        for (symbol, interval), history in by_key.items():
            stream = self._new_stream(interval, partition)
            for c in history:
                try:
                    self._apply(stream.features, c, counts)
                except CandleError as exc:
                    counts.dead_letters[exc.reason] = counts.dead_letters.get(exc.reason, 0) + 1
            self._streams[(symbol, interval)] = stream
        return counts

    @staticmethod
    def _apply(f: FeatureStream, candle: Candle, counts: Counts) -> np.ndarray | None:
        """One candle into a stream; raises CandleError (state untouched) if it refuses it."""
        row = f.update(candle)
        counts.candles += 1
        outcome = _outcome(f.last_outcome)
        if outcome == "DUPLICATE":
            counts.duplicates += 1
        elif outcome == "LATE":
            counts.late += 1
        elif outcome == "RESTARTED":
            counts.restarts += 1
        counts.gap_filled += f.last_filled
        return row

    # -- the hot path -------------------------------------------------------------------

    def process(
        self, batch: Sequence[Inbound], *, hold: HoldPredicate | None = None
    ) -> BatchResult:
        """Decode, validate and apply each message in order, then one model call for the batch.

        ``hold``: when a closed candle's stream is not held (or keeps fewer rows than the
        ensemble needs) and ``hold(partition, symbol, interval)`` is true, processing stops
        before that message: the result covers the messages before it (``held_at`` is its
        index) and ``held`` lists the first candle of every stream in the rest of the batch
        that ``hold`` claims, so one history read can serve them all. Warm those streams
        (or make ``hold`` refuse them), then call again with ``batch[held_at:]``.
        """
        ens = self._ensemble  # read once: a swap takes effect on the next batch
        # without a model, "ready" means the features are
        need = ens.seq_len if ens is not None else 1
        if need > self._keep:
            self._keep = need
        clock = self._clock
        counts = Counts()
        times = StageTimes()
        offsets: dict[int, int] = {}
        dead: list[DeadLetter] = []
        windows: list[np.ndarray] = []
        made_from: list[tuple[Candle, float]] = []
        failed_at: int | None = None
        streams = self._streams
        held_at: int | None = None
        held: tuple[HeldStream, ...] = ()

        for i, m in enumerate(batch):
            counts.messages += 1
            before = offsets.get(m.partition, -1)
            if before < m.offset:
                offsets[m.partition] = m.offset
            t0 = clock()
            try:
                candle = decode_candle(m.value, max_bytes=self._max_bytes)
            except CandleError as exc:
                t1 = clock()
                times.decode += t1 - t0
                if failed_at is None:
                    failed_at = self._now_ms()
                dead.append(self._dead_letter(m, exc, failed_at, counts))
                continue
            t1 = clock()
            times.decode += t1 - t0
            if candle is None:
                counts.not_closed += 1
                continue
            key = (candle.symbol, candle.interval)
            stream = streams.get(key)
            if stream is None or stream.keep < self._keep:
                if hold is not None and hold(m.partition, candle.symbol, candle.interval):
                    # Not processed: the caller warms the stream, then hands this message again.
                    counts.messages -= 1
                    if before < 0:
                        del offsets[m.partition]
                    else:
                        offsets[m.partition] = before
                    held_at = i
                    held = self._held_streams(batch, i, hold)
                    break
                stream = streams[key] = self._new_stream(candle.interval, m.partition)
            else:
                stream.partition = m.partition
            f = stream.features
            try:
                row = self._apply(f, candle, counts)
            except CandleError as exc:
                # the stream refused what the decoder let through (e.g. off the interval grid)
                times.features += clock() - t1
                exc.symbol = exc.symbol or candle.symbol
                exc.interval = exc.interval or candle.interval
                if failed_at is None:
                    failed_at = self._now_ms()
                dead.append(self._dead_letter(m, exc, failed_at, counts))
                continue
            if row is not None and f.rows_available >= need:
                counts.ready += 1
                if ens is not None:
                    windows.append(f.window(need))
                    made_from.append((candle, m.received))
            elif _outcome(f.last_outcome) not in ("DUPLICATE", "LATE"):
                counts.warming += 1
            times.features += clock() - t1

        predictions: list[Prediction] = []
        if windows and ens is not None:
            t2 = clock()
            predictions = self._predict(ens, windows, made_from, counts)
            times.models = clock() - t2
        return BatchResult(predictions, dead, counts, offsets, times, ens, held_at, held)

    def _held_streams(
        self, batch: Sequence[Inbound], start: int, hold: HoldPredicate
    ) -> tuple[HeldStream, ...]:
        """The first closed candle of each stream from ``batch[start]`` on that ``hold`` claims.

        Decodes the rest of the batch a second time, but only in a batch that met a new
        stream: the steady state never gets here.
        """
        found: dict[tuple[str, str], HeldStream] = {}
        for m in batch[start:]:
            try:
                c = decode_candle(m.value, max_bytes=self._max_bytes)
            except CandleError:
                continue  # dead-lettered when the message is processed
            if c is None:
                continue
            key = (c.symbol, c.interval)
            if key in found:
                continue
            stream = self._streams.get(key)
            if (stream is None or stream.keep < self._keep) and hold(
                m.partition, c.symbol, c.interval
            ):
                found[key] = HeldStream(m.partition, m.offset, c)
        return tuple(found.values())

    def _dead_letter(
        self, m: Inbound, exc: CandleError, failed_at: int, counts: Counts
    ) -> DeadLetter:
        counts.dead_letters[exc.reason] = counts.dead_letters.get(exc.reason, 0) + 1
        return DeadLetter.from_error(
            exc,
            value=m.value,
            topic=m.topic,
            partition=m.partition,
            offset=m.offset,
            timestamp_ms=m.timestamp_ms,
            failed_at=failed_at,
        )

    def _predict(
        self,
        ens: EnsembleLike,
        windows: list[np.ndarray],
        made_from: list[tuple[Candle, float]],
        counts: Counts,
    ) -> list[Prediction]:
        # windows are fresh float64 copies already (FeatureStream.window)
        x = windows[0][None] if len(windows) == 1 else np.stack(windows)
        out = ens.predict(x)
        horizons = tuple(int(h) for h in ens.horizons)
        shape = (len(windows), len(horizons))
        arrays = [
            np.asarray(a, dtype=np.float64)
            for a in (out.probabilities, out.confidences, out.mamba, out.lgbm)
        ]
        if any(a.shape != shape for a in arrays):
            got = [a.shape for a in arrays]
            raise ModelError(f"ensemble returned shapes {got}, expected {shape} for each")
        probs, confs, mamba, lgbm = (a.tolist() for a in arrays)
        ensemble_id, version = str(ens.ensemble_id), str(ens.version)
        feature_version = int(ens.feature_version)
        end = self._clock()
        produced_at = self._now_ms()
        not_finite = set(np.flatnonzero(~np.isfinite(arrays[0]).all(axis=1)).tolist())
        predictions = []
        for i, (candle, received) in enumerate(made_from):
            if i in not_finite:  # a NaN or inf from the model: no prediction
                counts.not_finite += 1
                continue
            predictions.append(
                Prediction(
                    symbol=candle.symbol,
                    interval=candle.interval,
                    open_time=candle.open_time,
                    horizons=horizons,
                    predictions=probs[i],
                    confidences=confs[i],
                    components={"mamba": mamba[i], "lgbm": lgbm[i]},
                    ensemble_id=ensemble_id,
                    version=version,
                    feature_version=feature_version,
                    latency_ms=(end - received) * 1000.0,
                    produced_at=produced_at,
                )
            )
        counts.predictions = len(predictions)
        return predictions

"""``run_inference_pipeline(db, manager)``: the seed's library call, from Postgres candles.

The seed's data feeder wrote candles to the database and, every minute, called
``run_inference_pipeline(db, manager)``: read the latest candles, compute the features,
run the ensemble, return the predictions. This is that call on stream_infer's parts:

* the rows come from the ``candles`` table, checked row by row before any reaches a
  feature stream (``_read.checked``: NaN, high < low, off the grid, duplicate open_time);
* the features are the service's own (``Pipeline``, ``StreamingFeatures``), the
  predictions the events the Kafka path publishes (``Pipeline.process``: one model call
  for every stream of the call);
* a stream is read from its newest candle back as far as readiness needs
  (``history_need``: the features' warm-up and the model's ``seq_len``) and no further.

The feature state of each stream is kept between calls, per manager: a later call reads
only the rows inserted since (one index probe per stream) and feeds them on, so a call
for 100 streams costs 100 feature updates and one batched model call instead of 100
warm-ups. A row inserted, deleted or updated behind the newest one read is noticed and
that stream read afresh, so a later call gives what a fresh read would: the database
counts the statements that change rows behind their stream's newest (``candle_changes``,
migration 2); while that count stands, the held rows are the table's; when it moved (or
the table has no count), each held stream's rows are compared with a fingerprint (their
count and the sum of their ``xmin``), one index range per stream.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream_infer._errors import ConfigError, ModelError, StreamInferError
from stream_infer._errors import StreamNotReady as _NotReady
from stream_infer.candles import Candle, interval_to_ms
from stream_infer.db import Database, db_errors, insert_predictions
from stream_infer.events import Prediction, encode_candle
from stream_infer.features import MAX_GAP
from stream_infer.pgsource import _read
from stream_infer.pgsource._read import Rejected, StreamKey
from stream_infer.pipeline import Inbound, Pipeline

__all__ = ["INCREMENTAL_MAX", "InferenceResult", "history_need_of", "run_inference_pipeline"]

# A held stream is fed the rows inserted since the last call when there are at most this
# many (each ready one costs a model window, only the newest is returned); with more it is
# read afresh from its newest candle back (a warm-up, no model call but the last).
INCREMENTAL_MAX = 8


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """What one ``run_inference_pipeline`` call did.

    ``predictions``: one per stream that could predict its newest candle (the ``Prediction``
    events of the Kafka path; ``latency_ms`` counts from the call's start). ``skipped``: the
    streams that could not, each with why (``StreamNotReady``; a ``ModelError`` when the
    model answered NaN). ``rejected``: the rows this call read that never reached a feature
    stream, with their reason. ``latency_ms``: call start -> predictions built.
    ``written``: with ``write=True``, the rows new in ``predictions`` (0 for a repeat).
    """

    predictions: list[Prediction]
    skipped: list[StreamInferError] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    latency_ms: float = 0.0
    written: int | None = None


class _Held:
    """A stream that predicted its newest candle in the last call: the rows it was read
    from (to tell whether they are still the table's) and that prediction."""

    __slots__ = ("changes", "newest", "prediction", "rows", "seen", "xmin_sum")

    def __init__(self, prediction: Prediction, changes: int | None) -> None:
        self.seen: collections.deque[tuple[int, int]] = collections.deque()  # (open_time, xmin)
        self.rows = 0
        self.xmin_sum = 0
        self.newest = prediction.open_time
        self.prediction = prediction
        # ``candle_changes.n`` when the rows were read or last checked (None: not counted)
        self.changes = changes

    @property
    def fingerprint(self) -> _read.Fingerprint:
        return _read.Fingerprint(self.rows, self.xmin_sum)

    def add(self, records: Iterable[Mapping[str, Any]], lo: int) -> None:
        """Rows read since (oldest first), then forget those before ``lo``."""
        seen = self.seen
        for r in records:
            x = int(r["xmin"])
            seen.append((int(r["open_time"]), x))
            self.rows += 1
            self.xmin_sum += x
        while seen and seen[0][0] < lo:
            self.rows -= 1
            self.xmin_sum -= seen.popleft()[1]


@dataclass(slots=True)
class _Plan:
    cold: dict[StreamKey, int] = field(default_factory=dict)  # key -> newest
    warm: dict[StreamKey, int] = field(default_factory=dict)


class _Streams:
    """The feature state of one (database, interval) for one manager, kept between calls."""

    def __init__(self, interval: str) -> None:
        self.interval = interval
        self.interval_ms = interval_to_ms(interval)
        self.pipeline = Pipeline(None, keep_rows=1)
        self.ensemble: Any = None
        self.held: dict[str, _Held] = {}
        self.lock = asyncio.Lock()
        self.counted: bool | None = None  # the database counts changes behind (migration 2)
        self.changes: int | None = None  # the count read before this call's fresh reads

    def need(self) -> int:
        return history_need_of(self.pipeline)

    async def run(
        self, db: Database, ensemble: Any, symbol: str | None, t0: float
    ) -> InferenceResult:
        if ensemble is not self.ensemble:
            # Another ensemble (a hot reload): every stream is read afresh for it.
            self.pipeline.swap(ensemble)
            self.ensemble = ensemble
            self.held.clear()
        need = self.need()
        iv = self.interval_ms
        with db_errors(f"read candles ({self.interval})"):
            async with db.acquire() as conn:
                if self.counted is None:
                    self.counted = await _read.counted(conn)
                self.changes = None
                quick = await self._one_held(conn, symbol)
                if quick is not None:
                    newest, plan, got_after = quick
                    got_windows = {}
                else:
                    newest = await _read.newest(conn, self.interval, symbol)
                    plan = self._plan(newest)
                    got_after = await _read.after(
                        conn,
                        {
                            k: (self.held[k[0]].seen[0][0], self.held[k[0]].newest, n)
                            for k, n in plan.warm.items()
                        },
                        INCREMENTAL_MAX,
                        known=self._known(plan.warm),
                    )
                    for k, got in got_after.items():
                        if not self._unchanged(k, got):
                            # rows inserted, deleted or updated behind the newest one read
                            plan.cold[k] = plan.warm.pop(k)
                    if plan.cold and self.counted:
                        # read before the rows: a change in between is seen next time
                        self.changes = int(await conn.fetchval("SELECT n FROM candle_changes"))
                    got_windows = await _read.windows(
                        conn,
                        {k: (_read.window_start(n, need, iv), n) for k, n in plan.cold.items()},
                    )
        if symbol is not None and not newest:
            raise _NotReady(
                f"no candles of {symbol} {self.interval} in the candles table",
                reason="no_candles",
                need=need,
                have=0,
                symbol=symbol,
                interval=self.interval,
            )
        return self._predict(newest, plan, got_after, got_windows, need, t0)

    async def _one_held(
        self, conn: Any, symbol: str | None
    ) -> tuple[dict[StreamKey, int], _Plan, dict[StreamKey, _read.After]] | None:
        """One symbol's held stream in one round trip: its rows since the last call (with no
        upper bound, so they also say which is the newest) and the fingerprint of those
        behind. None when that is not enough (not held, changed behind, too many new)."""
        held = None if symbol is None else self.held.get(symbol)
        if held is None or symbol is None:
            return None
        key = (symbol, self.interval)
        got = await _read.after(
            conn,
            {key: (held.seen[0][0], held.newest, _read.AFTER_ALL)},
            INCREMENTAL_MAX,
            known=self._known([key]),
        )
        one = got[key]
        if one.more or not self._unchanged(key, one):
            return None
        newest = {key: int(one.rows[-1]["open_time"]) if one.rows else held.newest}
        return newest, _Plan(warm=dict(newest)), got

    def _known(self, keys: Iterable[StreamKey]) -> dict[StreamKey, int | None] | None:
        """Per held stream, the change count its rows were last known good at."""
        if not self.counted:
            return None
        return {k: self.held[k[0]].changes for k in keys}

    def _unchanged(self, key: StreamKey, got: _read.After) -> bool:
        """The held rows of ``key`` are still the table's: no change counted since they
        were known good, or (when counted, or not counted at all) the same fingerprint."""
        held = self.held[key[0]]
        if got.behind is None:  # the count is what it was: not even computed
            return True
        if got.behind != held.fingerprint:
            return False
        held.changes = got.changes  # checked at this count
        return True

    def _plan(self, newest: Mapping[StreamKey, int]) -> _Plan:
        plan = _Plan()
        iv = self.interval_ms
        for key, n in newest.items():
            held = self.held.get(key[0])
            if held is None or not held.newest <= n <= held.newest + INCREMENTAL_MAX * iv:
                plan.cold[key] = n
            else:
                plan.warm[key] = n
        return plan

    def _predict(
        self,
        newest: Mapping[StreamKey, int],
        plan: _Plan,
        got_after: Mapping[StreamKey, _read.After],
        got_windows: Mapping[StreamKey, tuple[list[Any], Any]],
        need: int,
        t0: float,
    ) -> InferenceResult:
        iv = self.interval_ms
        pipeline = self.pipeline
        rejected: list[Rejected] = []
        skipped: dict[StreamKey, StreamInferError] = {}
        history: list[Candle] = []
        feed: list[Candle] = []
        fed: dict[StreamKey, list[int]] = {}  # open_times fed, oldest first, for the reason
        read: dict[StreamKey, tuple[_Held | None, list[Any]]] = {}  # what to hold on success
        reuse: dict[StreamKey, Prediction] = {}

        for key, n in plan.cold.items():
            rows, anchor = got_windows[key]
            valid, bad = _read.window_candles(rows, anchor, _read.window_start(n, need, iv), iv)
            rejected += bad
            self.held.pop(key[0], None)
            if not valid or valid[-1].open_time != n:
                skipped[key] = _newest_invalid(key, n, bad)
                continue
            if len(valid) == 1:
                # nothing to warm from: the stream (or what an earlier call left) waits
                skipped[key] = self._not_ready(key, [n], need, None)
                continue
            history += valid[:-1]
            feed.append(valid[-1])
            fed[key] = [c.open_time for c in valid]
            read[key] = (None, rows)

        for key in plan.warm:
            rows = got_after[key].rows
            if not rows:
                reuse[key] = self.held[key[0]].prediction
                continue
            held = self.held.pop(key[0])
            state = pipeline.stream_state(*key)
            previous = None if state is None else state.last_open_time
            valid, bad = _read.checked(rows, iv, previous=previous)
            rejected += bad
            feed += valid
            if not valid or valid[-1].open_time != newest[key]:
                skipped[key] = _newest_invalid(key, newest[key], bad)
                continue
            fed[key] = [*([] if previous is None else [previous]), *(c.open_time for c in valid)]
            read[key] = (held, rows)

        counts = pipeline.warm(history)
        if counts.dead_letters:  # every row was checked before: the rules must agree
            raise ModelError(f"candles refused after they were checked: {counts.dead_letters}")
        batch = [Inbound(encode_candle(c), 0, i, t0, topic="candles") for i, c in enumerate(feed)]
        result = pipeline.process(batch)
        for d in result.dead_letters:
            raise ModelError(f"a checked candle was dead-lettered: {d.reason}: {d.error}")
        made = {(p.symbol, p.interval, p.open_time): p for p in result.predictions}
        end = time.perf_counter()
        predictions: list[Prediction] = []
        for key, n in newest.items():
            if key in skipped:
                continue
            p = made.get((*key, n))
            if p is None and key in reuse:
                # Nothing new since the last call: the same window through the same
                # ensemble, the same numbers; only the timing is this call's.
                p = reuse[key].model_copy(
                    update={"latency_ms": (end - t0) * 1000.0, "produced_at": _wall_ms()}
                )
            if p is None:
                skipped[key] = self._not_ready(key, fed.get(key, []), need, result.counts)
                continue
            predictions.append(p)
            if key in reuse:
                continue  # held as it was
            before, rows = read[key]
            now = before if before is not None else _Held(p, self.changes)
            now.add(rows, _read.window_start(n, need, iv))
            now.newest, now.prediction = n, p
            self.held[key[0]] = now
        return InferenceResult(
            predictions=predictions,
            skipped=list(skipped.values()),
            rejected=rejected,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )

    def _not_ready(
        self, key: StreamKey, times: list[int], need: int, counts: Any
    ) -> StreamInferError:
        symbol, interval = key
        if counts is not None and counts.not_finite:
            return ModelError(
                "the model answered NaN or inf for this stream's window",
                symbol=symbol,
                interval=interval,
            )
        have, gap = _read.stream_since_restart(times, self.interval_ms)
        if gap is not None:
            return _NotReady(
                f"{symbol} {interval}: a gap of {gap} missing candles (the feature spec fills "
                f"at most {MAX_GAP}) restarted the stream; {have} candles since, {need} needed "
                f"({need - have} more)",
                reason="gap",
                need=need,
                have=have,
                symbol=symbol,
                interval=interval,
            )
        return _NotReady(
            f"{symbol} {interval}: {have} consecutive candles up to the newest (gap-filled "
            f"ones included), {need} needed ({need - have} more)",
            reason="too_few",
            need=need,
            have=have,
            symbol=symbol,
            interval=interval,
        )


def _newest_invalid(key: StreamKey, newest: int, bad: list[Rejected]) -> _NotReady:
    symbol, interval = key
    why = next((r for r in reversed(bad) if r.open_time == newest), None)
    detail = f"{why.reason} ({why.error})" if why is not None else "refused"
    return _NotReady(
        f"{symbol} {interval}: the newest candle (open_time {newest}) is not usable: {detail}",
        reason="newest_invalid",
        symbol=symbol,
        interval=interval,
    )


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def history_need_of(pipeline: Pipeline) -> int:
    """Candles a stream needs to predict its newest one: the service's ``history_need``
    (the features' warm-up, then the model's ``seq_len`` rows), one source of truth."""
    from stream_infer.kafka import history_need

    return history_need(pipeline)


# manager -> {(database, interval): the streams' state}; gone with the manager.
_STATE: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], _Streams]] = (
    weakref.WeakKeyDictionary()
)


def _streams(manager: Any, db: Database, interval: str) -> _Streams:
    per = _STATE.setdefault(manager, {})
    key = (db.dsn, interval)
    if key not in per:
        per[key] = _Streams(interval)
    return per[key]


async def run_inference_pipeline(
    db: Database,
    manager: Any,
    symbol: str | None = None,
    interval: str = "1m",
    write: bool = False,
) -> InferenceResult:
    """Predict the newest candle of each stream of ``interval`` in ``candles`` (or of
    ``symbol``'s only) with ``manager``'s serving ensemble, in one batch.

    Reads each stream from its newest candle back as far as readiness needs and no
    further (the rows inserted since, when an earlier call with this manager holds the
    stream). Rows that break a rule never reach a feature stream: they are in ``rejected``
    with their reason. A stream that cannot predict its newest candle (too few candles, a
    gap the feature spec cannot bridge, an unusable newest row) is in ``skipped`` with
    why; with ``symbol`` given that error (``StreamNotReady``) is raised instead.
    ``write=True`` stores the predictions in ``predictions`` (idempotent: a repeat writes
    nothing new). ModelError when no model is serving; DatabaseError when Postgres fails.
    """
    t0 = time.perf_counter()
    try:
        interval_to_ms(interval)
    except StreamInferError as exc:
        raise ConfigError(str(exc), interval=interval) from None
    ensemble = manager.current
    if ensemble is None:
        raise ModelError(
            "no model is serving (manager.is_ready() is false): activate an ensemble or "
            "configure ML_* / the TOML file"
        )
    streams = _streams(manager, db, interval)
    async with streams.lock:
        result = await streams.run(db, ensemble, symbol, t0)
    if symbol is not None and result.skipped:
        raise result.skipped[0]
    if write and result.predictions:
        with db_errors("write predictions"):
            async with db.acquire() as conn:
                written = await insert_predictions(conn, result.predictions)
        result = dataclasses.replace(result, written=written)
    elif write:
        result = dataclasses.replace(result, written=0)
    return result

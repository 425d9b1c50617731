"""The predictions sink: Kafka is the source of truth, Postgres a queryable copy.

``offer`` never waits: it appends to a bounded in-memory queue and a background task
writes batches with ``INSERT ... ON CONFLICT DO NOTHING``. The choice when the queue is
full is to drop (and count) rather than to slow the Kafka path, because every prediction
is on the output topic already and can be re-loaded from there. A batch that fails on
a lost connection stays in memory and is retried with capped backoff; the key
(symbol, interval, open_time, ensemble_id) makes a retried batch land exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import asyncpg
import orjson

from stream_infer._errors import DatabaseError
from stream_infer.db._conn import TRANSIENT_ERRORS, Backoff, Database
from stream_infer.db._schema import migrate

__all__ = ["PredictionLike", "PredictionSink", "insert_predictions", "prediction_row"]

log = logging.getLogger(__name__)

# One round trip per batch, and the command tag says how many rows were new.
_INSERT = """
INSERT INTO predictions (symbol, interval, open_time, ensemble_id, version, feature_version,
    horizons, predictions, confidences, components, latency_ms, produced_at)
SELECT symbol, interval, open_time, ensemble_id, version, feature_version,
    horizons, predictions, confidences, components, latency_ms,
    to_timestamp(produced_at_ms / 1000.0)
FROM jsonb_to_recordset($1::jsonb) AS x(
    symbol text, interval text, open_time bigint, ensemble_id text, version text,
    feature_version integer, horizons integer[], predictions double precision[],
    confidences double precision[], components jsonb, latency_ms double precision,
    produced_at_ms double precision)
ON CONFLICT (symbol, interval, open_time, ensemble_id) DO NOTHING
"""


class PredictionLike(Protocol):
    """The fields the sink stores (``stream_infer.events.Prediction`` has them)."""

    @property
    def symbol(self) -> str: ...
    @property
    def interval(self) -> str: ...
    @property
    def open_time(self) -> int: ...
    @property
    def ensemble_id(self) -> str: ...
    @property
    def version(self) -> str | None: ...
    @property
    def feature_version(self) -> int: ...
    @property
    def horizons(self) -> Sequence[int]: ...
    @property
    def predictions(self) -> Sequence[float]: ...
    @property
    def confidences(self) -> Sequence[float]: ...
    @property
    def components(self) -> Mapping[str, Sequence[float]]: ...
    @property
    def latency_ms(self) -> float | None: ...
    @property
    def produced_at(self) -> Any: ...


def _epoch_ms(value: Any) -> float:
    """produced_at as ms since the epoch: a datetime, or a number of ms (the events' unit)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp() * 1000.0
    return float(value)


def _finite(xs: Iterable[float]) -> list[float | None]:
    # JSON has no NaN; a non-finite value is stored as NULL rather than refusing the row.
    return [float(x) if math.isfinite(float(x)) else None for x in xs]


def prediction_row(p: PredictionLike) -> dict[str, Any]:
    """One prediction as the JSON object the insert reads."""
    return {
        "symbol": p.symbol,
        "interval": p.interval,
        "open_time": int(p.open_time),
        "ensemble_id": str(p.ensemble_id),
        "version": None if p.version is None else str(p.version),
        "feature_version": int(p.feature_version),
        "horizons": [int(h) for h in p.horizons],
        "predictions": _finite(p.predictions),
        "confidences": _finite(p.confidences),
        "components": {str(k): _finite(v) for k, v in dict(p.components).items()},
        "latency_ms": None if p.latency_ms is None else float(p.latency_ms),
        "produced_at_ms": _epoch_ms(p.produced_at),
    }


async def insert_predictions(
    conn: asyncpg.Connection, predictions: Iterable[PredictionLike], *, timeout: float | None = None
) -> int:
    """Store predictions in one statement (the sink's), idempotently: a row whose key
    (symbol, interval, open_time, ensemble_id) is there already is left as it is. Returns
    how many were new. asyncpg's errors propagate (wrap with ``db_errors``)."""
    rows = [prediction_row(p) for p in predictions]
    if not rows:
        return 0
    tag = await conn.execute(_INSERT, orjson.dumps(rows).decode(), timeout=timeout)
    return int(tag.rsplit(" ", 1)[-1])


class PredictionSink:
    """Bounded, non-blocking writer of predictions (module docstring for the semantics).

    Counters: ``written`` (rows inserted), ``duplicates`` (rows already there),
    ``dropped`` (offered while full, or left unwritten at close), ``failed_batches``
    (write attempts that failed; the batch is retried), ``rejected`` (rows in a batch
    Postgres refused as data, which a retry cannot fix).
    """

    def __init__(
        self,
        db: Database,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        write_timeout: float = 10.0,
        backoff: Backoff | None = None,
        repair_schema: bool = True,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be positive")
        self.db = db
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.write_timeout = write_timeout
        self.backoff = backoff or Backoff(initial=0.05, cap=5.0)
        self.repair_schema = repair_schema
        self.written = 0
        self.duplicates = 0
        self.dropped = 0
        self.failed_batches = 0
        self.rejected = 0
        self._queue: collections.deque[PredictionLike] = collections.deque()
        self._inflight: list[PredictionLike] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- the Kafka side -------------------------------------------------------------

    def offer(self, predictions: Iterable[PredictionLike]) -> int:
        """Queue predictions for writing; returns how many were accepted. Never waits."""
        accepted = 0
        for p in predictions:
            if self._closing or len(self._queue) + len(self._inflight) >= self.max_queue:
                self.dropped += 1
                continue
            self._queue.append(p)
            accepted += 1
        if accepted:
            self._idle.clear()
            self._wake.set()
        return accepted

    @property
    def pending(self) -> int:
        """Rows held in memory, not yet written."""
        return len(self._queue) + len(self._inflight)

    def stats(self) -> dict[str, int]:
        return {
            "written": self.written,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "failed_batches": self.failed_batches,
            "rejected": self.rejected,
            "pending": self.pending,
        }

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="prediction-sink")

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything offered so far is written; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Stop taking rows, write what is held for up to ``timeout`` s, count the rest dropped."""
        self._closing = True
        if self._task is None:
            self.dropped += self.pending
            self._queue.clear()
            return
        await self.flush(timeout)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        left = self.pending
        if left:
            log.warning("prediction sink closed with %d rows unwritten", left)
            self.dropped += left
            self._queue.clear()
            self._inflight = []

    # -- the writer -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(self.batch_size, len(self._queue))
            self._inflight = [self._queue.popleft() for _ in range(n)]
            await self._write_until_done(self._inflight)
            self._inflight = []

    async def _write_until_done(self, batch: list[PredictionLike]) -> None:
        rows = []
        for p in batch:
            try:
                rows.append(prediction_row(p))
            except (TypeError, ValueError, AttributeError) as exc:
                self.rejected += 1
                log.error("prediction not storable (%s): %r", exc, p)
        if rows:
            await self._write_until_done_rows(rows)

    async def _write_until_done_rows(self, rows: list[dict[str, Any]]) -> None:
        payload = orjson.dumps(rows).decode()
        while True:
            try:
                async with self.db.acquire() as conn:
                    try:
                        tag = await conn.execute(_INSERT, payload, timeout=self.write_timeout)
                    except TRANSIENT_ERRORS:
                        # Do not hand a connection in an unknown state back to the pool.
                        conn.terminate()
                        raise
            except asyncpg.UndefinedTableError:
                self.failed_batches += 1
                log.error("predictions table is missing; recreating it with the migrations")
                if self.repair_schema:
                    with contextlib.suppress(
                        DatabaseError, asyncpg.PostgresError, *TRANSIENT_ERRORS
                    ):
                        async with self.db.acquire() as conn:
                            await migrate(conn, repair=True)
                await self.backoff.sleep()
                continue
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                # Some row is refused as data: a retry cannot help. Write the rows one by
                # one so only the bad ones are lost, and keep the sink moving.
                self.failed_batches += 1
                log.error("predictions batch of %d refused (%s); row by row", len(rows), exc)
                if len(rows) == 1:
                    self.rejected += 1
                    return
                for row in rows:
                    await self._write_until_done_rows([row])
                return
            except Exception as exc:
                # Lost connection, server error, or anything unforeseen: the writer must
                # outlive it (it holds the rows), so retry after a pause whatever it was.
                self.failed_batches += 1
                delay = self.backoff.next_delay()
                log.warning(
                    "predictions batch of %d not written (%s: %s); retry in %.2f s, %d held",
                    len(rows),
                    type(exc).__name__,
                    exc,
                    delay,
                    self.pending,
                )
                await asyncio.sleep(delay)
                continue
            inserted = int(tag.rsplit(" ", 1)[-1])
            self.written += inserted
            self.duplicates += len(rows) - inserted
            self.backoff.reset()
            return

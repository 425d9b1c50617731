"""``stream-infer run --source postgres``: predictions from the ``candles`` table, no Kafka.

One process per source name (a session-level advisory lock on its own connection; a
killed process's lock goes with its connection). That connection LISTENs on
``stream_infer_candles`` (the insert trigger of migration 2 notifies once per inserting
statement) and the loop also polls every ``poll_s``, so a lost notification costs at
most one poll. Each round, on that connection:

1. the streams and their newest open_time (a loose index scan of the primary key);
2. for each stream with candles after its cursor (the last candle this source processed,
   ``candle_cursors``): rebuild its feature state from the candles up to the cursor when
   the process does not hold it (after a start, a failure, or a longer ``seq_len``), then
   read what follows, at most ``max_candles`` in the round;
3. check every row (``_read.checked``: bad rows are logged with their reason, counted,
   and never reach a feature stream), then ``Pipeline.process``, the pure core the Kafka
   service runs, on the rest;
4. publish the predictions to the predictions topic when a broker is configured (and
   wait for the acknowledgements), then store them and move the cursors in **one
   transaction**.

So a crash loses nothing and predicts nothing twice: the predictions of a candle and the
cursor past it are committed together, and a restart resumes after the cursor with state
rebuilt from the table. The topic copy is at-least-once (published before the commit),
like the Kafka service's output. A stream first met after the source's first start
begins at its first candle; at the first start, ``start`` says whether the candles
already in the table are history (``latest``) or to be predicted (``earliest``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from stream_infer._errors import DatabaseError, ModelError, StreamInferError
from stream_infer.candles import Candle, interval_to_ms
from stream_infer.config import PostgresSourceSettings
from stream_infer.db import CANDLES_CHANNEL, TRANSIENT_ERRORS, Backoff, Database, insert_predictions
from stream_infer.events import Prediction, encode_candle
from stream_infer.pgsource import _read
from stream_infer.pgsource._infer import history_need_of
from stream_infer.pgsource._read import Rejected, StreamKey
from stream_infer.pipeline import EnsembleLike, Inbound, Pipeline

if TYPE_CHECKING:
    from stream_infer.reload import BatchGate

__all__ = ["SOURCE_LOCK", "PostgresSource", "SourceStats"]

log = logging.getLogger("stream_infer.pgsource")

# pg_try_advisory_lock(SOURCE_LOCK, hashtext(name)): one process per source name ("si" + 3).
SOURCE_LOCK = 0x73690003

# An open_time before every candle: a stream without a cursor is read from its start.
_BEFORE_ALL = -(1 << 62)

_LOST = (DatabaseError, asyncpg.PostgresError, *TRANSIENT_ERRORS)

_UPSERT_CURSORS = """
INSERT INTO candle_cursors (source, symbol, interval, open_time)
SELECT $1, s, i, t FROM unnest($2::text[], $3::text[], $4::bigint[]) AS u(s, i, t)
ON CONFLICT (source, symbol, interval) DO UPDATE
    SET open_time = GREATEST(candle_cursors.open_time, EXCLUDED.open_time), updated_at = now()
"""

Publish = Callable[[Sequence[Prediction]], Awaitable[None]]
"""Sends predictions to the predictions topic and returns once the broker has them all."""


@dataclass
class SourceStats:
    """Counters since the start (the summary line logs them)."""

    rounds: int = 0
    candles: int = 0  # checked candles handed to the pipeline
    predictions: int = 0  # rows new in ``predictions``
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    rebuilt_streams: int = 0
    history_candles: int = 0
    notifications: int = 0
    reconnects: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class PostgresSource:
    """Predicts every new closed candle of the ``candles`` table (the module docstring has
    the round and its guarantees); ``run()`` until ``request_stop()``.

    ``ensemble``: returns the ensemble to serve now, read between rounds (the hot-reload
    seam, ``EnsembleRuntime.provider``); without it the pipeline's own serves. ``gate``:
    held around each round's pipeline call (``manager.gate``), so a reload's load steps go
    between rounds. ``publish``: also send each round's predictions to a topic.
    """

    def __init__(
        self,
        db: Database,
        pipeline: Pipeline,
        settings: PostgresSourceSettings | None = None,
        *,
        ensemble: Callable[[], EnsembleLike | None] | None = None,
        gate: BatchGate | None = None,
        publish: Publish | None = None,
        listen: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        backoff: Backoff | None = None,
    ) -> None:
        self.db = db
        self.pipeline = pipeline
        self.settings = settings or PostgresSourceSettings()
        self.stats = SourceStats()
        self._provider = ensemble
        self._gate = gate
        self._publish = publish
        self._listen = listen
        self._clock = clock
        self._backoff = backoff or Backoff(initial=0.1, cap=5.0)
        self._conn: asyncpg.Connection | None = None
        self._connected = False  # once: a later connect is a reconnect
        self._cursors: dict[StreamKey, int] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.locked = asyncio.Event()  # set while this process holds the source's lock

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def cursors(self) -> Mapping[StreamKey, int]:
        """The last candle processed per stream, as committed."""
        return dict(self._cursors)

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> SourceStats:
        """Until ``request_stop``: connect (and wait for the lock), then rounds; a lost
        connection or a failed round is logged, and the loop reconnects and resumes from
        the cursors with capped backoff."""
        started = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    if self._conn is None or self._conn.is_closed():
                        await self._connect()
                        if self._conn is None:
                            continue  # stopped while waiting for the lock
                    more = await self._round()
                    self._backoff.reset()
                except (*_LOST, StreamInferError) as exc:
                    await self._failed(exc)
                    continue
                if not more:
                    await self._idle()
        finally:
            await self._disconnect()
            s = self.stats
            log.info(
                "postgres source %s stopped after %.1f s: %d rounds, %d candles, %d predictions, "
                "%d rejected%s, %d streams rebuilt from %d candles, %d failures",
                self.name,
                time.monotonic() - started,
                s.rounds,
                s.candles,
                s.predictions,
                s.rejected,
                f" {s.rejected_reasons}" if s.rejected_reasons else "",
                s.rebuilt_streams,
                s.history_candles,
                s.failures,
            )
        return self.stats

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.poll_s):
                await self._wake.wait()
        self._wake.clear()

    async def _failed(self, exc: BaseException) -> None:
        self.stats.failures += 1
        # The feature state may be ahead of the committed cursors: rebuild it from them.
        self.pipeline.drop_partitions([0])
        delay = self._backoff.next_delay()
        log.warning(
            "postgres source %s: round failed (%s: %s); resuming from the cursors in %.2f s",
            self.name,
            type(exc).__name__,
            exc,
            delay,
        )
        if self._conn is not None and not isinstance(exc, ModelError):
            await self._disconnect()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    async def _connect(self) -> None:
        conn = await self.db.connect()
        try:
            while not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))", SOURCE_LOCK, self.name
            ):
                log.warning(
                    "postgres source %s: another process holds this source; waiting", self.name
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.poll_s):
                        await self._stop.wait()
                if self._stop.is_set():
                    await conn.close()
                    return
            if self._listen:
                await conn.add_listener(CANDLES_CHANNEL, self._notified)
            await self._register(conn)
        except BaseException:
            conn.terminate()
            raise
        if self._connected:
            self.stats.reconnects += 1
        self._connected = True
        self._conn = conn
        self.pipeline.drop_partitions([0])  # rebuilt from the cursors just read
        self.locked.set()
        log.info(
            "postgres source %s: holding the source, %d stream cursors, listening on %s",
            self.name,
            len(self._cursors),
            CANDLES_CHANNEL if self._listen else "(nothing: polling only)",
        )

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        self.locked.clear()
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5.0)
            except (*TRANSIENT_ERRORS, asyncpg.PostgresError):
                conn.terminate()

    def _notified(self, *_: object) -> None:
        self.stats.notifications += 1
        self._wake.set()

    async def _register(self, conn: asyncpg.Connection) -> None:
        """The first start of a name records it (and, with ``start=latest``, a cursor at the
        newest candle of every stream there is); every start reads the cursors."""
        start = self.settings.start
        async with conn.transaction():
            made = await conn.fetchval(
                "INSERT INTO candle_sources (name, start) VALUES ($1, $2) "
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                self.name,
                start,
            )
            if made is not None and start == "latest":
                newest = await _read.newest(conn, None)
                await self._upsert(conn, newest)
                log.info(
                    "postgres source %s: first start; %d streams start after their newest "
                    "candle (PG_SOURCE_START=latest)",
                    self.name,
                    len(newest),
                )
            elif made is None:
                was = await conn.fetchval(
                    "SELECT start FROM candle_sources WHERE name = $1", self.name
                )
                if was != start:
                    log.info(
                        "postgres source %s was first started with start=%s; its cursors "
                        "decide now (start=%s applies to a new name only)",
                        self.name,
                        was,
                        start,
                    )
            records = await conn.fetch(
                "SELECT symbol, interval, open_time FROM candle_cursors WHERE source = $1",
                self.name,
            )
        self._cursors = {(r["symbol"], r["interval"]): int(r["open_time"]) for r in records}

    async def _upsert(self, conn: asyncpg.Connection, cursors: Mapping[StreamKey, int]) -> None:
        if cursors:
            keys = list(cursors)
            await conn.execute(
                _UPSERT_CURSORS,
                self.name,
                [k[0] for k in keys],
                [k[1] for k in keys],
                [int(cursors[k]) for k in keys],
            )

    # -- one round ----------------------------------------------------------------------

    async def _round(self) -> bool:
        """Process what is new; True when more is waiting (the next round starts at once)."""
        conn = self._conn
        assert conn is not None
        self.stats.rounds += 1
        if self._provider is not None:
            self.pipeline.swap(self._provider())  # between rounds, never inside one
        newest = await _read.newest(conn, None)
        todo = {k: n for k, n in newest.items() if n > self._cursors.get(k, _BEFORE_ALL)}
        if not todo:
            return False
        await self._rebuild(conn, todo)
        limit = max(1, self.settings.max_candles // len(todo))
        got = await _read.after(
            conn,
            {k: (n + 1, self._cursors.get(k, _BEFORE_ALL), n) for k, n in todo.items()},
            limit,
        )
        batch: list[Inbound] = []
        moved: dict[StreamKey, int] = {}
        more = False
        for key, read in got.items():
            rows = read.rows
            more = more or read.more
            if not rows:
                continue  # deleted since the first read of this round
            moved[key] = int(rows[-1]["open_time"])
            state = self.pipeline.stream_state(*key)
            previous = None if state is None else state.last_open_time
            valid, bad = _read.checked(rows, interval_to_ms(key[1]), previous=previous)
            self._report(bad)
            now = self._clock()
            batch += [
                Inbound(encode_candle(c), 0, i, now, topic="candles")
                for i, c in enumerate(valid, start=len(batch))
            ]
        if not moved:
            return more
        predictions = await self._gated(batch)
        if predictions and self._publish is not None:
            await self._publish(predictions)
        async with conn.transaction():
            written = await insert_predictions(conn, predictions)
            await self._upsert(conn, moved)
        self._cursors.update(moved)
        self.stats.candles += len(batch)
        self.stats.predictions += written
        if written != len(predictions):
            log.warning(
                "postgres source %s: %d of %d predictions were in the table already",
                self.name,
                len(predictions) - written,
                len(predictions),
            )
        return more

    async def _rebuild(self, conn: asyncpg.Connection, todo: Mapping[StreamKey, int]) -> None:
        """Feature state for the streams with a cursor that this process does not hold (or
        holds with fewer rows than the model now needs): their candles up to the cursor,
        from the cursor back as far as readiness needs."""
        need = history_need_of(self.pipeline)
        keep = self.pipeline.keep_rows
        plans: dict[StreamKey, tuple[int, int]] = {}
        for key in todo:
            cursor = self._cursors.get(key)
            state = self.pipeline.stream_state(*key)
            if cursor is None or (state is not None and state.keep_rows >= keep):
                continue
            iv = interval_to_ms(key[1])
            plans[key] = (_read.window_start(cursor, need, iv), cursor)
        if not plans:
            return
        history: list[Candle] = []
        for key, (rows, anchor) in (await _read.windows(conn, plans)).items():
            valid, _ = _read.window_candles(rows, anchor, plans[key][0], interval_to_ms(key[1]))
            history += valid  # refused rows were reported when they were new
        counts = self.pipeline.warm(history, partition=0)
        self.stats.rebuilt_streams += len(plans)
        self.stats.history_candles += counts.candles
        log.info(
            "postgres source %s: rebuilt %d streams from %d candles up to their cursors",
            self.name,
            len(plans),
            counts.candles,
        )

    def _process(self, batch: list[Inbound]) -> list[Prediction]:
        if not batch:
            return []
        result = self.pipeline.process(batch)
        for d in result.dead_letters:  # checked already: the rules must agree
            log.error("postgres source %s: a checked candle was refused: %s", self.name, d.error)
        return result.predictions

    async def _gated(self, batch: list[Inbound]) -> list[Prediction]:
        if self._gate is None:
            return self._process(batch)
        async with self._gate.batch():
            return self._process(batch)

    def _report(self, bad: list[Rejected]) -> None:
        for r in bad:
            self.stats.rejected += 1
            self.stats.rejected_reasons[r.reason] = self.stats.rejected_reasons.get(r.reason, 0) + 1
            log.warning("postgres source %s: %s", self.name, r)

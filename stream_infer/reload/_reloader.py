"""Hot reload in the background: LISTEN for ``activate``'s NOTIFY, poll as a fallback.

One dedicated connection both LISTENs and polls, so a poll that fails also tells us the
LISTEN is gone: the connection is dropped, re-opened with capped backoff, LISTEN is sent
again, and the active row is read at once (a NOTIFY sent while we were away is lost).
Meanwhile the current ensemble keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from stream_infer._errors import DatabaseError
from stream_infer.db import CHANNEL, TRANSIENT_ERRORS, Backoff, Database
from stream_infer.reload._manager import Loader, ModelManager, check_hot_reload

__all__ = ["Reloader"]

log = logging.getLogger(__name__)

_LOST = (DatabaseError, asyncpg.PostgresError, *TRANSIENT_ERRORS)


class Reloader:
    """Keeps ``manager`` on the active ``active_ensembles`` row (see the module docstring).

    ``listen=False`` turns notifications off (polling only, every ``poll_s`` seconds).
    Counters are the manager's (``reloads_ok``, ``reloads_failed``); ``reconnects``
    counts re-opened connections; ``last_latency_s`` is NOTIFY received -> swap done.
    """

    def __init__(
        self,
        db: Database,
        manager: ModelManager,
        *,
        loader: Loader | None = None,
        poll_s: float = 5.0,
        listen: bool = True,
        channel: str = CHANNEL,
        backoff: Backoff | None = None,
        read_timeout: float = 10.0,
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be positive")
        self.db = db
        self.manager = manager
        if loader is not None:
            manager._loader = loader
        self.poll_s = poll_s
        self.listen = listen
        self.channel = channel
        self.backoff = backoff or Backoff(initial=0.1, cap=10.0)
        self.read_timeout = read_timeout
        self.reconnects = 0
        self.notifications = 0
        self.last_latency_s: float | None = None
        self.connected = asyncio.Event()
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._notified_at: float | None = None
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def reloads_ok(self) -> int:
        return self.manager.reloads_ok

    @property
    def reloads_failed(self) -> int:
        return self.manager.reloads_failed

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="ensemble-reloader")

    async def stop(self) -> None:
        # The flag, not only the cancel: a cancel that lands as a wait completes can be
        # swallowed (asyncio.wait_for on 3.11), and the loop would then run on forever.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def __aenter__(self) -> Reloader:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- connection -------------------------------------------------------------------

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        if self._notified_at is None:
            self._notified_at = time.monotonic()
        self._wake.set()

    def _on_terminate(self, conn: Any) -> None:
        self._lost.set()
        self._wake.set()

    async def _open(self) -> asyncpg.Connection:
        conn = await self.db.connect()
        try:
            conn.add_termination_listener(self._on_terminate)
            if self.listen:
                await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is not None and not conn.is_closed():
            # A dead peer would make a polite close wait; terminate does not.
            conn.terminate()

    # -- loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        first = True
        while not self._stopping:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._lost.clear()
                    self._conn = await self._open()
                    if not first:
                        self.reconnects += 1
                        log.info("reloader reconnected to %s", self.db.dsn)
                    first = False
                    self.connected.set()
                    self.backoff.reset()
                self._wake.clear()
                notified_at = self._notified_at
                self._notified_at = None
                swapped = await check_hot_reload(
                    self._conn, self.manager, read_timeout=self.read_timeout
                )
                swapped_at = self.manager.swapped_at
                if swapped and notified_at is not None and swapped_at is not None:
                    self.last_latency_s = swapped_at - notified_at
                    log.info("reload %.0f ms after NOTIFY", 1e3 * self.last_latency_s)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                if self._lost.is_set():
                    raise DatabaseError("reloader connection lost")
            except Exception as exc:
                # Lost connection, or anything unforeseen: the reloader must outlive it.
                await self._drop()
                delay = self.backoff.next_delay()
                log.warning(
                    "reloader: Postgres unavailable (%s: %s); current ensemble keeps serving, "
                    "retry in %.2f s",
                    type(exc).__name__,
                    exc,
                    delay,
                    exc_info=not isinstance(exc, _LOST),
                )
                await asyncio.sleep(delay)

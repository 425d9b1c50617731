"""Connections to Postgres: a lazily created pool, single connections for LISTEN, backoff.

Nothing here logs the password: it is passed to asyncpg separately from the DSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg

from stream_infer._errors import DatabaseError
from stream_infer.config import DatabaseSettings

__all__ = ["TRANSIENT_ERRORS", "Backoff", "Database", "db_errors"]

log = logging.getLogger(__name__)

# What a lost or refused connection looks like from asyncpg: the caller keeps going and retries.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    # Raised when the server kills a connection in the middle of a pipelined command
    # (seen on a real restart): the connection is unusable, nothing more.
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


class Backoff:
    """Capped exponential backoff with jitter: ``initial * factor**n``, never above ``cap``."""

    def __init__(
        self, initial: float = 0.05, cap: float = 5.0, factor: float = 2.0, jitter: float = 0.2
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("backoff: need 0 < initial <= cap, factor >= 1, 0 <= jitter < 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.attempts = 0

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        # Jitter spreads reconnects of many processes after one server restart.
        return base * (1 - self.jitter * random.random())

    async def sleep(self) -> float:
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        self.attempts = 0


@contextlib.contextmanager
def db_errors(what: str) -> Iterator[None]:
    """Turn asyncpg and socket errors into ``DatabaseError`` naming what was being done."""
    try:
        yield
    except DatabaseError:
        raise
    except (asyncpg.PostgresError, *TRANSIENT_ERRORS) as exc:
        raise DatabaseError(f"{what}: {type(exc).__name__}: {exc}") from exc


class Database:
    """One Postgres database: a small pool (created on first use) and raw connections.

    ``Database(settings)`` does not connect; the first ``acquire`` does. The pool keeps no
    idle minimum, so creating it never fails when the server is down: each ``acquire``
    then raises and the caller decides whether to retry.
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        max_size: int = 4,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 30.0,
    ) -> None:
        if not settings.enabled:
            raise DatabaseError("no database configured (DB_HOST is unset)")
        self.settings = settings
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"Database({self.settings.dsn()})"

    @property
    def dsn(self) -> str:
        """The connection string without the password (safe to log)."""
        return self.settings.dsn()

    def _connect_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {
            "host": s.host,
            "port": s.port,
            "database": s.name,
            "user": s.user,
            "timeout": self.connect_timeout,
            "command_timeout": self.command_timeout,
            "ssl": s.sslmode,
        }
        if s.password is not None:
            kwargs["password"] = s.password.get_secret_value()
        return kwargs

    async def connect(self) -> asyncpg.Connection:
        """A new connection of its own (for LISTEN, or an admin task); the caller closes it."""
        with db_errors(f"connect to {self.dsn}"):
            conn: asyncpg.Connection = await asyncpg.connect(**self._connect_kwargs())
            return conn

    async def pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None or self._pool.is_closing():
                kwargs = self._connect_kwargs()
                self._pool = await asyncpg.create_pool(
                    min_size=0,
                    max_size=self.max_size,
                    # A connection idle this long is closed, so a restarted server is met fresh.
                    max_inactive_connection_lifetime=60.0,
                    **kwargs,
                )
            return self._pool

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection. Errors are asyncpg's; wrap with ``db_errors`` where needed."""
        pool = await self.pool()
        async with pool.acquire(timeout=self.connect_timeout) as conn:
            yield conn

    async def wait_ready(self, timeout: float, backoff: Backoff | None = None) -> None:
        """Retry ``SELECT 1`` with backoff until it answers or ``timeout`` seconds pass."""
        backoff = backoff or Backoff()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                async with self.acquire() as conn:
                    await conn.fetchval("SELECT 1")
                return
            except TRANSIENT_ERRORS as exc:
                delay = backoff.next_delay()
                if loop.time() + delay > deadline:
                    raise DatabaseError(f"database not ready after {timeout:g} s: {exc}") from exc
                await asyncio.sleep(delay)

    async def close(self) -> None:
        async with self._pool_lock:
            if self._pool is not None:
                pool, self._pool = self._pool, None
                try:
                    await asyncio.wait_for(pool.close(), timeout=5.0)
                except TRANSIENT_ERRORS:
                    pool.terminate()

"""Postgres fixtures (owned by the database work; see tests/db).

Every test that asks for ``pg_settings`` gets a fresh, empty database, dropped afterwards.
The server: the one on PG_TEST_HOST:PG_TEST_PORT (default 127.0.0.1:5432, user postgres,
trust auth) when it answers; else the test setup starts a private PostgreSQL cluster for
the session (``tests.pg_cluster``: initdb + pg_ctl on a free port, removed at exit).
Where neither works these tests skip, which CI turns into a failure.
``pg_proxy`` (a ``tests.tcp_proxy.TcpProxy``) sits between a client and the server so a
test can cut the connection and restore it without touching the server other tests share.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import pytest

from stream_infer.config import DatabaseSettings
from stream_infer.db import Database, migrate
from tests.pg_cluster import start_cluster
from tests.tcp_proxy import TcpProxy

PG_HOST = os.environ.get("PG_TEST_HOST", "127.0.0.1")
PG_USER = os.environ.get("PG_TEST_USER", "postgres")


@dataclass
class _Server:
    port: int = int(os.environ.get("PG_TEST_PORT", "5432"))
    error: str | None = None
    resolved: bool = False


_SERVER = _Server()


def pg_port() -> int:
    """The session server's port (``pg_server`` resolves it; then constant)."""
    _resolve()
    return _SERVER.port


async def _admin(port: int | None = None) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        host=PG_HOST,
        port=_SERVER.port if port is None else port,
        user=PG_USER,
        database="postgres",
        timeout=3,
    )
    return conn


def _probe(port: int) -> str | None:
    async def probe() -> None:
        conn = await _admin(port)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"Postgres at {PG_HOST}:{port} not reachable: {exc}"
    return None


def _resolve() -> None:
    """Find the server once per process: the configured one, else a private cluster."""
    if _SERVER.resolved:
        return
    _SERVER.resolved = True
    error = _probe(_SERVER.port)
    if error is None or "PG_TEST_PORT" in os.environ or PG_HOST != "127.0.0.1":
        _SERVER.error = error
        return
    try:
        cluster = start_cluster()
    except (OSError, subprocess.SubprocessError) as exc:
        _SERVER.error = f"{error}; and no private cluster could be started: {exc}"
        return
    atexit.register(cluster.remove)
    _SERVER.port = cluster.port
    _SERVER.error = _probe(cluster.port)


def create_database(prefix: str = "si_pg") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await _admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return name


def drop_database(name: str) -> None:
    async def drop() -> None:
        conn = await _admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


def settings_for(name: str, *, host: str = PG_HOST, port: int | None = None) -> DatabaseSettings:
    port = pg_port() if port is None else port
    return DatabaseSettings(host=host, port=port, name=name, user=PG_USER, sslmode="disable")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """``host:port`` of the session's server; skips (a failure in CI) when there is none."""
    _resolve()
    if _SERVER.error:
        pytest.skip(_SERVER.error)
    return f"{PG_HOST}:{_SERVER.port}"


@pytest.fixture
def pg_settings(pg_server: str) -> Iterator[DatabaseSettings]:
    """A fresh empty database for one test, dropped afterwards."""
    name = create_database()
    try:
        yield settings_for(name)
    finally:
        drop_database(name)


@pytest.fixture
async def pg_db(pg_settings: DatabaseSettings) -> AsyncIterator[Database]:
    """A migrated fresh database behind a ``Database``."""
    db = Database(pg_settings)
    async with db.acquire() as conn:
        await migrate(conn)
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def pg_proxy(pg_server: str) -> Iterator[TcpProxy]:
    """A ``tests.tcp_proxy.TcpProxy`` in front of the server (connect to ``.port``)."""
    with TcpProxy(PG_HOST, pg_port()) as proxy:
        yield proxy

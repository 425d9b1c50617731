"""Postgres fixtures (owned by the database work; see tests/db).

Every test that asks for ``pg_settings`` gets a fresh, empty database on the local server
(127.0.0.1:5432, user postgres, trust auth; PG_TEST_HOST/PG_TEST_PORT override), dropped
afterwards. Without a reachable server these tests skip, which CI turns into a failure.
``pg_proxy`` (a ``tests.tcp_proxy.TcpProxy``) sits between a client and the server so a
test can cut the connection and restore it without touching the server other tests share.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from stream_infer.config import DatabaseSettings
from stream_infer.db import Database, migrate
from tests.tcp_proxy import TcpProxy

PG_HOST = os.environ.get("PG_TEST_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PG_TEST_PORT", "5432"))
PG_USER = os.environ.get("PG_TEST_USER", "postgres")


async def _admin() -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=3
    )
    return conn


def _server_error() -> str | None:
    async def probe() -> None:
        conn = await _admin()
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"Postgres at {PG_HOST}:{PG_PORT} not reachable: {exc}"
    return None


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


def settings_for(name: str, *, host: str = PG_HOST, port: int = PG_PORT) -> DatabaseSettings:
    return DatabaseSettings(host=host, port=port, name=name, user=PG_USER, sslmode="disable")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """Skips (a failure in CI) when the server cannot be reached."""
    error = _server_error()
    if error:
        pytest.skip(error)
    return f"{PG_HOST}:{PG_PORT}"


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
    with TcpProxy(PG_HOST, PG_PORT) as proxy:
        yield proxy

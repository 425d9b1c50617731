"""Migrations against the real server: idempotent, concurrent, the constraints hold."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from stream_infer import DatabaseError
from stream_infer.config import DatabaseSettings
from stream_infer.db import MIGRATIONS, SCHEMA_VERSION, Database, migrate, schema_version

pytestmark = pytest.mark.services


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_migrate_twice_is_idempotent(pg_settings: DatabaseSettings) -> None:
    db = Database(pg_settings)
    try:
        async with db.acquire() as conn:
            assert await schema_version(conn) == 0
            assert await migrate(conn) == [m.version for m in MIGRATIONS] == [1, 2]
            assert await migrate(conn) == []
            assert await schema_version(conn) == SCHEMA_VERSION
            assert await _tables(conn) == {
                "schema_version",
                "active_ensembles",
                "predictions",
                "candles",
                "candle_sources",
                "candle_cursors",
                "candle_changes",
            }
            assert await conn.fetchval("SELECT count(*) FROM schema_version") == len(MIGRATIONS)
            # no TimescaleDB here: candles is a plain table
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
                )
                == 0
            )
            kind = await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = 'candles'")
            assert kind == b"r"
    finally:
        await db.close()


async def test_concurrent_migrate(pg_settings: DatabaseSettings) -> None:
    # Separate connections racing on an empty database: without the advisory lock two
    # CREATE TABLE IF NOT EXISTS can collide in pg_type; with it, one applies, the rest wait.
    conns = [await Database(pg_settings).connect() for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(results) == [[], [], [], [], [], [1, 2]]
        assert await schema_version(conns[0]) == SCHEMA_VERSION
    finally:
        for c in conns:
            await c.close()


async def test_repair_recreates_a_dropped_table(pg_db: Database) -> None:
    async with pg_db.acquire() as conn:
        await conn.execute(
            "INSERT INTO candles VALUES ('X', '1m', 0, 59999, 1, 1, 1, 1, 0, 0, 0, 0, 0, NULL)"
        )
        await conn.execute("DROP TABLE predictions")
        with pytest.raises(DatabaseError, match=r"predictions is missing.*--repair"):
            await migrate(conn)  # a plain migrate does not guess, it says what to do
        assert await migrate(conn, repair=True) == []
        assert "predictions" in await _tables(conn)
        assert await conn.fetchval("SELECT count(*) FROM candles") == 1  # rows kept


async def test_at_most_one_active_row(pg_db: Database) -> None:
    insert = """INSERT INTO active_ensembles (version, mamba_path, lgbm_models_dir,
        norm_params_path, mamba_weight, horizons, seq_len, feature_version, is_active)
        VALUES ($1, '/m/mamba.pt', '/m', '/m/n.json', 0.5, '{1,5,15}', 64, 1, $2)"""
    async with pg_db.acquire() as conn:
        await conn.execute(insert, "a", True)
        await conn.execute(insert, "b", False)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert, "c", True)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert.replace("0.5", "1.5"), "d", False)
        assert await conn.fetchval("SELECT count(*) FROM active_ensembles WHERE is_active") == 1


async def test_migrate_is_one_transaction(pg_settings: DatabaseSettings) -> None:
    db = Database(pg_settings)
    try:
        async with db.acquire() as conn:
            # A table in the way with the wrong shape makes migration 1 fail part-way...
            await conn.execute("CREATE TABLE candles (x int)")
            with pytest.raises(DatabaseError, match=r"candles exists but lacks columns"):
                await migrate(conn)
            # ...and nothing of it is left behind.
            assert await _tables(conn) == {"candles"}
    finally:
        await db.close()


def test_migrate_command_creates_then_reports_up_to_date(
    pg_settings: DatabaseSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from stream_infer.cli import app

    for k, v in {
        "DB_HOST": pg_settings.host,
        "DB_PORT": str(pg_settings.port),
        "DB_NAME": pg_settings.name,
        "DB_USER": pg_settings.user,
        "DB_SSLMODE": "disable",
    }.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    first = runner.invoke(app, ["db", "migrate"])
    assert first.exit_code == 0, first.output
    assert f"schema version {SCHEMA_VERSION}; applied: 1, 2" in first.output
    second = runner.invoke(app, ["db", "migrate"])
    assert second.exit_code == 0, second.output
    assert "applied: none (up to date)" in second.output
    monkeypatch.setenv("DB_PORT", "1")  # nothing listens there: a DatabaseError (main()
    down = runner.invoke(app, ["db", "migrate"])  # prints it as one line), exit code 1
    assert down.exit_code == 1 and isinstance(down.exception, DatabaseError), down.output


async def test_an_insert_into_candles_notifies_once_per_statement(pg_db: Database) -> None:
    from stream_infer.candles import read_klines
    from stream_infer.db import CANDLES_CHANNEL, load_candles
    from tests.conftest import DATA

    frame = read_klines(DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz").head(500)
    got: list[str] = []
    listener = await pg_db.connect()
    try:
        await listener.add_listener(CANDLES_CHANNEL, lambda *a: got.append(a[-1]))
        async with pg_db.acquire() as conn:
            await load_candles(conn, frame)  # 500 rows in one INSERT ... SELECT
            await conn.execute(
                "INSERT INTO candles VALUES ('X', '1m', 0, 59999, 1, 1, 1, 1, 0, 0, 0, 0, 0, NULL)"
            )
        for _ in range(100):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # a notification per row would have arrived by now
    finally:
        await listener.close()
    assert got == ["", ""]


async def test_candle_changes_counts_the_statements_that_change_rows_behind(
    pg_db: Database,
) -> None:
    from stream_infer.candles import read_klines
    from stream_infer.db import load_candles
    from tests.conftest import DATA

    frame = read_klines(DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz").head(200)
    eth = frame.copy()
    eth["symbol"] = "ETHUSDT"

    async def n(conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT n FROM candle_changes"))

    async def copy(conn: asyncpg.Connection, rows: Any) -> None:
        from stream_infer.candles import CANDLE_COLUMNS

        records = [
            tuple(None if c == "spread_bps" else r[c] for c in CANDLE_COLUMNS)
            for r in rows.to_dict("records")
        ]
        await conn.copy_records_to_table("candles", records=records, columns=list(CANDLE_COLUMNS))

    async with pg_db.acquire() as conn:
        assert await n(conn) == 0
        await load_candles(conn, frame.iloc[:100])
        await load_candles(conn, frame.iloc[100:110])  # in order: the stream's new candles
        await load_candles(conn, eth.iloc[:50])  # another stream's first ones
        assert await n(conn) == 0
        t = [int(x) for x in frame["open_time"]]
        await conn.execute("DELETE FROM candles WHERE symbol = 'BTCUSDT' AND open_time = $1", t[50])
        assert await n(conn) == 1
        await load_candles(conn, frame.iloc[[50]])  # a backfill behind the newest
        assert await n(conn) == 2
        await load_candles(conn, frame.iloc[:110])  # a repeat load: every row is behind
        assert await n(conn) == 3  # one statement, one count
        await conn.execute("UPDATE candles SET volume = volume WHERE open_time = $1", t[5])
        assert await n(conn) == 4
        async with conn.transaction():  # behind, then in order: the flag is the statement's
            await conn.execute("DELETE FROM candles WHERE open_time = $1", t[7])  # + 1
            await copy(conn, frame.iloc[[7]])  # + 1
            await copy(conn, frame.iloc[110:120])
        assert await n(conn) == 6
        await load_candles(conn, frame.iloc[120:130])
        assert await n(conn) == 6
        await conn.execute("TRUNCATE candles")
        assert await n(conn) == 7

"""Candle history: load klines into Postgres and read warm-up windows back."""

from __future__ import annotations

from typing import Any, cast

import pytest

from stream_infer import DatabaseError
from stream_infer.candles import read_klines
from stream_infer.config import DatabaseSettings
from stream_infer.db import Database, PostgresHistory, load_candles, load_klines_files
from stream_infer.kafka import free_port
from stream_infer.pipeline import ready_candles
from tests.conftest import DATA

NEED = ready_candles(64)  # candles asked per stream: warm-up, then a 64-row window

pytestmark = pytest.mark.services

BTC = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"


async def test_load_twice_and_fetch(pg_db: Database) -> None:
    assert await load_klines_files(pg_db, [BTC]) == {str(BTC): 5738}
    assert await load_klines_files(pg_db, [BTC]) == {str(BTC): 0}
    frame = read_klines(BTC)
    history = PostgresHistory(pg_db)
    last = int(frame["open_time"].iloc[-1])
    assert await history.latest_open_time("BTCUSDT", "1m") == last
    assert await history.latest_open_time("BTCUSDT", "5m") is None

    before = int(frame["open_time"].iloc[1000])
    got = await history.fetch("BTCUSDT", "1m", before, 64)
    assert [c.open_time for c in got] == frame["open_time"].iloc[936:1000].tolist()
    want = frame.iloc[999]
    c = got[-1]
    assert (c.symbol, c.interval, c.close_time, c.trades) == (
        "BTCUSDT",
        "1m",
        int(want["close_time"]),
        int(want["trades"]),
    )
    for f in ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base"):
        assert getattr(c, f) == float(want[f]), f  # float64 round trip is exact
    assert c.spread_bps is None

    assert len(await history.fetch("BTCUSDT", "1m", None, 10_000)) == 5738
    assert [x.open_time for x in await history.fetch("BTCUSDT", "1m", None, 2)] == frame[
        "open_time"
    ].iloc[-2:].tolist()
    assert await history.fetch("BTCUSDT", "1m", int(frame["open_time"].iloc[0]), 5) == []
    assert await history.fetch("NOPE", "1m", None, 5) == []
    assert await history.fetch("BTCUSDT", "1m", None, 0) == []


async def test_spread_kept(pg_db: Database) -> None:
    frame = read_klines(BTC).head(3).copy()
    frame["spread_bps"] = [1.5, float("nan"), 0.0]
    async with pg_db.acquire() as conn:
        assert await load_candles(conn, frame) == 3
    got = await PostgresHistory(pg_db).fetch("BTCUSDT", "1m", None, 3)
    assert [c.spread_bps for c in got] == [1.5, None, 0.0]


async def test_fetch_many_reads_many_streams_each_before_its_own_bound_in_one_query(
    pg_db: Database,
) -> None:
    frame = read_klines(BTC)
    other = frame.copy()
    other["symbol"] = "ETHUSDT"
    async with pg_db.acquire() as conn:
        assert await load_candles(conn, frame) == len(frame)
        assert await load_candles(conn, other) == len(frame)
    times = frame["open_time"]
    bounds = {
        ("BTCUSDT", "1m"): int(times.iloc[1000]),
        ("ETHUSDT", "1m"): int(times.iloc[3000]),
        ("ETHUSDT", "5m"): int(times.iloc[3000]),  # no such stream
        ("NOPE", "1m"): int(times.iloc[3000]),
    }
    history = CountingHistory(pg_db)
    got = await history.fetch_many(bounds, NEED)
    assert history.queries == 1, "one round trip for all streams"
    assert set(got) == {("BTCUSDT", "1m"), ("ETHUSDT", "1m")}
    assert [c.open_time for c in got[("BTCUSDT", "1m")]] == times.iloc[537:1000].tolist()
    assert [c.open_time for c in got[("ETHUSDT", "1m")]] == times.iloc[2537:3000].tolist()
    assert {c.symbol for c in got[("ETHUSDT", "1m")]} == {"ETHUSDT"}
    # the same candles, field for field, as the one-stream read
    assert got[("BTCUSDT", "1m")] == await history.fetch(
        "BTCUSDT", "1m", bounds["BTCUSDT", "1m"], NEED
    )
    # fewer rows than asked: all of them; chunked: the same answer in more queries
    few = await history.fetch_many({("BTCUSDT", "1m"): int(times.iloc[10])}, NEED)
    assert [c.open_time for c in few[("BTCUSDT", "1m")]] == times.iloc[:10].tolist()
    chunked = CountingHistory(pg_db, max_streams_per_query=1)
    assert await chunked.fetch_many(bounds, NEED) == got
    assert chunked.queries == len(bounds)
    first = int(times.iloc[0])
    assert await history.fetch_many({("BTCUSDT", "1m"): first}, NEED) == {}
    assert await history.fetch_many(bounds, 0) == {}
    assert await history.fetch_many({}, 10) == {}


async def test_ping_needs_the_candles_table_and_fails_as_a_database_error(
    pg_db: Database, pg_settings: DatabaseSettings
) -> None:
    history = PostgresHistory(pg_db)
    await history.ping()
    assert str(history) == f"Postgres candles at {pg_db.dsn}"
    down = Database(pg_settings.model_copy(update={"port": free_port()}), connect_timeout=1.0)
    try:
        with pytest.raises(DatabaseError, match="candle history"):
            await PostgresHistory(down).ping()
        with pytest.raises(DatabaseError, match="candle history"):
            await PostgresHistory(down).fetch_many({("BTCUSDT", "1m"): 1}, 5)
    finally:
        await down.close()
    async with pg_db.acquire() as conn:
        await conn.execute("DROP TABLE candles")
    with pytest.raises(DatabaseError, match="candles"):
        await history.ping()


class CountingHistory(PostgresHistory):
    """The real reader, counting the connections it takes (one per query here)."""

    def __init__(self, db: Database, **kw: Any) -> None:
        self.queries = 0
        super().__init__(cast(Database, _CountingDatabase(db, self)), **kw)


class _CountingDatabase:
    def __init__(self, db: Database, owner: CountingHistory) -> None:
        self._db = db
        self._owner = owner
        self.dsn = db.dsn

    def acquire(self) -> Any:
        self._owner.queries += 1
        return self._db.acquire()

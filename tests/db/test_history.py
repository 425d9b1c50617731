"""Candle history: load klines into Postgres and read warm-up windows back."""

from __future__ import annotations

import pytest

from stream_infer.candles import read_klines
from stream_infer.db import Database, PostgresHistory, load_candles, load_klines_files
from tests.conftest import DATA

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

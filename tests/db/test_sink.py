"""The predictions sink against the real server: batches, duplicates, drops, outages."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from stream_infer.config import DatabaseSettings
from stream_infer.db import Backoff, Database, PredictionSink
from stream_infer.events import Prediction
from tests.fixtures_pg import pg_port, settings_for
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.services


def _pred(i: int, ensemble_id: str = "7", symbol: str = "BTCUSDT") -> Prediction:
    p = 0.5 + (i % 7) / 100
    return Prediction(
        symbol=symbol,
        interval="1m",
        open_time=1_672_531_200_000 + 60_000 * i,
        horizons=(1, 5, 15),
        predictions=(p, p, 1 - p),
        confidences=(abs(2 * p - 1),) * 3,
        components={"mamba": (p, p, p), "lgbm": (p, 0.5, float("nan"))},
        ensemble_id=ensemble_id,
        version="v1",
        feature_version=1,
        latency_ms=1.25,
        produced_at=1_700_000_000_123 + i,
    )


async def _count(db: Database) -> int:
    async with db.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM predictions"))


async def test_writes_each_prediction_once(pg_db: Database) -> None:
    sink = PredictionSink(pg_db, batch_size=64)
    sink.start()
    try:
        assert sink.offer(_pred(i) for i in range(300)) == 300
        assert await sink.flush(5)
        assert sink.written == 300 and sink.duplicates == 0
        # redelivery (same keys) lands nowhere new; another ensemble id is another row
        sink.offer([_pred(i) for i in range(10)] + [_pred(0, ensemble_id="8")])
        assert await sink.flush(5)
        assert (sink.written, sink.duplicates) == (301, 10)
        assert await _count(pg_db) == 301
        async with pg_db.acquire() as conn:
            r = await conn.fetchrow(
                "SELECT *, extract(epoch FROM produced_at) * 1000 AS ms FROM predictions "
                "WHERE open_time = $1 AND ensemble_id = '7'",
                _pred(3).open_time,
            )
        assert r is not None
        want = _pred(3)
        assert (r["symbol"], r["interval"], r["version"], r["feature_version"]) == (
            "BTCUSDT",
            "1m",
            "v1",
            1,
        )
        assert list(r["horizons"]) == [1, 5, 15]
        assert list(r["predictions"]) == list(want.predictions)
        assert list(r["confidences"]) == list(want.confidences)
        assert r["latency_ms"] == 1.25
        assert float(r["ms"]) == pytest.approx(want.produced_at, abs=0.01)
        comps = orjson.loads(r["components"])
        assert comps["mamba"] == list(want.components["mamba"])
        assert comps["lgbm"][2] is None  # NaN stored as null
    finally:
        await sink.close()
    assert sink.stats()["pending"] == 0


async def test_offer_never_blocks_and_counts_drops(pg_settings: DatabaseSettings) -> None:
    # A server that does not answer: the port of a closed proxy.
    proxy = TcpProxy("127.0.0.1", pg_port())
    proxy.start()
    proxy.cut()
    db = Database(settings_for(pg_settings.name, port=proxy.port), connect_timeout=1)
    sink = PredictionSink(db, max_queue=100, batch_size=10, backoff=Backoff(0.01, 0.05))
    sink.start()
    try:
        t0 = time.perf_counter()
        accepted = sum(sink.offer([_pred(i)]) for i in range(1000))
        elapsed = time.perf_counter() - t0
        assert accepted == 100 and sink.dropped == 900
        assert elapsed < 0.5, elapsed  # ~µs per offer; nothing waited on the database
        await asyncio.sleep(0.3)
        assert sink.failed_batches >= 1 and sink.written == 0
        assert sink.pending == 100  # held in memory up to the bound
    finally:
        await sink.close(timeout=0.2)
        await db.close()
        proxy.stop()
    assert sink.dropped == 1000  # what close could not write is counted too


async def test_outage_loses_nothing_and_duplicates_nothing(
    pg_db: Database, pg_proxy: TcpProxy
) -> None:
    db = Database(settings_for(pg_db.settings.name, port=pg_proxy.port), connect_timeout=1)
    sink = PredictionSink(db, batch_size=20, backoff=Backoff(0.02, 0.2))
    sink.start()
    n = 0
    try:
        for step in range(60):
            sink.offer([_pred(n + k) for k in range(5)])
            n += 5
            if step == 15:
                pg_proxy.cut()
            if step == 40:
                pg_proxy.restore()
            await asyncio.sleep(0.01)
        assert await sink.flush(10), sink.stats()
    finally:
        await sink.close()
        await db.close()
    assert sink.failed_batches >= 1, sink.stats()
    assert sink.dropped == 0 and sink.rejected == 0
    assert sink.written + sink.duplicates == n
    async with pg_db.acquire() as conn:
        rows = await conn.fetch("SELECT open_time FROM predictions ORDER BY open_time")
    assert [r["open_time"] for r in rows] == [_pred(i).open_time for i in range(n)]


async def test_table_dropped_while_running(pg_db: Database) -> None:
    sink = PredictionSink(pg_db, batch_size=10, backoff=Backoff(0.01, 0.05))
    sink.start()
    try:
        sink.offer(_pred(i) for i in range(10))
        assert await sink.flush(5)
        async with pg_db.acquire() as conn:
            await conn.execute("DROP TABLE predictions")
        sink.offer(_pred(i) for i in range(10, 30))
        assert await sink.flush(5), sink.stats()
        assert sink.failed_batches >= 1
        # recreated by the migrations; the rows written before the drop are gone with it
        assert await _count(pg_db) == 20
    finally:
        await sink.close()


async def test_a_refused_row_costs_only_itself(pg_db: Database) -> None:
    sink = PredictionSink(pg_db, batch_size=50)
    sink.start()
    try:
        bad = _pred(5).model_copy(update={"symbol": "BAD\x00SYM"})  # Postgres text has no NUL
        sink.offer([_pred(i) for i in range(5)] + [bad] + [_pred(i) for i in range(6, 10)])
        assert await sink.flush(5)
        assert (sink.written, sink.rejected) == (9, 1)
        assert await _count(pg_db) == 9
    finally:
        await sink.close()

"""``stream-infer run --source postgres`` against a real Postgres: candles inserted while it
runs are predicted once each, with replay's numbers, through two SIGKILLs; inserts wake it
(NOTIFY), polling covers a lost notification, bad rows are reported and never reach a
stream, one process per source name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from stream_infer.candles import CANDLE_COLUMNS, read_klines
from stream_infer.config import DatabaseSettings, PostgresSourceSettings
from stream_infer.db import Database, load_candles
from stream_infer.pgsource import DUPLICATE, PostgresSource
from stream_infer.pipeline import Pipeline
from tests.conftest import REPO
from tests.pgsource._util import cut, db_env, replay
from tests.pgsource.conftest import MONTHS

pytestmark = pytest.mark.services

NEAR = MONTHS[0]


# -- helpers --------------------------------------------------------------------------


def frames(n: int, sources: Sequence[Path] = MONTHS) -> list[pd.DataFrame]:
    return [read_klines(m).iloc[:n] for m in sources]


async def insert(db: Database, frame: pd.DataFrame) -> None:
    async with db.acquire() as conn:
        await load_candles(conn, frame)


async def feed(db: Database, sources: list[pd.DataFrame], lo: int, hi: int, rate: float) -> None:
    """Rows ``lo..hi-1`` of every frame, minute by minute (one INSERT per minute: all
    symbols' candles of that minute, as a feeder writes them), ``rate`` minutes a second."""
    t0 = time.perf_counter()
    for i, m in enumerate(range(lo, hi)):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await insert(db, pd.concat([f.iloc[m : m + 1] for f in sources]))


async def stored(db: Database) -> dict[tuple[str, int], dict[str, Any]]:
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT symbol, open_time, ensemble_id, version, predictions, components "
            "FROM predictions"
        )
    return {
        (r["symbol"], r["open_time"]): {
            "ensemble_id": r["ensemble_id"],
            "version": r["version"],
            "predictions": list(r["predictions"]),
            "components": orjson.loads(r["components"]),
        }
        for r in rows
    }


async def count(db: Database) -> int:
    async with db.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM predictions"))


async def until(db: Database, n: int, timeout: float, proc: Any = None) -> int:
    deadline = time.monotonic() + timeout
    while (got := await count(db)) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{got} of {n} predictions after {timeout:g} s")
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the source exited with {proc.returncode}")
        await asyncio.sleep(0.02)
    return got


def assert_rows_equal(got: dict[tuple[str, int], dict[str, Any]], want: dict[Any, Any]) -> None:
    assert set(got) == set(want), (
        f"missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}"
    )
    for key, row in got.items():
        p = want[key]
        assert (row["ensemble_id"], row["version"]) == (p.ensemble_id, p.version)
        for a, b in zip(row["predictions"], p.predictions, strict=True):
            assert abs(a - b) <= 1e-6, (key, row["predictions"], p.predictions)
        for name, comp in p.components.items():
            for a, b in zip(row["components"][name], comp, strict=True):
                assert abs(a - b) <= 1e-6, (key, name)


def start_process(
    settings: DatabaseSettings, models_dir: Path, log: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "PG_SOURCE_"))}
    env.update(db_env(settings))
    env.update(
        PG_SOURCE_NAME="kill-test",
        PG_SOURCE_POLL_S="0.2",
        PG_SOURCE_MAX_CANDLES="60",  # many small rounds: a kill lands between commits
    )
    cmd = [sys.executable, "-c", "from stream_infer.cli import main; main()"]
    return subprocess.Popen(
        [*cmd, "run", "--source", "postgres", "--models", str(models_dir)],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


@contextlib.asynccontextmanager
async def running(source: PostgresSource) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(source.run())
    try:
        yield task
    finally:
        source.request_stop()
        await asyncio.wait_for(task, 30)


# -- the service as a process, killed twice ---------------------------------------------


async def registered(db: Database, name: str, timeout: float, proc: Any) -> None:
    """Until the source process holds its lock and has recorded itself (start-up imports
    torch: tens of seconds on a busy machine)."""
    deadline = time.monotonic() + timeout
    while True:
        async with db.acquire() as conn:
            if await conn.fetchval("SELECT 1 FROM candle_sources WHERE name = $1", name):
                return
        assert proc.poll() is None, f"the source exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"the source did not start within {timeout:g} s"
        await asyncio.sleep(0.05)


# Three process start-ups (torch, the models): allow for a machine busy with other jobs.
@pytest.mark.timeout(900)
async def test_sigkilled_twice_every_ready_candle_gets_exactly_one_row_equal_to_replay(
    pg_db: Database, pg_settings: DatabaseSettings, models_dir: Path, ensemble: Any, tmp_path: Path
) -> None:
    preloaded, n = 400, 1000
    sources = frames(n)
    for f in sources:
        await insert(pg_db, f.iloc[:preloaded])
    want = replay([cut(m, tmp_path, range(n), "feed") for m in MONTHS], ensemble)
    first_ready = min(t for _, t in want)
    assert first_ready > int(sources[0]["open_time"].iloc[preloaded - 1])  # all come live
    log = tmp_path / "source.log"
    procs: list[subprocess.Popen[bytes]] = []
    at_kill: list[int] = []
    try:
        procs.append(start_process(pg_settings, models_dir, log))
        await registered(pg_db, "kill-test", 240, procs[-1])  # running: feed it now
        feeding = asyncio.create_task(feed(pg_db, sources, preloaded, n, rate=40))
        for threshold in (30, len(want) // 3):
            await until(pg_db, max(threshold, (at_kill or [0])[-1] + 100), 240, procs[-1])
            procs[-1].send_signal(signal.SIGKILL)
            procs[-1].wait(10)
            at_kill.append(await count(pg_db))
            procs.append(start_process(pg_settings, models_dir, log))
        await feeding
        await until(pg_db, len(want), 240, procs[-1])
        await asyncio.sleep(1.0)  # anything extra would show now
        procs[-1].send_signal(signal.SIGTERM)
        assert procs[-1].wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    text = log.read_text()
    assert 0 < at_kill[0] < at_kill[1] < len(want), (at_kill, len(want))
    assert_rows_equal(await stored(pg_db), want)  # one row each (the key), replay's numbers
    # and nothing predicted twice: a second prediction of a candle would find its row
    assert "were in the table already" not in text, text[-3000:]
    assert text.count("rebuilt 3 streams") >= 2, text[-3000:]  # each restart rebuilt state
    assert "postgres source kill-test stopped" in text  # the SIGTERM summary line
    async with pg_db.acquire() as conn:
        cursors = {
            r["symbol"]: r["open_time"]
            for r in await conn.fetch("SELECT symbol, open_time FROM candle_cursors")
        }
    assert cursors == {str(f["symbol"].iloc[0]): int(f["open_time"].iloc[-1]) for f in sources}


# -- in process --------------------------------------------------------------------------


def source_for(
    db: Database, ensemble: Any, *, listen: bool = True, poll_s: float = 30.0, **kw: Any
) -> PostgresSource:
    settings = PostgresSourceSettings(poll_s=poll_s, **kw)
    return PostgresSource(db, Pipeline(ensemble), settings, listen=listen)


async def test_an_insert_wakes_it_and_bad_rows_never_reach_a_stream(
    pg_db: Database, ensemble: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (near,) = frames(480, [NEAR])
    await insert(pg_db, near.iloc[:450])
    source = source_for(pg_db, ensemble)  # polls every 30 s: only a NOTIFY wakes it in time
    caplog.set_level(logging.WARNING, logger="stream_infer.pgsource")
    async with running(source):
        await asyncio.wait_for(source.locked.wait(), 30)
        assert await count(pg_db) == 0  # start=latest: the table's candles are history
        t0 = time.monotonic()
        await insert(pg_db, near.iloc[450:452])
        await until(pg_db, 2, 10)
        assert time.monotonic() - t0 < 5 and source.stats.notifications >= 1
        spoilt = near.iloc[452:460].copy()
        spoilt.iloc[1, spoilt.columns.get_loc("close")] = float("nan")  # 453
        spoilt.iloc[3, spoilt.columns.get_loc("high")] = spoilt.iloc[3]["low"] * 0.99  # 455
        await insert(pg_db, spoilt)
        await until(pg_db, 2 + 6, 10)
        await insert(pg_db, near.iloc[460:480])
        await until(pg_db, 2 + 6 + 20, 10)
    reasons = source.stats.rejected_reasons
    assert reasons == {"rule:finite": 1, "rule:high_bound": 1}
    lines = [r.getMessage() for r in caplog.records if "candles row" in r.getMessage()]
    t = near["open_time"]
    assert any(f"open_time {t.iloc[453]}: rule:finite" in s for s in lines), lines
    assert any(f"open_time {t.iloc[455]}: rule:high_bound" in s for s in lines), lines
    kept = [i for i in range(480) if i not in (453, 455)]
    want = replay([cut(NEAR, tmp_path, kept, "clean")], ensemble)
    after = {k: p for k, p in want.items() if k[1] >= int(t.iloc[450])}
    assert_rows_equal(await stored(pg_db), after)


async def test_duplicate_open_times_are_refused_where_the_table_allows_them(
    pg_db: Database, ensemble: Any, tmp_path: Path
) -> None:
    (near,) = frames(470, [NEAR])
    await insert(pg_db, near.iloc[:440])
    async with pg_db.acquire() as conn:
        await conn.execute("ALTER TABLE candles DROP CONSTRAINT candles_pkey")
    source = source_for(pg_db, ensemble, poll_s=0.1, listen=False)
    async with running(source):
        await asyncio.wait_for(source.locked.wait(), 30)
        other = near.iloc[[445]].copy()
        other["close"] = other["close"] * 1.002
        # one statement: a round never sees one copy without the other
        rows = pd.concat([near.iloc[440:470], near.iloc[[442]], other])
        async with pg_db.acquire() as conn:
            await conn.copy_records_to_table(
                "candles",
                records=[
                    tuple(
                        None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in r
                    )
                    for r in rows[list(CANDLE_COLUMNS)].itertuples(index=False)
                ],
                columns=list(CANDLE_COLUMNS),
            )
        await until(pg_db, 30 - 1, 15)  # 445's copies differ: it is filled as a gap
    assert source.stats.rejected_reasons == {DUPLICATE: 3}  # 442's copy; both of 445's
    kept = [i for i in range(470) if i != 445]
    want = replay([cut(NEAR, tmp_path, kept, "dedup")], ensemble)
    t440 = int(near["open_time"].iloc[440])
    assert_rows_equal(await stored(pg_db), {k: p for k, p in want.items() if k[1] >= t440})


async def test_start_earliest_predicts_the_history_and_new_streams_start_at_their_first_candle(
    pg_db: Database, ensemble: Any, tmp_path: Path
) -> None:
    near, fil = frames(460, MONTHS[:2])
    await insert(pg_db, near)
    early = source_for(pg_db, ensemble, poll_s=0.1, listen=False, name="early", start="earliest")
    late = source_for(pg_db, ensemble, poll_s=0.1, listen=False, name="late", start="latest")
    want = replay([cut(m, tmp_path, range(460), "h") for m in MONTHS[:2]], ensemble)
    near_want = {k: p for k, p in want.items() if k[0] == "NEARUSDT"}
    async with running(early), running(late):
        await asyncio.wait_for(early.locked.wait(), 30)
        await asyncio.wait_for(late.locked.wait(), 30)
        await until(pg_db, len(near_want), 30)
        await asyncio.sleep(0.5)
        assert_rows_equal(await stored(pg_db), near_want)  # "late" predicted none of them
        await insert(pg_db, fil)  # a stream first met after both started: from its start
        await until(pg_db, len(want), 30)
        # both sources predict FIL; the key leaves one row each
        for s in (early, late):
            deadline = time.monotonic() + 30
            while s.cursors.get(("FILUSDT", "1m")) != int(fil["open_time"].iloc[-1]):
                assert time.monotonic() < deadline, s.cursors
                await asyncio.sleep(0.05)
    assert_rows_equal(await stored(pg_db), want)
    assert early.stats.predictions + late.stats.predictions == len(want)


async def test_polling_alone_and_one_process_per_source_name(
    pg_db: Database, ensemble: Any
) -> None:
    (near,) = frames(440, [NEAR])
    await insert(pg_db, near.iloc[:432])
    first = source_for(pg_db, ensemble, poll_s=0.1, listen=False)
    second = source_for(pg_db, ensemble, poll_s=0.1, listen=False)
    async with running(first):
        await asyncio.wait_for(first.locked.wait(), 30)
        async with running(second):
            await asyncio.sleep(1.0)
            assert not second.locked.is_set()  # the same name: it waits for the lock
            await insert(pg_db, near.iloc[432:440])
            await until(pg_db, 8, 10)  # polling found them (no LISTEN)
            assert first.stats.predictions == 8 and second.stats.rounds == 0
            first.request_stop()
            await asyncio.wait_for(second.locked.wait(), 30)  # released with the connection
    assert second.stats.predictions == 0  # it resumed after first's cursor: nothing to redo


async def test_the_service_wiring_serves_readyz_and_refuses_an_old_schema(
    pg_db: Database, pg_settings: DatabaseSettings, ensemble: Any
) -> None:
    import urllib.request

    from stream_infer import DatabaseError
    from stream_infer.cli._pgsource import serve_postgres
    from stream_infer.config import ServiceSettings
    from stream_infer.kafka import free_port

    port = free_port()
    settings = ServiceSettings(db=pg_settings, metrics_port=port)

    def readyz() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return int(r.status)
        except OSError as exc:
            return int(getattr(exc, "code", 0))

    task = asyncio.create_task(serve_postgres(settings, ensemble, configured=False, bootstrap=None))
    try:
        deadline = time.monotonic() + 30
        while await asyncio.to_thread(readyz) != 200:
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "never ready"
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    async with pg_db.acquire() as conn:
        await conn.execute("DELETE FROM schema_version WHERE version = 2")
    with pytest.raises(DatabaseError, match=r"schema version 1.*stream-infer db migrate"):
        await serve_postgres(settings, ensemble, configured=False, bootstrap=None)


async def test_with_a_broker_the_predictions_also_go_to_the_topic(
    pg_db: Database, ensemble: Any, kafka_topics: Any
) -> None:
    from stream_infer.events import decode_prediction
    from stream_infer.pgsource import TopicPublisher
    from tests.kafka_helpers import read_topic

    s = kafka_topics()
    (near,) = frames(445, [NEAR])
    await insert(pg_db, near.iloc[:430])
    publisher = TopicPublisher(s, s.kafka_bootstrap_servers)
    await publisher.start()
    settings = PostgresSourceSettings(poll_s=0.1)
    source = PostgresSource(pg_db, Pipeline(ensemble), settings, publish=publisher)
    try:
        async with running(source):
            await asyncio.wait_for(source.locked.wait(), 30)
            await insert(pg_db, near.iloc[430:445])
            await until(pg_db, 15, 20)
    finally:
        await publisher.stop()
    records = await read_topic(s.kafka_bootstrap_servers, s.kafka_predictions_topic, expect=15)
    on_topic = [decode_prediction(r.value) for r in records]
    assert [r.key for r in records] == [b"NEARUSDT"] * 15
    table = await stored(pg_db)
    assert {(p.symbol, p.open_time) for p in on_topic} == set(table)
    for p in on_topic:
        assert list(p.predictions) == table[(p.symbol, p.open_time)]["predictions"]


async def test_a_cut_connection_is_resumed_from_the_cursors(
    pg_db: Database,
    pg_settings: DatabaseSettings,
    pg_proxy: Any,
    ensemble: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sources = frames(700, MONTHS[:2])
    for f in sources:
        await insert(pg_db, f.iloc[:420])
    via = Database(pg_settings.model_copy(update={"port": pg_proxy.port}), connect_timeout=1.0)
    settings = PostgresSourceSettings(poll_s=0.05, max_candles=20)
    source = PostgresSource(via, Pipeline(ensemble), settings, listen=False)
    want = replay([cut(m, tmp_path, range(700), "cut") for m in MONTHS[:2]], ensemble)
    caplog.set_level(logging.WARNING, logger="stream_infer.pgsource")
    try:
        async with running(source):
            await asyncio.wait_for(source.locked.wait(), 30)
            feeding = asyncio.create_task(feed(pg_db, sources, 420, 700, rate=100))
            for at in (40, 200):
                await until(pg_db, at, 60)
                pg_proxy.cut()  # mid-stream: a round may be reading or committing
                await asyncio.sleep(0.5)
                pg_proxy.restore()
            await feeding
            await until(pg_db, len(want), 60)
            await asyncio.sleep(0.5)
    finally:
        await via.close()
    assert source.stats.failures >= 2 and source.stats.reconnects >= 2, source.stats
    assert_rows_equal(await stored(pg_db), want)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "were in the table already" in m]

"""A real Postgres restart under a running sink and reloader (slow: ``pytest -m slow``).

The shared server of the session serves other tests at the same time, so this test starts a
private PostgreSQL 15 cluster of its own (initdb in a temporary directory, a free port)
and restarts that one for real (``pg_ctl restart -m fast``: every connection is killed).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_infer.config import DatabaseSettings, ServiceSettings
from stream_infer.db import Backoff, Database, PredictionSink, activate_row, migrate
from stream_infer.reload import Reloader, initialize
from tests.db.test_sink import _pred
from tests.pg_cluster import Cluster, start_cluster
from tests.reload._fakes import FakeLoader, make_model_dir, row_paths

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    try:
        c = start_cluster()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot start a private Postgres cluster: {exc}")
    try:
        yield c
    finally:
        c.remove()


async def test_real_restart(cluster: Cluster, tmp_path: Path) -> None:
    db = Database(
        DatabaseSettings(
            host="127.0.0.1", port=cluster.port, name="postgres", user="postgres", sslmode="disable"
        ),
        connect_timeout=1,
    )
    async with db.acquire() as conn:
        await migrate(conn)
        await activate_row(
            conn,
            version="v1",
            mamba_weight=0.5,
            horizons=(1, 5, 15),
            seq_len=64,
            feature_version=1,
            **row_paths(make_model_dir(tmp_path, "v1")),
        )
    _, manager = await initialize(
        db, None, settings=ServiceSettings(models_root=str(tmp_path)), env={}, loader=FakeLoader()
    )
    reloader = Reloader(db, manager, poll_s=30, backoff=Backoff(0.05, 0.5))
    sink = PredictionSink(db, batch_size=25, backoff=Backoff(0.05, 0.5))
    sink.start()
    n = 0
    async with reloader:
        await asyncio.wait_for(reloader.connected.wait(), 5)

        async def feed(seconds: float) -> None:
            nonlocal n
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sink.offer([_pred(n + k) for k in range(5)])
                n += 5
                await asyncio.sleep(0.01)

        await feed(0.3)
        t0 = time.monotonic()
        await asyncio.gather(asyncio.to_thread(cluster.ctl, "restart"), feed(1.0))
        restarted = time.monotonic() - t0
        await feed(0.3)
        await asyncio.wait_for(reloader.connected.wait(), 10)
        reconnected = time.monotonic() - t0
        async with db.acquire() as conn:
            await activate_row(
                conn,
                version="v2",
                mamba_weight=0.5,
                horizons=(1, 5, 15),
                seq_len=64,
                feature_version=1,
                **row_paths(make_model_dir(tmp_path, "v2")),
            )
        t1 = time.monotonic()
        while manager.current is None or manager.current.model_dir.name != "v2":
            assert time.monotonic() - t1 < 2, "no switch after the restart"
            await asyncio.sleep(0.005)
        switched_ms = 1e3 * (time.monotonic() - t1)
        assert await sink.flush(15), sink.stats()
        print(
            f"\nrestart took {restarted:.2f} s; reloader back after {reconnected:.2f} s; "
            f"switch {switched_ms:.0f} ms after activate; sink {sink.stats()}"
        )
        assert reloader.reconnects >= 1
    await sink.close()
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT open_time FROM predictions ORDER BY open_time")
    await db.close()
    assert sink.dropped == 0 and sink.failed_batches >= 1
    assert [r["open_time"] for r in rows] == [_pred(i).open_time for i in range(n)]

"""Postgres faults under ``stream-infer run`` with the ensemble from the database, hot reload
and the predictions sink on: the connection cut through a proxy, then the server restarted.
Kafka delivery is untouched, the sink ends with every prediction exactly once, and hot
reload works afterwards."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream_infer.events import encode_candle
from tests.fixtures_kafka import TopicsFactory
from tests.kafka._util import BTC, NEAR, interleave, offline, real_candles
from tests.kafka_helpers import Collector
from tests.reliability._harness import (
    ServiceProc,
    check_delivery,
    metric,
    produce_candles,
    record,
)
from tests.reliability._pg import PrivatePg, activate_dir, private_pg

pytestmark = pytest.mark.services

models = pytest.importorskip("stream_infer.models")


@pytest.fixture
def pg() -> Iterator[PrivatePg]:
    with private_pg() as p:
        yield p


async def _wait(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, what
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def test_postgres_cut_and_restarted_mid_run(
    pg: PrivatePg,
    kafka_topics: TopicsFactory,
    ensemble_dir: Path,
    tmp_path: Path,
) -> None:
    s = kafka_topics(partitions=2, kafka_max_poll_records=50)
    root = tmp_path / "models"
    for v in ("v1", "v2"):
        shutil.copytree(ensemble_dir, root / v)
    row1 = await activate_dir(pg, root / "v1", version="v1")
    twin = models.load_ensemble(root / "v1", ensemble_id=str(row1), version="v1")
    n = 1100
    candles = interleave(
        [
            real_candles("NEARUSDT", n, source=NEAR),
            real_candles("BTCUSDT", n, source=BTC),
            real_candles("XYZUSDT", n, source=NEAR, skip=20_000),
        ]
    )
    warm = 3 * 480
    want, _ = offline(twin, [encode_candle(c) for c in candles])
    where: dict[Any, Any] = {}
    bootstrap = s.kafka_bootstrap_servers
    await produce_candles(bootstrap, s.kafka_candles_topic, candles[:warm], where)
    log = tmp_path / "service.log"
    env = pg.env(DB_WRITE_PREDICTIONS="true", ML_MODELS_ROOT=str(root), ML_RELOAD_POLL_S="1")
    svc = ServiceProc(s, log, env=env)
    try:
        await svc.wait_ready(60)
        async with Collector(bootstrap, s.kafka_predictions_topic) as preds:
            live = asyncio.create_task(
                produce_candles(bootstrap, s.kafka_candles_topic, candles[warm:], where, rate=150)
            )
            await asyncio.sleep(1.0)
            # 1. every connection to Postgres dropped and refused for 5 s
            pg.proxy.cut()
            await asyncio.sleep(5.0)
            pg.proxy.restore()

            def reconnects() -> float:
                return metric(svc.metrics(), "stream_infer_db_reconnects_total")

            # The reloader's backoff may still be sleeping: the restart must find it
            # connected, or the two faults would count as one reconnect.
            await _wait(lambda: reconnects() >= 1, 15, "reloader did not reconnect after the cut")
            # 2. the server itself stopped (fast: every backend killed) and started 3 s later
            t0 = time.monotonic()
            await asyncio.to_thread(pg.cluster.ctl, "stop")
            await asyncio.sleep(3.0)
            await asyncio.to_thread(pg.cluster.ctl, "start")
            restart_s = time.monotonic() - t0
            await _wait(lambda: reconnects() >= 2, 20, "reloader did not reconnect after restart")
            await live
            await preds.wait_for(len(want), 60)
            await preds.settle(1.0)

        # the sink catches up: every prediction in the table, once
        # (a batch whose acknowledgement was lost is written again: "duplicate" rows were
        # there already, the primary key keeps one)
        def sink_done() -> bool:
            m = svc.metrics()
            done = metric(m, "stream_infer_sink_rows_total", result="written") + metric(
                m, "stream_infer_sink_rows_total", result="duplicate"
            )
            return done >= len(want) and metric(m, "stream_infer_sink_pending") == 0

        await _wait(sink_done, 30, "the sink did not catch up")
        m = svc.metrics()
        rows = await pg.fetch("SELECT symbol, open_time, ensemble_id FROM predictions")
        # hot reload still works after the restart
        row2 = await activate_dir(pg, root / "v2", version="v2")
        reload_s = await _wait(
            lambda: (
                metric(
                    svc.metrics(), "stream_infer_ensemble_info", ensemble_id=str(row2), version="v2"
                )
                == 1
            ),
            15,
            "no hot reload after the restart",
        )
        m2 = svc.metrics()
        assert svc.stop() == 0
    finally:
        svc.kill()
    delivery = check_delivery(preds.records, want, where, [], candles=len(candles))
    assert delivery.duplicates == 0  # Kafka saw no fault
    keys = sorted((r["symbol"], r["open_time"], r["ensemble_id"]) for r in rows)
    assert keys == sorted((k[0], k[1], str(row1)) for k in want), "sink rows != predictions"
    assert metric(m, "stream_infer_sink_rows_total", result="dropped") == 0
    assert metric(m, "stream_infer_sink_rows_total", result="rejected") == 0
    failed = metric(m, "stream_infer_sink_failed_batches_total")
    reconnects = metric(m, "stream_infer_db_reconnects_total")
    assert failed >= 1 and reconnects >= 2, m
    assert metric(m2, "stream_infer_reloads_total", result="ok") == 1
    assert metric(m2, "stream_infer_reloads_total", result="failed") == 0
    text = log.read_text()
    assert "reloader: Postgres unavailable" in text
    assert "reloader reconnected" in text
    assert "not written" in text  # the sink's retry line
    record(
        "Postgres cut 5 s + restarted mid-run",
        restart_s=round(restart_s, 1),
        sink_rows=len(rows),
        sink_rows_rewritten=int(metric(m, "stream_infer_sink_rows_total", result="duplicate")),
        sink_failed_batches=int(failed),
        db_reconnects=int(reconnects),
        reload_after_restart_s=round(reload_s, 2),
        **delivery.figures(),
    )

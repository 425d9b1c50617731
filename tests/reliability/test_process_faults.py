"""Process faults: SIGKILL at random points of bursts (3 times by default, 20 with
``-m slow``), the active model's files corrupted on disk, the predictions sink's table
dropped while running. Same invariants: no candle loses its prediction, repeats only in
the uncommitted range, and the service says what happened."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stream_infer.candles import Candle
from stream_infer.config import DatabaseSettings
from stream_infer.db import Database, migrate
from stream_infer.events import decode_prediction, encode_candle
from tests.fixtures_kafka import TopicsFactory
from tests.kafka._util import BTC, NEAR, offline, real_candles
from tests.kafka_helpers import Collector, committed_offsets
from tests.reliability._harness import ServiceProc, check_delivery, metric, produce_candles, record
from tests.reliability._pg import activate_dir

pytestmark = pytest.mark.services

models = pytest.importorskip("stream_infer.models")

SYMBOLS = (("NEARUSDT", NEAR, 0), ("BTCUSDT", BTC, 0), ("XYZUSDT", NEAR, 20_000))
WARM = 470  # per symbol in the first burst: every stream predicts from candle ready_candles(seq_len) on


def streams(n: int) -> list[list[Candle]]:
    return [real_candles(sym, n, source=src, skip=skip) for sym, src, skip in SYMBOLS]


def bursts(per_symbol: list[int]) -> list[list[Candle]]:
    """Consecutive bursts of the three streams, ``per_symbol[i]`` candles each, interleaved."""
    all_ = streams(sum(per_symbol))
    out, at = [], 0
    for n in per_symbol:
        chunk = [c for i in range(n) for c in (s[at + i] for s in all_)]
        out.append(chunk)
        at += n
    return out


async def _sigkill_rounds(
    kafka_topics: TopicsFactory, ensemble_dir: Path, twin: Any, tmp_path: Path, kills: int
) -> None:
    poll = 20
    s = kafka_topics(partitions=2, kafka_max_poll_records=poll)
    rng = random.Random(int(os.environ.get("RELIABILITY_SEED", "8")))
    chunks = bursts([WARM, *([60] * kills)])  # one per round, the last for the final run
    candles = [c for ch in chunks for c in ch]
    want, _ = offline(twin, [encode_candle(c) for c in candles])
    where: dict[Any, Any] = {}
    bootstrap = s.kafka_bootstrap_servers
    log = tmp_path / "service.log"
    at_kill: list[dict[int, int]] = []
    produced = 0
    uncommitted_at_kill: list[int] = []
    before_ready = 0
    async with Collector(bootstrap, s.kafka_predictions_topic) as preds:
        for i in range(kills):
            svc = ServiceProc(s, log, models=ensemble_dir)
            try:
                if i > 0 and rng.random() < 0.25:
                    # during start-up: loading the models, joining, rebuilding the streams
                    await produce_candles(bootstrap, s.kafka_candles_topic, chunks[i], where)
                    produced += len(chunks[i])
                    await asyncio.sleep(rng.uniform(0.5, 4.0))
                    before_ready += not svc.ready()
                else:
                    await svc.wait_ready(60)
                    await produce_candles(bootstrap, s.kafka_candles_topic, chunks[i], where)
                    produced += len(chunks[i])
                    await asyncio.sleep(rng.uniform(0.0, 0.6))
            finally:
                svc.kill()
            at_kill.append(await committed_offsets(s, 2))
            uncommitted_at_kill.append(produced - sum(at_kill[-1].values()))
        svc = ServiceProc(s, log, models=ensemble_dir)
        try:
            await svc.wait_ready(60)
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[kills], where)
            with contextlib.suppress(AssertionError):  # check_delivery says what is missing
                await preds.wait_for(len(want), 60)
            await preds.settle(1.0)
            m = svc.metrics()
            assert svc.stop() == 0
        finally:
            svc.kill()
    final = await committed_offsets(s, 2)
    print("committed at the kills", at_kill, "final", final)
    delivery = check_delivery(
        preds.records, want, where, at_kill, candles=len(candles), window=poll
    )
    assert sum(final.values()) == len(candles), "a graceful stop commits everything"
    assert metric(m, "stream_infer_partitions_rebuilt_total") >= 1
    assert "rebuilt" in log.read_text()
    landed = sum(1 for u in uncommitted_at_kill if u > 0)
    record(
        f"SIGKILL x{kills} at random points of bursts",
        kills=kills,
        kills_with_uncommitted_work=landed,
        kills_before_ready=before_ready,
        uncommitted_at_kill=uncommitted_at_kill,
        **delivery.figures(),
    )


async def test_sigkill_at_random_points_of_bursts(
    kafka_topics: TopicsFactory, ensemble_dir: Path, file_ensemble: Any, tmp_path: Path
) -> None:
    await _sigkill_rounds(kafka_topics, ensemble_dir, file_ensemble, tmp_path, kills=3)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_sigkill_at_random_points_of_bursts_many(
    kafka_topics: TopicsFactory, ensemble_dir: Path, file_ensemble: Any, tmp_path: Path
) -> None:
    kills = int(os.environ.get("RELIABILITY_KILLS", "20"))
    await _sigkill_rounds(kafka_topics, ensemble_dir, file_ensemble, tmp_path, kills=kills)


# -- with the ensemble and the sink in Postgres ----------------------------------------


async def _fresh_db(settings: DatabaseSettings) -> None:
    db = Database(settings)
    try:
        async with db.acquire() as conn:
            await migrate(conn)
    finally:
        await db.close()


async def _activate(settings: DatabaseSettings, d: Path, version: str) -> int:
    return await activate_dir(settings, d, version=version)


def _db_env(settings: DatabaseSettings, root: Path, **extra: str) -> dict[str, str]:
    return {
        "DB_HOST": str(settings.host),
        "DB_PORT": str(settings.port),
        "DB_NAME": settings.name,
        "DB_USER": settings.user,
        "DB_SSLMODE": "disable",
        "ML_MODELS_ROOT": str(root),
        "ML_RELOAD_POLL_S": "0.5",
        **extra,
    }


def _corrupt(d: Path) -> None:
    """Overwrite the model files in place, as a bad deploy or a disk fault would."""
    (d / "mamba.pt").write_bytes(b"\x00garbage" * 100)
    (d / "lgbm_h1.onnx").write_bytes(b"\x08\x07 not onnx" * 10)


async def _wait(cond: Any, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, what
        await asyncio.sleep(0.1)


async def test_model_files_corrupted_after_activation(
    pg_settings: DatabaseSettings,
    kafka_topics: TopicsFactory,
    ensemble_dir: Path,
    tmp_path: Path,
) -> None:
    """The active model's files are overwritten on disk while it serves; then a corrupted
    version is activated; then the service is SIGKILLed and restarts with the corrupted row
    active; then a good version is activated. The in-memory ensemble keeps serving, the
    corrupted versions never serve, and while no configured model can be loaded nothing
    is committed: every candle is predicted once a good one is activated."""
    s = kafka_topics(partitions=2, kafka_max_poll_records=50)
    await _fresh_db(pg_settings)
    root = tmp_path / "models"
    for v in ("v1", "bad", "v2"):
        shutil.copytree(ensemble_dir, root / v)
    _corrupt(root / "bad")
    row1 = await _activate(pg_settings, root / "v1", "v1")
    chunks = bursts([WARM, 40, 40, 40, 40])
    candles = [c for ch in chunks for c in ch]
    values = [encode_candle(c) for c in candles]
    want1, _ = offline(
        models.load_ensemble(root / "v1", ensemble_id=str(row1), version="v1"), values
    )
    bootstrap = s.kafka_bootstrap_servers
    where: dict[Any, Any] = {}
    log = tmp_path / "service.log"
    env = _db_env(pg_settings, root)
    async with Collector(bootstrap, s.kafka_predictions_topic) as preds:
        svc = ServiceProc(s, log, env=env)
        try:
            await svc.wait_ready(60)
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[0], where)
            n0 = sum(1 for k in want1 if where.get(k))
            await preds.wait_for(n0, 30)
            # 1. the serving model's files are corrupted on disk: it is in memory, it serves
            _corrupt(root / "v1")
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[1], where)
            n1 = sum(1 for k in want1 if where.get(k))
            await preds.wait_for(n1, 30)
            # 2. a corrupted version is activated: refused, the old one keeps serving
            row_bad = await _activate(pg_settings, root / "bad", "bad")
            await _wait(
                lambda: metric(svc.metrics(), "stream_infer_reloads_total", result="failed") >= 1,
                15,
                "the corrupted version was not refused",
            )
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[2], where)
            n2 = sum(1 for k in want1 if where.get(k))
            await preds.wait_for(n2, 30)
        finally:
            svc.kill()
        at_kill = await committed_offsets(s, 2)
        # 3. restart with the corrupted row active (and v1's files corrupted too)
        svc = ServiceProc(s, log, env=env)
        try:
            # assigned (after the killed member's session expires) and rebuilt, but paused
            await _wait(
                lambda: log.read_text().count("assigned [") >= 2, 60, "not assigned after restart"
            )
            assert "consumption paused" in log.read_text()
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[3], where)
            await asyncio.sleep(3.0)
            assert svc.alive(), svc.tail()
            held = await committed_offsets(s, 2)
            assert held == at_kill, "offsets committed while no configured model could serve"
            assert svc.get("/readyz")[0] == 503
            n_held = len(preds.records)
            # 4. a good version is activated: everything held is predicted
            row2 = await _activate(pg_settings, root / "v2", "v2")
            await svc.wait_ready(30)
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[4], where)
            want2, _ = offline(
                models.load_ensemble(root / "v2", ensemble_id=str(row2), version="v2"), values
            )
            await _wait(
                lambda: (
                    {
                        (p.symbol, p.open_time)
                        for p in map(decode_prediction, (r.value for r in preds.records))
                    }
                    >= set(want1)
                ),
                30,
                f"not every candle was predicted after the good version was activated: "
                f"{len(preds.records)} {svc.metrics()}",
            )
            await preds.settle(1.0)
            m = svc.metrics()
            assert svc.stop() == 0
        finally:
            svc.kill()
    got = [decode_prediction(r.value) for r in preds.records]
    # v1 served before the kill, v2 after; "bad" never
    twins = {str(row1): want1, str(row2): want2}
    delivery = check_delivery(
        preds.records, want1, where, [at_kill], candles=len(candles), twins=twins
    )
    assert {p.ensemble_id for p in got} == {str(row1), str(row2)}
    assert max(p.produced_at for p in got if p.ensemble_id == str(row1)) < min(
        p.produced_at for p in got if p.ensemble_id == str(row2)
    )
    assert len(got) - n_held == sum(p.ensemble_id == str(row2) for p in got)
    assert metric(m, "stream_infer_reloads_total", result="ok") == 1
    text = log.read_text()
    assert f"hot reload to ensemble row {row_bad} failed" in text
    assert "paused" in text
    record(
        "model files corrupted after activation (+ bad version activated, SIGKILL, restart)",
        held_s=3.0,
        predictions_v1=sum(p.ensemble_id == str(row1) for p in got),
        predictions_v2=sum(p.ensemble_id == str(row2) for p in got),
        reloads_failed=int(metric(m, "stream_infer_reloads_total", result="failed")),
        **{**delivery.figures(), "faults": 3},
    )


async def test_predictions_table_dropped_while_running(
    pg_settings: DatabaseSettings,
    kafka_topics: TopicsFactory,
    ensemble_dir: Path,
    tmp_path: Path,
) -> None:
    s = kafka_topics(partitions=2, kafka_max_poll_records=50)
    await _fresh_db(pg_settings)
    root = tmp_path / "models"
    shutil.copytree(ensemble_dir, root / "v1")
    row1 = await _activate(pg_settings, root / "v1", "v1")
    twin = models.load_ensemble(root / "v1", ensemble_id=str(row1), version="v1")
    chunks = bursts([WARM + 60, 60])
    candles = [c for ch in chunks for c in ch]
    want, _ = offline(twin, [encode_candle(c) for c in candles])
    bootstrap = s.kafka_bootstrap_servers
    where: dict[Any, Any] = {}
    log = tmp_path / "service.log"
    svc = ServiceProc(s, log, env=_db_env(pg_settings, root, DB_WRITE_PREDICTIONS="true"))
    conn = await asyncpg.connect(
        host=pg_settings.host,
        port=pg_settings.port,
        user=pg_settings.user,
        database=pg_settings.name,
    )
    try:
        async with Collector(bootstrap, s.kafka_predictions_topic) as preds:
            await svc.wait_ready(60)
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[0], where)
            first = {k for k in want if k in where}
            await preds.wait_for(len(first), 30)

            async def rows() -> int:
                try:
                    return int(await conn.fetchval("SELECT count(*) FROM predictions"))
                except asyncpg.UndefinedTableError:
                    return -1

            for _ in range(100):
                if await rows() == len(first):
                    break
                await asyncio.sleep(0.1)
            assert await rows() == len(first)
            await conn.execute("DROP TABLE predictions")
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[1], where)
            await preds.wait_for(len(want), 30)
            await preds.settle(1.0)
            second = set(want) - first
            for _ in range(100):
                if await rows() == len(second):
                    break
                await asyncio.sleep(0.1)
            stored = await conn.fetch("SELECT symbol, open_time, ensemble_id FROM predictions")
            m = svc.metrics()
        assert svc.stop() == 0
    finally:
        svc.kill()
        await conn.close()
    delivery = check_delivery(preds.records, want, where, [], candles=len(candles))
    assert delivery.duplicates == 0
    # the table was recreated and holds every prediction made after the drop, once
    assert sorted((r["symbol"], r["open_time"]) for r in stored) == sorted(second)
    assert {r["ensemble_id"] for r in stored} == {str(row1)}
    assert metric(m, "stream_infer_sink_rows_total", result="dropped") == 0
    assert metric(m, "stream_infer_sink_failed_batches_total") >= 1
    assert "predictions table is missing; recreating it" in log.read_text()
    record(
        "predictions table dropped while running",
        rows_before_drop=len(first),
        rows_after_repair=len(stored),
        sink_failed_batches=int(metric(m, "stream_infer_sink_failed_batches_total")),
        sink_dropped=int(metric(m, "stream_infer_sink_rows_total", result="dropped")),
        **delivery.figures(),
    )

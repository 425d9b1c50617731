"""Hot reload under load: a continuous candle stream through the Kafka service across
``activate``. Every ready candle gets exactly one prediction, from the old or the new
ensemble (never both, never neither), the switch shows within 1 s of the activation, and
the live candles keep the service's latency bound, end to end (produce -> prediction
consumed, p99 <= 25 ms). The predictions sink, fed from the same batches, ends with the
same set exactly once.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_infer.config import ServiceSettings
from stream_infer.db import Database, PredictionSink, activate_row
from stream_infer.reload import Reloader, activate, check_model_dir, initialize
from tests.conftest import REPO
from tests.reload._fakes import row_paths

kafka = pytest.importorskip("stream_infer.kafka")
pytest.importorskip("stream_infer.models")

from stream_infer.events import decode_prediction, encode_candle  # noqa: E402
from stream_infer.pipeline import Pipeline, first_prediction_index, ready_candles  # noqa: E402
from tests.kafka._util import BTC, NEAR, interleave, real_candles  # noqa: E402
from tests.kafka_helpers import read_topic  # noqa: E402

pytestmark = pytest.mark.services

# Per symbol, sent at once: readiness is at candle index first_prediction_index(seq_len), and 16 more.
EXTRA_WARM = 16
LIVE = 250  # per symbol, sent at a steady rate across the activation
RATE = 250.0  # candles per second, all symbols together
CHUNK = 5  # sent together on the schedule
P99_BOUND_MS = 25.0  # the service's bound, end to end on the embedded broker


async def _wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _switch_under_load(
    pg_db: Database, kafka_topics: Any, ensemble_dir: Path, tmp_path: Path
) -> float:
    """The scenario and its checks; returns the live candles' end-to-end p99 (ms)."""
    settings = kafka_topics(partitions=2)
    root = tmp_path / "models"
    for name in ("old", "new"):
        shutil.copytree(ensemble_dir, root / name, ignore=shutil.ignore_patterns(".cache"))
    old_row = await activate(pg_db, root / "old", version="old", models_root=root)
    # What `stream-infer activate` does before its row, in the operator's own process: the
    # check-load, and the frozen Mamba cached beside the artifacts (see activate_midway).
    checked, _ = await check_model_dir(root / "new", models_root=root)
    assert list((root / "new" / ".cache").glob("mamba-*.frozen.pt"))
    _, manager = await initialize(
        pg_db, None, settings=ServiceSettings(models_root=str(root)), env={}
    )
    assert manager.current is not None and manager.current.ensemble_id == str(old_row.id)
    seq_len = manager.current.seq_len
    warm_n = ready_candles(seq_len) + EXTRA_WARM

    sink = PredictionSink(pg_db, batch_size=200)
    sink.start()
    service = kafka.Service(
        Pipeline(manager.current),
        settings,
        ensemble=lambda: manager.current,
        on_batch=lambda r: sink.offer(r.predictions),
        gate=manager.gate,  # what `stream-infer run` wires: the load goes between batches
    )
    a = real_candles("AAAUSDT", warm_n + LIVE, source=NEAR)
    b = real_candles("BBBUSDT", warm_n + LIVE, source=BTC)
    # Two live streams tick together: BTC's January candles moved onto NEAR's times.
    shift = a[0].open_time - b[0].open_time
    b = [
        c.model_copy(update={"open_time": c.open_time + shift, "close_time": c.close_time + shift})
        for c in b
    ]
    streams = [a, b]
    warm = interleave([s[:warm_n] for s in streams])
    live = interleave([s[warm_n:] for s in streams])
    # The live side runs in its own process (tests/reload/_loadgen.py): it sends the live
    # candles on a fixed schedule and times each one to its prediction's arrival.
    spec = tmp_path / "loadgen.json"
    spec.write_bytes(
        orjson.dumps(
            {
                "bootstrap": settings.kafka_bootstrap_servers,
                "candles_topic": settings.kafka_candles_topic,
                "predictions_topic": settings.kafka_predictions_topic,
                "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
                "rate": RATE,
                "chunk": CHUNK,
                "events": [[c.symbol, encode_candle(c).decode()] for c in live],
            }
        )
    )
    timings = tmp_path / "loadgen-out.json"
    gen = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.reload._loadgen",
        str(spec),
        str(timings),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert gen.stdin is not None and gen.stdout is not None
    producer = kafka.make_producer(settings.kafka_bootstrap_servers, linger_ms=0)
    await producer.start()
    run = asyncio.create_task(service.run())
    activated_ms = 0.0
    try:
        await service.wait_assigned(30)
        async with Reloader(pg_db, manager, poll_s=30) as reloader:
            await asyncio.wait_for(reloader.connected.wait(), 5)
            topic = settings.kafka_candles_topic
            await kafka.produce_events(
                producer, topic, [(c.symbol.encode(), encode_candle(c)) for c in warm]
            )
            assert (await asyncio.wait_for(gen.stdout.readline(), 30)).strip() == b"ready"
            # The live stream starts once the service is through the warm-up backlog (~1000
            # candles, one 35-65 ms batch: a burst, not the steady stream this test bounds).
            # Started at once, the first live candles landed in that batch in about 1 run
            # in 4: 5 of 500 candles at 50-70 ms, a p99 that had nothing to do with reloads.
            await _wait_for(lambda: service.stats.messages >= len(warm), 30, "the warm-up")
            gen.stdin.write(b"go\n")
            await gen.stdin.drain()
            line = await asyncio.wait_for(gen.stdout.readline(), 10)
            assert line.startswith(b"live ")
            await asyncio.sleep(len(live) / RATE / 2)
            # What `stream-infer activate` does once its check (done above, as the
            # operator's own process would) passed: the row, made active, NOTIFY. Its
            # load must not share this process with the service: torch holds the GIL
            # while it deserialises, and the test would time itself, not the service.
            async with pg_db.acquire() as conn:
                row = await activate_row(
                    conn,
                    version="new",
                    **row_paths(root / "new"),
                    mamba_weight=float(checked.mamba_weight),
                    horizons=[int(h) for h in checked.horizons],
                    seq_len=int(checked.seq_len),
                    feature_version=int(checked.feature_version),
                )
            new_id, activated_ms = row.id, time.time() * 1000
            assert await asyncio.wait_for(gen.wait(), 90) == 0
            expected = 2 * (warm_n + LIVE - first_prediction_index(seq_len))
            records = await read_topic(
                settings.kafka_bootstrap_servers,
                settings.kafka_predictions_topic,
                expect=expected,
                idle_s=1.0,
                timeout_s=60,
            )
            assert manager.reloads_ok == 1 and reloader.reloads_failed == 0
    finally:
        if gen.returncode is None:
            gen.kill()
            await gen.wait()
        service.request_stop()
        await asyncio.wait_for(run, 30)
        await producer.stop()
    preds = [decode_prediction(r.value) for r in records]
    keys = [(p.symbol, p.open_time) for p in preds]
    assert len(keys) == len(set(keys)) == expected  # exactly one prediction per ready candle
    ids = {p.ensemble_id for p in preds}
    assert ids == {str(old_row.id), str(new_id)}
    for sym in ("AAAUSDT", "BBBUSDT"):
        seq = [p.ensemble_id for p in sorted(preds, key=lambda p: p.open_time) if p.symbol == sym]
        # old ... old new ... new: one switch, between two batches, never back
        switch = seq.index(str(new_id))
        assert set(seq[:switch]) == {str(old_row.id)} and set(seq[switch:]) == {str(new_id)}
    first_new = min(p.produced_at for p in preds if p.ensemble_id == str(new_id))
    visible_ms = first_new - activated_ms
    print(
        f"\nswitch under load: first new-ensemble prediction {visible_ms:.0f} ms after "
        f"activate returned; {expected} predictions, "
        f"{sum(p.ensemble_id == str(new_id) for p in preds)} from the new ensemble"
    )
    assert visible_ms < 1000

    # End to end, per live candle: sent by the load generator -> its prediction consumed
    # there (one process, one clock). Every live candle's prediction arrived.
    out = orjson.loads(timings.read_bytes())
    assert out["sent"] == len(live) and not out["missing"], out["missing"][:5]
    lat = sorted(out["latency_ms"].values())
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    worst = max(out["latency_ms"], key=out["latency_ms"].get)
    live_from = live[0].open_time
    inside = sorted(p.latency_ms for p in preds if p.open_time >= live_from)
    gate = manager.gate
    print(
        f"live candles end to end across the reload: median {lat[len(lat) // 2]:.2f} ms, "
        f"p99 {p99:.2f} ms, max {lat[-1]:.2f} ms (n={len(lat)}); inside the service "
        f"(received -> prediction built) p99 {inside[int(0.99 * len(inside))]:.2f} ms; "
        f"load steps {gate.steps}, longest a batch waited for one "
        f"{1000 * gate.max_batch_wait_s:.1f} ms; the slowest candle was sent "
        f"{out['sent_at_ms'][worst] - activated_ms:+.0f} ms from the activation"
    )

    assert await sink.flush(10)
    await sink.close()
    async with pg_db.acquire() as conn:
        rows = await conn.fetch("SELECT symbol, open_time, ensemble_id FROM predictions")
    assert sorted((r["symbol"], r["open_time"], r["ensemble_id"]) for r in rows) == sorted(
        (p.symbol, p.open_time, p.ensemble_id) for p in preds
    )
    return p99


async def test_switch_under_load(
    pg_db: Database, kafka_topics: Any, ensemble_dir: Path, tmp_path: Path
) -> None:
    """Exactly one prediction per candle across the swap, visible within 1 s, sink equal.

    The latency bound of the same run is the slow test below: a timing assertion does not
    belong in the default run (it measures the machine as much as the code).
    """
    await _switch_under_load(pg_db, kafka_topics, ensemble_dir, tmp_path)


@pytest.mark.slow
async def test_switch_under_load_within_the_latency_bound(
    pg_db: Database, kafka_topics: Any, ensemble_dir: Path, tmp_path: Path
) -> None:
    """The same, and the live candles' end-to-end p99 within the service's bound (25 ms).

    Measured on Tansu on the 2-core machine (2026-11): p99 11.7-15.4 ms in 10 runs,
    14.8-20.7 ms beside a process spinning on one core (docs/postgres.md, "Under load").
    On 2026-12-02, on Apache Kafka and on Tansu alike, it measured 83-450 ms while other
    jobs (valgrind, test suites) ran on this machine; not diagnosed (closing note).
    """
    p99 = await _switch_under_load(pg_db, kafka_topics, ensemble_dir, tmp_path)
    assert p99 <= P99_BOUND_MS

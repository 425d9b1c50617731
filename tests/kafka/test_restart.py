"""SIGKILL ``stream-infer run`` mid-stream and start it again: no candle loses its prediction."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stream_infer.candles import Candle
from stream_infer.config import KafkaSettings
from stream_infer.events import decode_prediction, encode_candle
from stream_infer.kafka import make_producer
from stream_infer.pipeline import first_prediction_index
from tests.conftest import REPO
from tests.fixtures_kafka import KafkaBroker, TopicsFactory
from tests.kafka._util import BTC, NEAR, assert_same_prediction, interleave, offline, real_candles
from tests.kafka_helpers import Collector, committed_offsets, produce_paced

pytestmark = pytest.mark.services

models = pytest.importorskip("stream_infer.models")


def start_service(
    s: KafkaSettings,
    models_dir: Path | None,
    log: Path,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(extra_env or {})
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=s.kafka_bootstrap_servers,
        KAFKA_CANDLES_TOPIC=s.kafka_candles_topic,
        KAFKA_PREDICTIONS_TOPIC=s.kafka_predictions_topic,
        KAFKA_DLQ_TOPIC=s.kafka_dlq_topic,
        KAFKA_GROUP_ID=s.kafka_group_id,
        KAFKA_MAX_POLL_RECORDS="25",  # many small batches: a kill lands between commits
    )
    cmd = [sys.executable, "-c", "from stream_infer.cli import main; main()"]
    return subprocess.Popen(
        [
            *cmd,
            "run",
            *(["--models", str(models_dir)] if models_dir is not None else []),
            "--session-timeout-ms",
            "6000",
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_sigkill_and_restart_loses_nothing_and_rebuilds_state(
    kafka_broker: KafkaBroker,
    kafka_topics: TopicsFactory,
    ensemble_dir: Path,
    tmp_path: Path,
) -> None:
    s = kafka_topics(partitions=2)
    feed: list[Candle] = interleave(
        [
            real_candles("NEARUSDT", 800, source=NEAR),
            real_candles("BTCUSDT", 800, source=BTC),
            real_candles("XYZUSDT", 800, source=NEAR, skip=20_000),
        ]
    )
    ens = models.load_ensemble(ensemble_dir, ensemble_id="file:" + _version(ensemble_dir))
    want, _ = offline(ens, [encode_candle(c) for c in feed])
    log = tmp_path / "service.log"
    where: dict[tuple[str, int], tuple[int, int]] = {}  # (symbol, open_time) -> (partition, offset)

    def produce(rate: float) -> Any:
        return produce_paced(kafka_broker.bootstrap, s.kafka_candles_topic, feed, rate, where)

    first = start_service(s, ensemble_dir, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        async with Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds:
            producing = asyncio.create_task(produce(rate=500))
            await preds.wait_for(200, timeout=60)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_ms = time.time_ns() // 1_000_000
            at_kill = await committed_offsets(s, 2)
            second = start_service(s, ensemble_dir, log)
            await producing
            await preds.wait_for(len(want), timeout=60)
            await preds.settle(1.0)
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
            final = await committed_offsets(s, 2)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
    text = log.read_text()
    got = [decode_prediction(r.value) for r in preds.records]
    keys = Counter((p.symbol, p.open_time) for p in got)
    assert set(keys) == set(want), "a candle without its prediction after the restart"
    for p in got:
        assert_same_prediction(p, want[(p.symbol, p.open_time)])
    # Duplicates only for candles the first run had not committed when it was killed.
    dups = [k for k, n in keys.items() if n > 1]
    for k in dups:
        part, off = where[k]
        assert off >= at_kill[part], f"{k} at {part}/{off} was committed ({at_kill}) yet redone"
    assert max(keys.values()) <= 2
    # The second run predicts from the first ready candle it reads, with the uninterrupted
    # run's numbers: its streams were rebuilt from the topic (a cold start would predict
    # nothing before readiness).
    after = [p for p in got if p.produced_at > killed_ms]
    firsts: dict[str, Any] = {}
    for p in sorted(after, key=lambda p: p.open_time):
        firsts.setdefault(p.symbol, p)
    immediate = 0
    for sym in ("NEARUSDT", "BTCUSDT", "XYZUSDT"):
        unread = sorted(
            (k for k in where if k[0] == sym and where[k][1] >= at_kill[where[k][0]]),
            key=lambda k: k[1],
        )
        expected = next(k for k in unread if k in want)
        assert (sym, firsts[sym].open_time) == expected
        assert_same_prediction(firsts[sym], want[expected])
        immediate += expected == unread[0]
    assert immediate >= 1, "no stream was ready at the kill: the rebuild was not exercised"
    # A graceful stop commits everything it processed.
    assert final == dict(Counter(part for part, _ in where.values()))
    assert "rebuilt" in text
    assert "stream-infer run stopped: candles=" in text, text[-2000:]


def _version(path: Path) -> str:
    import json

    return str(json.loads((path / "manifest.json").read_text())["version"])


async def test_run_serves_the_ensemble_the_ml_environment_names(
    kafka_broker: KafkaBroker,
    kafka_topics: TopicsFactory,
    ensemble_dir: Path,
    tmp_path: Path,
) -> None:
    """No --models: the configuration chain (here ML_* variables, no database) picks the models."""
    s = kafka_topics(partitions=1)
    feed = real_candles("NEARUSDT", 520, source=NEAR)
    ens = models.load_ensemble(ensemble_dir)
    expected = len(feed) - first_prediction_index(ens.seq_len)
    log = tmp_path / "service.log"
    env = {
        "ML_MAMBA_MODEL_PATH": str(ensemble_dir / "mamba.pt"),
        "ML_LGBM_MODELS_DIR": str(ensemble_dir),
        "ML_NORM_PARAMS_PATH": str(ensemble_dir / "normalization_params_v1.json"),
        "ML_ENSEMBLE_VERSION": "from-env",
        "DB_HOST": "",
    }
    proc = start_service(s, None, log, extra_env=env)
    try:
        producer = make_producer(kafka_broker.bootstrap)
        await producer.start()
        try:
            for c in feed:
                await producer.send(s.kafka_candles_topic, encode_candle(c), key=b"NEARUSDT")
            await producer.send_and_wait(s.kafka_candles_topic, b"garbage", key=b"NEARUSDT")
        finally:
            await producer.stop()
        async with (
            Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds,
            Collector(kafka_broker.bootstrap, s.kafka_dlq_topic) as dlq,
        ):
            await preds.wait_for(expected, timeout=60)
            await dlq.wait_for(1, timeout=30)
            await preds.settle(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    got = [decode_prediction(r.value) for r in preds.records]
    assert len(got) == expected
    assert {(p.ensemble_id, p.version) for p in got} == {("file:from-env", "from-env")}
    text = log.read_text()
    assert f"predictions={expected} dead_letters=1" in text, text[-2000:]

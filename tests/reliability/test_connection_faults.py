"""Connection faults, injected with a TCP proxy between ``stream-infer run`` and the broker
(and one in front of Postgres): the service waits and recovers, loses no candle, repeats
only uncommitted ones, and says what happened in /metrics and its log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from stream_infer.candles import Candle
from tests.kafka._util import BTC, NEAR, interleave, offline, real_candles
from tests.kafka_helpers import Collector, committed_offsets, fresh_topics
from tests.reliability._harness import (
    ProxiedBroker,
    ServiceProc,
    check_delivery,
    metric,
    metric_sum,
    produce_candles,
    record,
)

pytestmark = pytest.mark.services

models = pytest.importorskip("stream_infer.models")

from stream_infer.events import encode_candle  # noqa: E402


def feed(n: int) -> list[Candle]:
    return interleave(
        [
            real_candles("NEARUSDT", n, source=NEAR),
            real_candles("BTCUSDT", n, source=BTC),
            real_candles("XYZUSDT", n, source=NEAR, skip=20_000),
        ]
    )


async def test_broker_unreachable_at_start(
    proxied: ProxiedBroker, ensemble_dir: Path, file_ensemble: Any, tmp_path: Path
) -> None:
    """The service starts while the broker cannot be reached: it waits (alive, /readyz 503,
    the attempts counted), and once the broker answers it serves everything."""
    s = fresh_topics(proxied.bootstrap, "unreachable", partitions=2, kafka_max_poll_records=100)
    candles = feed(600)
    want, _ = offline(file_ensemble, [encode_candle(c) for c in candles])
    where: dict[Any, Any] = {}
    await produce_candles(proxied.bootstrap, s.kafka_candles_topic, candles, where)
    log = tmp_path / "service.log"
    proxied.proxy.cut()
    svc = ServiceProc(s, log, models=ensemble_dir)
    try:
        t0 = time.monotonic()
        while svc.get("/healthz")[0] != 200:
            assert svc.alive(), svc.tail()
            assert time.monotonic() - t0 < 60, svc.tail()
            await asyncio.sleep(0.1)
        down_s = 5.0
        t_up = time.monotonic()
        while time.monotonic() - t_up < down_s:
            assert svc.alive(), svc.tail()
            assert svc.get("/readyz")[0] == 503
            await asyncio.sleep(0.25)
        m = svc.metrics()
        attempts = metric(m, "stream_infer_broker_errors_total", op="connect")
        assert attempts >= 2, m
        assert metric(m, "stream_infer_ready") == 0
        assert metric(m, "stream_infer_broker_reachable") == 0
        proxied.proxy.restore()
        t_restore = time.monotonic()
        await svc.wait_ready(60)
        ready_after = time.monotonic() - t_restore
        async with Collector(proxied.bootstrap, s.kafka_predictions_topic) as preds:
            await preds.wait_for(len(want), 60)
            await preds.settle(1.0)
        m = svc.metrics()
        assert svc.stop() == 0
    finally:
        svc.kill()
    delivery = check_delivery(preds.records, want, where, [], candles=len(candles))
    assert delivery.duplicates == 0
    assert metric(m, "stream_infer_candles_consumed_total") == len(candles)
    assert metric(m, "stream_infer_predictions_produced_total") == len(want)
    assert metric(m, "stream_infer_broker_reachable") == 1
    text = log.read_text()
    assert "not ready, retrying in" in text
    assert "connected to Kafka at" in text
    record(
        "broker unreachable at start",
        seconds_unreachable=round(time.monotonic() - t0, 1),
        connect_attempts_failed=int(attempts),
        ready_s_after_restore=round(ready_after, 2),
        **delivery.figures(),
    )


async def test_connection_cut_for_10_s_mid_stream(
    proxied: ProxiedBroker, ensemble_dir: Path, file_ensemble: Any, tmp_path: Path
) -> None:
    """Every connection through the proxy is dropped and refused for 10 s while candles
    flow (the producer's too), then restored."""
    s = fresh_topics(proxied.bootstrap, "cut", partitions=2, kafka_max_poll_records=50)
    candles = feed(1000)
    warm = 3 * 480
    want, _ = offline(file_ensemble, [encode_candle(c) for c in candles])
    where: dict[Any, Any] = {}
    await produce_candles(proxied.bootstrap, s.kafka_candles_topic, candles[:warm], where)
    log = tmp_path / "service.log"
    svc = ServiceProc(s, log, models=ensemble_dir)
    cut_s = 10.0
    try:
        await svc.wait_ready(60)
        async with Collector(proxied.bootstrap, s.kafka_predictions_topic) as preds:
            live = asyncio.create_task(
                produce_candles(
                    proxied.bootstrap, s.kafka_candles_topic, candles[warm:], where, rate=150
                )
            )
            while len(preds.records) < 100:
                await asyncio.sleep(0.02)
            before = svc.metrics()
            at_cut = await committed_offsets(s, 2)
            proxied.proxy.cut()
            t_cut = time.monotonic()
            not_ready = False
            while time.monotonic() - t_cut < cut_s:
                assert svc.alive(), svc.tail()
                not_ready = not_ready or svc.get("/readyz")[0] == 503
                await asyncio.sleep(0.25)
            during = svc.metrics()
            proxied.proxy.restore()
            t_restore = time.monotonic()
            await live
            await svc.wait_ready(60)
            back_s = time.monotonic() - t_restore
            await preds.wait_for(len(want), 90)
            await preds.settle(2.0)
        m = svc.metrics()
        assert svc.stop() == 0
    finally:
        svc.kill()
    delivery = check_delivery(preds.records, want, where, [at_cut], candles=len(candles))
    assert not_ready, "/readyz stayed 200 through a 10 s outage"
    assert metric(during, "stream_infer_broker_reachable") == 0
    errors = metric_sum(m, "stream_infer_broker_errors_total") - metric_sum(
        before, "stream_infer_broker_errors_total"
    )
    assert errors >= 1, m
    assert metric(m, "stream_infer_candles_consumed_total") >= len(candles)
    assert metric(m, "stream_infer_predictions_produced_total") == delivery.predictions
    text = log.read_text()
    assert "does not answer" in text or "sends failed" in text, text[-3000:]
    assert "answers again after" in text
    record(
        "broker connection cut 10 s mid-stream",
        cut_s=cut_s,
        ready_s_after_restore=round(back_s, 2),
        broker_errors_counted=int(errors),
        stalled_commits=int(metric(m, "stream_infer_broker_errors_total", op="commit")),
        stalled_sends=int(metric(m, "stream_infer_broker_errors_total", op="send")),
        rebalances=int(
            metric(m, "stream_infer_rebalances_total")
            - metric(before, "stream_infer_rebalances_total")
        ),
        **delivery.figures(),
    )

"""/metrics and /readyz of a running service: the counters follow what was produced and
consumed, and readiness waits for warm partitions and a model."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stream_infer.events import decode_dead_letter
from stream_infer.kafka import KafkaHistory, Service
from stream_infer.ops import Metrics, OpsServer
from stream_infer.pipeline import Pipeline
from tests.kafka._util import offline
from tests.kafka.test_service import feed3, poisoned
from tests.kafka_helpers import Collector, fresh_topics
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


async def _produce(bootstrap: str, topic: str, events: list[tuple[bytes | None, bytes]]) -> None:
    from stream_infer.kafka import make_producer, produce_events

    producer = make_producer(bootstrap)
    await producer.start()
    try:
        await produce_events(producer, topic, events)
    finally:
        await producer.stop()


async def test_metrics_follow_what_was_produced_and_consumed(
    proxied: ProxiedBroker, ensemble_dir: Path, file_ensemble: Any, tmp_path: Path
) -> None:
    s = fresh_topics(proxied.bootstrap, "metrics", partitions=2, kafka_max_poll_records=100)
    events = poisoned(feed3(600))
    want, counts = offline(file_ensemble, [v for _, v in events])
    svc = ServiceProc(s, tmp_path / "service.log", models=ensemble_dir)
    scrapes: list[dict[str, float]] = []
    try:
        await svc.wait_ready(60)
        async with (
            Collector(proxied.bootstrap, s.kafka_predictions_topic) as preds,
            Collector(proxied.bootstrap, s.kafka_dlq_topic) as dlq,
        ):
            producing = asyncio.create_task(
                _produce(proxied.bootstrap, s.kafka_candles_topic, events)
            )
            while not producing.done() or len(preds.records) < len(want):
                scrapes.append(svc.metrics())
                assert len(scrapes) < 600, "no end in sight"
                await asyncio.sleep(0.1)
            await producing
            await preds.settle(0.5)
            await dlq.wait_for(sum(counts.dead_letters.values()), 10)
            # after the last batch: caught up
            for _ in range(50):
                m = svc.metrics()
                lags = [
                    v for k, v in m.items() if k.startswith("stream_infer_consumer_lag_seconds{")
                ]
                if metric(m, "stream_infer_predictions_produced_total") == len(want) and not any(
                    lags
                ):
                    break
                await asyncio.sleep(0.1)
        scrapes.append(m)
        assert svc.stop() == 0
    finally:
        svc.kill()
    delivery = check_delivery(preds.records, want, {}, [], candles=len(events))
    assert delivery.duplicates == 0
    # counters never go down between scrapes
    counters = [
        "stream_infer_candles_consumed_total",
        "stream_infer_predictions_produced_total",
        "stream_infer_commits_total",
    ]
    for name in counters:
        series = [metric(x, name) for x in scrapes if x]
        assert series == sorted(series), name
    assert len({metric(x, "stream_infer_predictions_produced_total") for x in scrapes}) > 2, (
        "the scrapes did not see the run progress"
    )
    # final values equal what was produced, consumed and published
    assert metric(m, "stream_infer_candles_consumed_total") == len(events)
    assert metric(m, "stream_infer_predictions_produced_total") == len(want)
    letters = Counter(decode_dead_letter(r.value).reason for r in dlq.records)
    assert letters == Counter(counts.dead_letters)
    for reason, n in letters.items():
        assert metric(m, "stream_infer_dead_letters_total", reason=reason) == n
    assert metric(m, "stream_infer_candles_skipped_total", why="duplicate") == counts.duplicates
    assert metric(m, "stream_infer_candles_skipped_total", why="late") == counts.late
    e2e = metric(m, "stream_infer_stage_latency_seconds_count", stage="end_to_end")
    assert e2e == len(want)
    for stage in ("decode", "features", "models", "produce"):
        assert metric(m, "stream_infer_stage_latency_seconds_count", stage=stage) > 0, stage
        assert metric(m, "stream_infer_stage_latency_seconds_sum", stage=stage) > 0, stage
    assert metric(m, "stream_infer_streams_held") == 3
    assert metric(m, "stream_infer_ready") == 1
    info = [k for k, v in m.items() if k.startswith("stream_infer_ensemble_info{") and v == 1]
    assert info == [
        f'stream_infer_ensemble_info{{ensemble_id="{file_ensemble.ensemble_id}",'
        f'version="{file_ensemble.version}"}}'
    ]
    assert abs(metric(m, "stream_infer_ensemble_loaded_timestamp_seconds") - time.time()) < 600
    assert metric_sum(m, "stream_infer_broker_errors_total") == 0
    assert {k for k in m if k.startswith("stream_infer_consumer_lag_seconds{")} == {
        'stream_infer_consumer_lag_seconds{partition="0"}',
        'stream_infer_consumer_lag_seconds{partition="1"}',
    }
    assert all(v == 0 for k, v in m.items() if k.startswith("stream_infer_consumer_lag_seconds{"))
    record(
        "metrics scrape",
        messages=len(events),
        scrapes=len(scrapes),
        **delivery.figures(),
        dead_letters=sum(letters.values()),
    )


class _Gate(KafkaHistory):
    """History that waits for the test to open the gate (a slow rebuild)."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def load(self, tp: Any, committed: int, need: int) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await super().load(tp, committed, need)


async def _get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    return int(raw.split(b" ", 2)[1])


async def test_readyz_false_until_partitions_are_warm_and_a_model_is_loaded(
    proxied: ProxiedBroker, file_ensemble: Any
) -> None:
    s = fresh_topics(proxied.bootstrap, "readyz", partitions=1)
    feed = feed3(600)
    where: dict[Any, Any] = {}
    await produce_candles(proxied.bootstrap, s.kafka_candles_topic, feed[:1500], where)
    # A first member commits the first 1,500 candles, so the next one must rebuild them.
    first = Service(Pipeline(file_ensemble), s)
    task = asyncio.create_task(first.run())
    await first.wait_assigned()
    while first.stats.messages < 1500:
        await asyncio.sleep(0.05)
    first.request_stop()
    await task

    state: dict[str, Any] = {"model": None}
    metrics = Metrics()
    history = _Gate(proxied.bootstrap)
    second = Service(
        Pipeline(None),
        s,
        history=history,
        metrics=metrics,
        ensemble=lambda: state["model"],
        model_required=True,
    )
    ops = OpsServer(metrics, lambda: second.serving)
    await ops.start()
    task = asyncio.create_task(second.run())
    try:
        assert await _get(ops.port, "/readyz") == 503  # not even connected
        await asyncio.wait_for(history.waiting.wait(), 30)
        for _ in range(5):  # assigned, rebuilding
            assert await _get(ops.port, "/readyz") == 503
            assert await _get(ops.port, "/healthz") == 200
            await asyncio.sleep(0.1)
        history.gate.set()
        await second.wait_assigned()
        await asyncio.sleep(0.3)
        assert second.ready  # warm ...
        assert await _get(ops.port, "/readyz") == 503  # ... but no model yet
        assert "stream_infer_ready 0.0" in metrics.render().decode()
        state["model"] = file_ensemble
        for _ in range(50):
            if await _get(ops.port, "/readyz") == 200:
                break
            await asyncio.sleep(0.05)
        assert await _get(ops.port, "/readyz") == 200
        assert "stream_infer_ready 1.0" in metrics.render().decode()
        # inference disabled by configuration: ready without a model
        state["model"] = None
        second._model_required = False
        await asyncio.sleep(0.3)
        assert await _get(ops.port, "/readyz") == 200
    finally:
        second.request_stop()
        await asyncio.wait_for(task, 30)
        await ops.close()
        await history.stop()

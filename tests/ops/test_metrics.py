"""The metrics the alerts of ops/prometheus need: the serving ensemble's activation time,
the consumer position per partition, series that exist from the start, and per-partition
series dropped when a partition goes to another member (the last with two real members
of one consumer group)."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_infer.candles import RULES, Candle
from stream_infer.events import DECODE_REASONS
from stream_infer.kafka import Service
from stream_infer.ops import DEAD_LETTER_REASONS, SKIP_REASONS, Metrics
from stream_infer.pipeline import Pipeline
from tests.fixtures_kafka import KafkaBroker, TopicsFactory
from tests.kafka._util import BTC, NEAR, interleave, real_candles
from tests.kafka.test_service import keyed, produce, running


def _samples(m: Metrics) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def _activated(m: Metrics) -> dict[str, float]:
    prefix = "stream_infer_ensemble_activated_timestamp_seconds{"
    return {k[len(prefix) - 1 :]: v for k, v in _samples(m).items() if k.startswith(prefix)}


def test_activation_time_is_the_rows_and_survives_the_services_second_report() -> None:
    m = Metrics()
    row_time = time.time() - 9 * 86400
    m.set_ensemble("12", "v3", activated_at=row_time)  # the reload manager, from the row
    m.set_ensemble("12", "v3")  # the service, on its next batch: no time of its own
    assert _activated(m) == {'{ensemble_id="12",version="v3"}': row_time}
    info = {k: v for k, v in _samples(m).items() if k.startswith("stream_infer_ensemble_info{")}
    assert info == {'stream_infer_ensemble_info{ensemble_id="12",version="v3"}': 1.0}


def test_an_ensemble_without_an_activation_record_counts_from_its_load() -> None:
    m = Metrics()
    m.set_ensemble("7", "v1", activated_at=1000.0)
    before = time.time()
    m.set_ensemble("file:v2", "v2")  # another ensemble, from --models: no row, no time
    (when,) = _activated(m).values()
    assert before <= when <= time.time()
    assert list(_activated(m)) == ['{ensemble_id="file:v2",version="v2"}']


def test_no_ensemble_no_activation_series() -> None:
    m = Metrics()
    m.set_ensemble("7", "v1", activated_at=1000.0)
    m.set_ensemble(None, None)
    assert _activated(m) == {}
    assert not any(k.startswith("stream_infer_ensemble_info{") for k in _samples(m))
    # and a later ensemble does not inherit the old time
    m.set_ensemble("7", "v1")
    (when,) = _activated(m).values()
    assert when > 1000.0


def test_known_dead_letter_reasons_and_skip_reasons_start_at_zero() -> None:
    s = _samples(Metrics())
    for reason in DEAD_LETTER_REASONS:
        assert s[f'stream_infer_dead_letters_total{{reason="{reason}"}}'] == 0.0
    for why in SKIP_REASONS:
        assert s[f'stream_infer_candles_skipped_total{{why="{why}"}}'] == 0.0
    # what the pipeline can say: every decode reason, every field's schema, every rule
    assert {r for r in DECODE_REASONS if "<" not in r} <= set(DEAD_LETTER_REASONS)
    assert {f"schema:{f}" for f in Candle.model_fields} <= set(DEAD_LETTER_REASONS)
    assert {f"rule:{r}" for r in RULES} <= set(DEAD_LETTER_REASONS)


def test_position_per_partition_and_forgetting_partitions() -> None:
    m = Metrics()
    m.set_position(0, 1700000000.5)
    m.set_position(1, 1700000001.0)
    for p in (0, 1):
        m.lag.labels(str(p)).set(3)
        m.lag_seconds.labels(str(p)).set(0.2)
    s = _samples(m)
    assert s['stream_infer_consumer_position_timestamp_seconds{partition="0"}'] == 1700000000.5
    m.forget_partitions([1, 5])  # 5 never had series: nothing to drop, no error
    left = {k for k in _samples(m) if 'partition="' in k}
    assert left == {
        'stream_infer_consumer_lag{partition="0"}',
        'stream_infer_consumer_lag_seconds{partition="0"}',
        'stream_infer_consumer_position_timestamp_seconds{partition="0"}',
    }


@pytest.mark.services
async def test_a_member_reports_only_the_partitions_it_owns(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory
) -> None:
    """Two members of one group: after the rebalance each one's per-partition series name
    only its own partitions, and each of those has a position (the idle one's too)."""
    s = kafka_topics(partitions=4)
    # partitions by the default partitioner: AAA 0, NEAR 1, BTC 2 (3 gets nothing)
    feed = interleave(
        [
            real_candles("AAAUSDT", 50, source=NEAR, skip=5_000),
            real_candles("NEARUSDT", 50, source=NEAR),
            real_candles("BTCUSDT", 50, source=BTC),
        ]
    )
    events = keyed(feed)
    ma, mb = Metrics(), Metrics()
    a = Service(Pipeline(None), s, client_id="a", metrics=ma, probe_interval_s=0.2)
    b = Service(Pipeline(None), s, client_id="b", metrics=mb, probe_interval_s=0.2)

    def parts(m: Metrics, name: str) -> set[int]:
        prefix = f'{name}{{partition="'
        return {int(k[len(prefix) : -2]) for k in _samples(m) if k.startswith(prefix)}

    position = "stream_infer_consumer_position_timestamp_seconds"
    async with running(a):
        await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events[:60])
        for _ in range(100):
            if parts(ma, position) == {0, 1, 2, 3}:
                break
            await asyncio.sleep(0.1)
        assert parts(ma, position) == {0, 1, 2, 3}
        async with running(b):
            for _ in range(200):
                if a.assignment and b.assignment and a.ready and b.ready:
                    break
                await asyncio.sleep(0.1)
            owned_a = {tp.partition for tp in a.assignment}
            owned_b = {tp.partition for tp in b.assignment}
            assert owned_a and owned_b and not owned_a & owned_b
            await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events[60:])
            for _ in range(100):
                if parts(ma, position) == owned_a and parts(mb, position) == owned_b:
                    break
                await asyncio.sleep(0.1)
            for name in (position, "stream_infer_consumer_lag_seconds"):
                assert parts(ma, name) <= owned_a, (name, owned_a, _samples(ma))
                assert parts(mb, name) <= owned_b, (name, owned_b, _samples(mb))
            assert parts(ma, position) == owned_a and parts(mb, position) == owned_b
            # a fresh position: within a few probe intervals of now
            now = time.time()
            for m in (ma, mb):
                for k, v in _samples(m).items():
                    if k.startswith(position):
                        assert now - 5 < v <= now + 1, (k, v)

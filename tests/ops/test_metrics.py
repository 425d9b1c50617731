"""The metrics the alerts of ops/prometheus need: the serving ensemble's activation time,
the consumer position per partition, series that exist from the start, and per-partition
series dropped when a partition goes to another member."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from stream_infer.candles import RULES, Candle
from stream_infer.events import DECODE_REASONS
from stream_infer.ops import DEAD_LETTER_REASONS, SKIP_REASONS, Metrics


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

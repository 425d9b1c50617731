"""The alerts test_prometheus.py does not induce, each on its own fault, on one stack whose
broker and Postgres sit behind cuttable proxies (``-m slow``: about five minutes).

In order (each phase needs the state the one before left):

1. Postgres cut while predictions flow, the sink's queue small: StreamInferSinkDroppingRows.
2. The broker cut: StreamInferBrokerUnreachable, then StreamInferNotReady.
3. Only candles of new symbols (warming up, so nothing to predict): StreamInferNoPredictions.
4. Those symbols flooded faster than the service predicts them: StreamInferConsumerLagGrowing.
5. All along, the ensemble ages past a bound set low for the test: StreamInferEnsembleTooOld.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_infer import BrokerError
from tests.fixtures_kafka import TEST_BROKER
from tests.kafka_helpers import run_sync
from tests.ops._prometheus import alert_state, for_seconds, load_rules, rules_for_test
from tests.ops._stack import Feed, Message, Stack, wait
from tests.ops._stack import stack as running_stack
from tests.reliability._harness import ProxiedBroker, proxied_broker
from tests.reliability._load import Produced, make_feed, produce_feed

pytestmark = [pytest.mark.services, pytest.mark.slow]

models = pytest.importorskip("stream_infer.models")

RATE = 30.0
AGE_BOUND_S = 120  # stream_infer:alert_threshold:ensemble_age_seconds in this test
SINK_QUEUE = 60  # DB_SINK_MAX_QUEUE: two seconds of predictions
NEW_SYMBOLS = 64
NEW_LENGTH = 2000  # candles per new symbol: most of the flood is past warm-up (431)
TRICKLE = 3000  # the first new candles, at RATE (no stream gets near 431 of them)

RULES = rules_for_test(load_rules(), thresholds={"ensemble_age_seconds": AGE_BOUND_S})


@pytest.fixture
def proxied_stack(tmp_path: Path) -> Iterator[tuple[Stack, ProxiedBroker]]:
    # A broker of its own (cut in phase 2): Apache Kafka, or Tansu as the suite is told.
    kind = "embedded" if TEST_BROKER == "tansu" else "apache"
    cm = proxied_broker(kind)
    try:
        pb = cm.__enter__()
    except BrokerError as exc:
        pytest.skip(f"no {kind} broker: {exc}")
    try:
        with running_stack(
            pb.bootstrap,
            tmp_path,
            RULES,
            rate=RATE,
            per_stream=2500,
            session_ms=20_000,
            env={"DB_SINK_MAX_QUEUE": str(SINK_QUEUE)},
        ) as st:
            yield st, pb
    finally:
        cm.__exit__(None, None, None)


def _fires(st: Stack, name: str, t0: float, extra_s: float = 20.0) -> dict[str, float]:
    """Waits for ``name`` to fire within its test ``for:`` plus ``extra_s``; prints when."""
    window = for_seconds(RULES, name)
    seen = st.wait_alert(name, t0, window + extra_s)
    assert st.alert(name)["labels"]["instance"] == st.target
    print(
        f"\nPROMETHEUS {name}: pending {seen['active']:.1f} s, firing {seen['firing']:.1f} s "
        f"after the fault (for: {window} s)"
    )
    return seen


@pytest.mark.timeout(900)
def test_every_other_alert_fires_on_its_fault(
    proxied_stack: tuple[Stack, ProxiedBroker],
) -> None:
    st, broker = proxied_stack
    print(f"\nPROMETHEUS stack set up: {st.setup}")
    values = st.prom.values

    # 1. Postgres unreachable: the sink's small queue fills and drops rows
    t0 = time.time()
    st.pg.proxy.cut()
    try:
        _fires(st, "StreamInferSinkDroppingRows", t0)
    finally:
        st.pg.proxy.restore()
    dropped = values('stream_infer_sink_rows_total{result="dropped"}')
    assert [v > 0 for v in dropped.values()] == [True], dropped

    # 2. the broker unreachable: nothing consumed, not ready
    t0 = time.time()
    broker.proxy.cut()
    try:
        _fires(st, "StreamInferBrokerUnreachable", t0)
        _fires(st, "StreamInferNotReady", t0)
    finally:
        broker.proxy.restore()
    wait(lambda: values("stream_infer_ready == 1") != {}, 60, "not ready again after the cut")

    # 3. only new symbols, warming up: candles consumed, none predicted
    st.feed.stop()
    new = make_feed(NEW_SYMBOLS, NEW_LENGTH)
    msgs: list[Message] = [(k, v, "candle") for k, v, _ in new.events]
    trickle = Feed(st.feed.bootstrap, st.feed.topic, msgs[:TRICKLE], RATE).start()
    t0 = time.time()
    try:
        # the predictions' 1-minute rate reaches 0 a minute after the last one
        _fires(st, "StreamInferNoPredictions", t0, extra_s=90)
    finally:
        trickle.stop()
    assert trickle.error is None, trickle.error

    # 4. a flood of those streams, most of it past warm-up: the backlog grows
    t0 = time.time()
    out = Produced()
    run_sync(produce_feed(st.feed.bootstrap, st.feed.topic, new.events[TRICKLE:], out))
    _fires(st, "StreamInferConsumerLagGrowing", t0, extra_s=60)
    print(f"\nPROMETHEUS flood: {out.count} candles in {out.seconds:.1f} s")

    # 5. the ensemble is older than the test's bound by now
    name = "StreamInferEnsembleTooOld"
    age = time.time() - st.activated_at
    left = AGE_BOUND_S + for_seconds(RULES, name) - age
    seen = st.wait_alert(name, time.time(), max(left, 0) + 20)
    alert = st.alert(name)
    assert alert["labels"]["ensemble_id"] == str(st.row) and alert["labels"]["version"] == "v1"
    assert float(alert["value"]) > AGE_BOUND_S
    print(f"\nPROMETHEUS {name}: firing {age + seen['firing']:.0f} s after the activation")
    assert alert_state(st.prom, "StreamInferReloadFailed") is None

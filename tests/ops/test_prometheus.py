"""The shipped rules and dashboard against a real Prometheus scraping a real
``stream-infer run`` (a subprocess, ensemble from Postgres, the predictions sink on) while
real candles and some poison flow.

One stack per module, because a service and a Prometheus take seconds to start and the
1-minute rate windows a minute to fill:

1. healthy (``healthy`` fixture, before any fault): every dashboard query and every recording
   rule returns data and agrees with what the test produced; no alert fires;
2. faults, each reading its alert from /api/v1/alerts: a poison flood (dead letters), a
   broken ensemble activated (failed reload), the service stopped with SIGSTOP while candles
   keep coming (lag).

Prometheus loads the shipped rules with the ``for:`` windows 60 times shorter and the lag
bound at ``LAG_BOUND_S`` (tests/ops/_prometheus.py); every expression is the shipped one.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stream_infer.ops import DEAD_LETTER_REASONS, STAGES
from tests.fixtures_kafka import KafkaBroker
from tests.kafka_helpers import run_sync
from tests.ops._prometheus import (
    alert_state,
    dashboard_queries,
    for_seconds,
    load_rules,
    recording_rules,
    rules_for_test,
    threshold,
)
from tests.ops._stack import SYMBOLS, Stack, poison, wait
from tests.ops._stack import stack as running_stack
from tests.reliability._pg import activate_dir

# The module's set-up (broker, Postgres, service, Prometheus, the healthy minute) runs in
# whichever test needs it first: about 2.5 minutes here, more on a slower machine.
pytestmark = [pytest.mark.services, pytest.mark.timeout(600)]

models = pytest.importorskip("stream_infer.models")

RATE = 30.0  # live candles per second, all streams
PER_STREAM = 2500  # enough for the whole module at RATE (about 3 minutes of feed)
LAG_BOUND_S = 4  # stream_infer:alert_threshold:consumer_lag_seconds in the test
SESSION_MS = 20_000  # the consumer group session: the SIGSTOP pause lasts about 10 s
HEALTHY_S = 70.0  # from Prometheus's first scrape: the 1-minute windows are full
WINDOW_S = 60.0  # the recording rules' rate window
TOLERANCE = 0.10  # predictions/s and candles/s against what the test produced

RULES = rules_for_test(load_rules(), thresholds={"consumer_lag_seconds": LAG_BOUND_S})


@pytest.fixture(scope="module")
def stack(kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A session longer than the SIGSTOP test's pause, so the pause is no rebalance (and no
    # longer: the first join waits about half of it on the embedded broker).
    with running_stack(
        kafka_broker.bootstrap,
        tmp_path_factory.mktemp("prometheus-stack"),
        RULES,
        rate=RATE,
        per_stream=PER_STREAM,
        session_ms=SESSION_MS,
    ) as st:
        print(f"\nPROMETHEUS stack set up: {st.setup}")
        yield st


# -- 1. healthy ---------------------------------------------------------------------------


@dataclass
class Healthy:
    """What the healthy phase saw: the queries at ``at`` and every alert state on the way."""

    at: float
    started: float
    panels: dict[tuple[str, str], list[dict[str, Any]]]
    records: dict[str, list[dict[str, Any]]]
    rule_health: list[tuple[str, str, str]]
    alerts_seen: dict[tuple[str, str], list[str]]  # (name, state) -> when, with the value
    window: Counter[str]  # what the feed acknowledged in (at - WINDOW_S, at]
    total: Counter[str]  # ... and since the start
    dead_letters: dict[str, float]  # stream_infer_dead_letters_total by reason at ``at``


@pytest.fixture(scope="module")
def healthy(stack: Stack) -> Healthy:
    """Runs the healthy phase (before any fault test, whatever their order): the live feed
    with a few poison messages, spread out so no 1-minute window nears the dead-letter
    share; alert states polled every 0.5 s throughout."""
    prom, feed = stack.prom, stack.feed
    started = time.time()
    bad = poison()
    due = [started + 15 + 7 * i for i in range(len(bad))]
    seen: dict[tuple[str, str], list[str]] = {}

    def look() -> None:
        for a in prom.alerts():
            key = (a["labels"]["alertname"], a["state"])
            seen.setdefault(key, []).append(f"{time.time() - started:.0f} s: {a['value']}")

    while time.time() < started + HEALTHY_S:
        while due and time.time() >= due[0]:
            due.pop(0)
            feed.inject([bad.pop(0)])
        look()
        assert feed.alive(), f"the feed stopped: {feed.error!r}"
        time.sleep(0.5)
    assert not bad
    at = time.time() - 1.0  # every rule has been evaluated at a time in (at - 1, at]
    panels = {(q.panel, q.ref): prom.query(q.expr, at) for q in dashboard_queries()}
    records = {name: prom.query(name, at) for name in recording_rules(RULES)}
    health = [
        (g["name"], r["name"], r.get("lastError", ""))
        for g in prom.rule_groups()
        for r in g["rules"]
        if r["health"] != "ok"
    ]
    dead = {
        dict(k)["reason"]: v for k, v in prom.values("stream_infer_dead_letters_total", at).items()
    }
    look()
    return Healthy(
        at=at,
        started=started,
        panels=panels,
        records=records,
        rule_health=health,
        alerts_seen=seen,
        window=feed.count(at - WINDOW_S, at),
        total=feed.count(0, at),
        dead_letters=dead,
    )


def _one(result: list[dict[str, Any]], what: str) -> float:
    assert len(result) == 1, (what, result)
    return float(result[0]["value"][1])


def _by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


def _near(got: float, want: float, what: str, tol: float = TOLERANCE) -> None:
    assert want > 0 and abs(got - want) <= tol * want, f"{what}: {got:.3f} vs {want:.3f}"


def test_healthy_run_every_query_returns_data_that_agrees_and_no_alert_fires(
    stack: Stack, healthy: Healthy
) -> None:
    h = healthy
    # every rule evaluates without error, every query returns data
    assert not h.rule_health, h.rule_health
    empty = [k for k, v in h.panels.items() if not v] + [k for k, v in h.records.items() if not v]
    assert not empty, f"no data for: {empty}"
    # no alert fired (pending ones are reported, the short test windows make them likelier)
    fired = {k: v for k, v in h.alerts_seen.items() if k[1] == "firing"}
    assert not fired, f"alerts fired during the healthy run: {fired}; all seen: {h.alerts_seen}"

    produced = h.window
    candles_s = produced["candle"] / WINDOW_S
    messages_s = sum(produced.values()) / WINDOW_S
    assert candles_s > 0.8 * RATE, f"the feed fell behind: {produced}"
    r = h.records
    # throughput: the recording rules and the dashboard's panel
    _near(
        _one(r["instance:stream_infer_candles_consumed:rate1m"], "consumed"),
        messages_s,
        "candles consumed/s",
    )
    _near(
        _one(r["instance:stream_infer_predictions:rate1m"], "predictions"),
        candles_s,
        "predictions/s",
    )
    throughput = h.panels[("Throughput", "A")], h.panels[("Throughput", "B")]
    _near(_one(throughput[0], "panel consumed"), messages_s, "panel: candles consumed/s")
    _near(_one(throughput[1], "panel predictions"), candles_s, "panel: predictions/s")
    # dead letters by reason: the counters equal the poison sent; the 1-minute rates hold
    # the poison of their window (all of it: it was sent 15-43 s into the run)
    # (every known reason is exported from the start, at 0)
    sent = {k: n for k, n in h.total.items() if k != "candle"}
    assert set(h.dead_letters) >= set(DEAD_LETTER_REASONS)
    assert {k: v for k, v in h.dead_letters.items() if v} == {k: float(n) for k, n in sent.items()}
    in_window = {k: n for k, n in produced.items() if k != "candle"}
    assert in_window == sent, "the poison is not inside the last rate window"
    rates = _by(r["instance_reason:stream_infer_dead_letters:rate1m"], "reason")
    assert set(rates) >= set(DEAD_LETTER_REASONS)
    assert {k: round(v * WINDOW_S) for k, v in rates.items() if v} == in_window
    panel = _by(h.panels[("Dead letters by reason", "A")], "reason")
    assert {k: round(v * WINDOW_S) for k, v in panel.items()} == in_window
    _near(
        _one(r["instance:stream_infer_dead_letters:rate1m"], "dl"),
        sum(in_window.values()) / WINDOW_S,
        "dead letters/s",
        0.1,
    )
    _near(
        _one(r["instance:stream_infer_dead_letter_ratio:rate1m"], "ratio"),
        sum(in_window.values()) / sum(produced.values()),
        "dead-letter share",
        0.15,
    )
    assert _by(r["instance_why:stream_infer_candles_skipped:rate1m"], "why") == {
        "duplicate": 0.0,
        "late": 0.0,
    }
    # latency: every stage, p50 <= p99, inside the histogram's range
    for q in ("p50_1m", "p99_1m"):
        got = _by(r[f"instance_stage:stream_infer_stage_latency_seconds:{q}"], "stage")
        assert set(got) == set(STAGES), got
        assert all(0 < v <= 10.0 for v in got.values()), got
    p50 = _by(r["instance_stage:stream_infer_stage_latency_seconds:p50_1m"], "stage")
    p99 = _by(r["instance_stage:stream_infer_stage_latency_seconds:p99_1m"], "stage")
    assert all(p50[s] <= p99[s] for s in STAGES), (p50, p99)
    # one end-to-end observation per prediction: the histogram counts agree with the rate
    e2e_count = stack.prom.query(
        'sum(rate(stream_infer_stage_latency_seconds_count{stage="end_to_end"}[1m]))', h.at
    )
    _near(_one(e2e_count, "e2e count"), candles_s, "end-to-end observations/s")
    # lag: caught up, on both partitions
    ages = _by(r["instance_partition:stream_infer_consumer_lag_seconds:age"], "partition")
    assert set(ages) == {"0", "1"} and all(0 <= v < LAG_BOUND_S for v in ages.values()), ages
    assert 0 <= _one(r["instance:stream_infer_consumer_lag_seconds:max"], "lag max") < LAG_BOUND_S
    assert 0 <= _one(r["instance:stream_infer_consumer_lag:sum"], "lag sum") <= RATE
    by_part = _by(h.panels[("Lag per partition (records)", "A")], "partition")
    assert set(by_part) == {"0", "1"} and all(0 <= v <= RATE for v in by_part.values())
    # the serving ensemble: the database row, aged since its activation
    (ens,) = r["instance:stream_infer_ensemble_age_seconds:since_activation"]
    assert ens["metric"]["ensemble_id"] == str(stack.row) and ens["metric"]["version"] == "v1"
    assert abs(float(ens["value"][1]) - (h.at - stack.activated_at)) < 3.0, ens
    assert _by(h.panels[("Reloads (24 h)", "A")], "result") == {"ok": 0.0, "failed": 0.0}
    assert _by(h.panels[("Ensemble versions served", "A")], "version") == {"v1": 1.0}
    # the sink writes every prediction, drops none
    sink = _by(r["instance_result:stream_infer_sink_rows:rate1m"], "result")
    _near(sink["written"], candles_s, "sink rows written/s")
    assert sink["dropped"] == sink["rejected"] == sink["duplicate"] == 0.0, sink
    assert _one(h.panels[("Sink backlog", "B")], "failed batches") == 0.0
    assert 0 <= _one(h.panels[("Sink backlog", "A")], "pending") <= 10 * RATE
    # health
    assert _one(h.panels[("Ready and broker reachable", "A")], "ready") == 1.0
    assert _one(h.panels[("Ready and broker reachable", "B")], "reachable") == 1.0
    assert _one(h.panels[("Streams held", "A")], "streams") == len(SYMBOLS)
    assert set(_by(h.panels[("Broker errors by operation", "A")], "op").values()) == {0.0}
    # the thresholds the alerts compared with
    assert _one(r["stream_infer:alert_threshold:consumer_lag_seconds"], "bound") == LAG_BOUND_S
    assert _one(r["stream_infer:alert_threshold:dead_letter_ratio"], "share") == threshold(
        RULES, "dead_letter_ratio"
    )
    print(
        f"\nPROMETHEUS healthy: {candles_s:.2f} candles/s produced, predictions/s "
        f"{_one(r['instance:stream_infer_predictions:rate1m'], 'p'):.2f}; dead letters {sent}; "
        f"e2e p50 {1e3 * p50['end_to_end']:.1f} ms p99 {1e3 * p99['end_to_end']:.1f} ms; "
        f"pending alerts seen: {h.alerts_seen}"
    )


# -- 2. faults ----------------------------------------------------------------------------


def test_poison_flood_fires_the_dead_letter_alert(stack: Stack, healthy: Healthy) -> None:
    name = "StreamInferDeadLetterRateHigh"
    window = for_seconds(RULES, name)
    t0 = time.time()
    stack.feed.inject([(b"NEARUSDT", b"flood %d" % i, "not_json") for i in range(1500)])
    seen = stack.wait_alert(name, t0, window + 20)
    assert seen["active"] <= window, f"{name} not even pending within its for: ({window} s): {seen}"
    alert = stack.alert(name)
    assert alert["labels"]["instance"] == stack.target
    assert float(alert["value"]) > threshold(RULES, "dead_letter_ratio")
    assert "docs/operations.md#" in alert["annotations"]["runbook"]
    print(
        f"\nPROMETHEUS {name}: pending after {seen['active']:.1f} s, firing after {seen['firing']:.1f} s (for: {window} s)"
    )


def _corrupt(d: Path) -> None:
    (d / "mamba.pt").write_bytes(b"\x00garbage" * 100)
    (d / "lgbm_h1.onnx").write_bytes(b"\x08\x07 not onnx" * 10)


def test_broken_ensemble_fires_the_failed_reload_alert(stack: Stack, healthy: Healthy) -> None:
    name = "StreamInferReloadFailed"
    window = for_seconds(RULES, name)
    broken = stack.root / "broken"
    shutil.copytree(stack.root / "v1", broken)
    _corrupt(broken)
    t0 = time.time()
    bad_row = run_sync(activate_dir(stack.pg, broken, version="broken"))
    seen = stack.wait_alert(name, t0, window + 20)
    # the old ensemble keeps serving
    info = stack.prom.values("stream_infer_ensemble_info == 1")
    assert [dict(k)["ensemble_id"] for k in info] == [str(stack.row)], (bad_row, info)
    assert stack.alert(name)["labels"]["instance"] == stack.target
    print(f"\nPROMETHEUS {name}: firing {seen['firing']:.1f} s after activating row {bad_row}")


def test_sigstop_with_candles_coming_fires_the_lag_alert(stack: Stack, healthy: Healthy) -> None:
    name = "StreamInferConsumerLagHigh"
    window = for_seconds(RULES, name)
    os.kill(stack.svc.pid, signal.SIGSTOP)
    t0 = time.time()
    try:
        seen = stack.wait_alert(name, t0, LAG_BOUND_S + window + 20)
        sent_while_stopped = stack.feed.count(t0, time.time())["candle"]
        # the scrapes fail meanwhile: the not-ready alert counts a silent target too
        not_ready = alert_state(stack.prom, "StreamInferNotReady")
    finally:
        os.kill(stack.svc.pid, signal.SIGCONT)
    assert not_ready in ("pending", "firing"), stack.prom.alerts()
    # pending once the bound is passed, within the for: window after that
    assert seen["active"] <= LAG_BOUND_S + window, seen
    assert sent_while_stopped > RATE * LAG_BOUND_S / 2
    # and the lag drains once the process runs again
    back = wait(
        lambda: (
            (v := stack.prom.query("instance:stream_infer_consumer_lag_seconds:max")) != []
            and float(v[0]["value"][1]) < LAG_BOUND_S
        ),
        30,
        "the lag did not drain after SIGCONT",
    )
    print(
        f"\nPROMETHEUS {name}: pending {seen['active']:.1f} s, firing {seen['firing']:.1f} s after "
        f"SIGSTOP (bound {LAG_BOUND_S} s, for: {window} s); {sent_while_stopped} candles sent "
        f"meanwhile; drained {back:.1f} s after SIGCONT"
    )
    assert not math.isnan(back)

"""Smoke tests of the benchmark harness: each benchmark runs at tiny sizes and writes what it
says (keys present, numbers finite and consistent). Timing targets are never checked here:
they are what ``stream-infer bench`` measures (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stream_infer.cli import app
from stream_infer.cli._bench import BENCH_DIR, _plan, render, rows

sys.path.insert(0, str(BENCH_DIR))


def _finite(x: Any, *path: str) -> float:
    for p in path:
        x = x[p]
    assert isinstance(x, int | float) and math.isfinite(x), (path, x)
    return float(x)


@pytest.fixture(scope="module")
def bootstrap() -> Iterator[str]:
    from stream_infer.kafka import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.mark.services  # the naive baseline uses the real Postgres server
def test_bench_cli_writes_json_and_table(
    tmp_path: Path, pg_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = pg_server.rsplit(":", 1)
    monkeypatch.setenv("DB_HOST", host)
    monkeypatch.setenv("DB_PORT", port)
    out, md = tmp_path / "r.json", tmp_path / "B.md"
    args = ["bench", "--quick", "--only", "features", "--only", "naive"]
    r = CliRunner().invoke(app, [*args, "--out", str(out), "--markdown", str(md)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["quick"] is True and res["machine"]["cores"] >= 1
    assert set(res) >= {"machine", "features", "naive"} and "memory" not in res
    assert _finite(res, "features", "stream_update_us_median") > 0
    naive = res["naive"]
    assert _finite(naive, "naive_median_us") > _finite(naive, "ours_median_us") > 0
    assert _finite(naive, "ratio") == pytest.approx(
        naive["naive_median_us"] / naive["ours_median_us"], rel=0.01
    )
    assert set(naive["naive_median_us_by_step"]) == {"db", "frame", "features", "model"}
    # the baseline computes the same features as ours (it is slow, not wrong)
    assert naive["baseline_features_max_rel_diff"] < 1e-6
    table = md.read_text()
    assert "| (1) feature update per candle | StreamingFeatures.update, warm, µs |" in table
    assert f"{res['machine']['cores']} cores" in table and "mode: quick" in table
    assert "| (6) memory" not in table  # not run, no row


@pytest.mark.services
def test_burst_and_throughput_tiny(bootstrap: str) -> None:
    import bench_burst
    import bench_throughput

    b = bench_burst.run(sizes=(3, 8), trials=1, bootstrap=bootstrap)
    for n in ("3", "8"):
        assert _finite(b, "core", n, "total", "median_ms") > 0
        assert _finite(b, "broker", n, "last_in_to_last_out", "median_ms") > 0
        first = _finite(b, "broker", n, "first_in_to_last_out", "median_ms")
        assert first >= b["broker"][n]["last_in_to_last_out"]["median_ms"]
    assert b["broker"]["service"]["predictions"] == 3 + 8
    t = bench_throughput.run(symbols=4, per_symbol=5, bootstrap=bootstrap)
    assert t["broker"]["backlog_candles"] == t["core"]["candles"] == 20
    assert t["broker"]["service"]["predictions"] == 20
    assert _finite(t, "broker", "candles_per_s") > 0 and _finite(t, "core", "candles_per_s") > 0
    assert set(t["core"]["us_per_candle"]) == {"total", "decode", "features", "model"}


@pytest.mark.services
def test_e2e_echo_floor_tiny(bootstrap: str) -> None:
    import asyncio

    import bench_e2e

    # the bare echo forwards every candle once: n timed + 20 that warm the connections
    r = asyncio.run(bench_e2e._single(bootstrap, bench_e2e.SHIPPED, 5, 1, False, echo=True))
    assert r["n"] == 5 and _finite(r, "median_ms") > 0
    assert r["service"]["predictions"] == 25


def test_memory_tiny() -> None:
    import bench_memory

    m = bench_memory.run((40,), trace_streams=10)
    (one,) = m["results"]
    assert one["streams"] == one["ready_streams"] == 40
    assert _finite(one, "kb_per_stream") > 0
    where = m["where"]
    assert where["traced_streams"] == 10 and where["top_sites"]
    # a ready stream keeps seq_len feature rows: the biggest single part of it
    parts = where["one_stream_bytes_by_attribute"]
    assert max(parts, key=parts.get) == "_rows" and parts["_rows"] >= 64 * 27 * 8


def test_unknown_benchmark_is_one_clear_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "--only", "nope", "--out", str(tmp_path / "x.json")])
    assert r.exit_code != 0
    assert "unknown benchmark" in str(r.exception)


def test_table_marks_misses_and_passes() -> None:
    res = {
        "machine": {
            "cpu": "x",
            "cores": 2,
            "memory_gib": 1,
            "python": "3.11",
            "torch": "t",
            "onnxruntime": "o",
            "date": "d",
            "load_avg_1m": 0.0,
        },
        "quick": False,
        "e2e": {
            "single": [{"fetch_max_wait_ms": 5, "median_ms": 7.0, "p99_ms": 12.0}],
            "single_floor": {"fetch_max_wait_ms": 1, "median_ms": 5.5, "p99_ms": 9.0},
            "single_echo": {"fetch_max_wait_ms": 1, "median_ms": 4.75, "p99_ms": 8.0},
        },
        "burst": {"broker": {"100": {"last_in_to_last_out": {"median_ms": 90.0, "p99_ms": 99}}}},
        "memory": {"results": [{"streams": 1000, "kb_per_stream": 40.0}]},
        "naive": {"ratio": 30.0, "naive_median_us": 20000.0},
        "throughput": {"skipped": "the Kafka service is not there yet"},
    }
    table = render(res)
    assert "| 7.00 | 12.00 | median <= 5 ms, p99 <= 25 ms | **no** |" in table
    assert (
        "model that costs nothing (broker + service I/O), ms; fetch wait 1 ms | 5.50 | 9.00 |"
        in table
    )
    assert (
        "bare aiokafka echo, no stream_infer code (the broker's floor), ms; fetch wait 1 ms | 4.75 | 8.00 |"
        in table
    )
    assert "| 90.0 | 99.0 | <= 150 ms | yes |" in table
    assert (
        "| (6) memory, 1,000 warm streams | RSS beyond the baseline, KB per stream | 40.0 |"
        in table
    )
    assert (
        "| ratio of medians, one candle at a time (no broker), x | 30.0 |  | >= 20x | yes |"
        in table
    )
    assert (
        "| (5) sustained throughput, Tansu | full inference through the broker, candles/s | not run |"
        in table
    )
    assert "throughput: skipped (the Kafka service is not there yet)" in table
    # through the broker: 20 ms naive / 7 ms ours
    ratio = next(r for r in rows(res) if "ours through the broker" in r.metric)
    assert ratio.median == pytest.approx(20 / 7, abs=0.05)


def test_bootstrap_reaches_every_broker_benchmark_and_the_table() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.kwargs: dict[str, Any] = {}

        def run(self, **kw: Any) -> dict[str, Any]:
            self.kwargs = kw
            return {}

    plan = _plan(False, "kafka.example:9092")
    for name in ("e2e", "burst", "throughput"):
        rec = Recorder()
        plan[name][1](rec)
        assert rec.kwargs["bootstrap"] == "kafka.example:9092", name
    rec = Recorder()
    _plan(True)["e2e"][1](rec)
    assert rec.kwargs["bootstrap"] is None  # the embedded broker
    res: dict[str, Any] = {
        "machine": {
            k: "x" for k in ("cpu", "cores", "memory_gib", "python", "torch", "onnxruntime")
        }
        | {"date": "d", "load_avg_1m": 0.0},
        "quick": True,
        "broker": "kafka.example:9092",
    }
    assert "Brokers: the Kafka at kafka.example:9092 (`--bootstrap`)." in render(res)
    assert "the embedded Tansu broker" in render({**res, "broker": "embedded"})


def test_the_brokers_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """One run: the broker benchmarks on Tansu (each starts its own) and on one Apache Kafka
    started for the run; the table shows both, each against its own targets."""
    from stream_infer.cli import _bench

    calls: list[tuple[str, Any]] = []

    class Bench:
        def __init__(self, name: str) -> None:
            self.name = name

        def run(self, **kw: Any) -> dict[str, Any]:
            calls.append((self.name, kw.get("bootstrap")))
            return {"ran": self.name}

    started: list[str] = []

    def start(stack: Any, echo: Any) -> str:
        started.append("apache")
        return "127.0.0.1:1234"

    monkeypatch.setattr(_bench, "_load", lambda m: Bench(m) if m != "_common" else _Machine())
    monkeypatch.setattr(_bench, "_start_apache", start)
    res = _bench.run_suite(("features", "e2e", "burst", "throughput"), quick=True)
    assert started == ["apache"]
    assert calls == [
        ("bench_features", None),
        ("bench_e2e", None),
        ("bench_burst", None),
        ("bench_throughput", None),
        ("bench_e2e", "127.0.0.1:1234"),
        ("bench_burst", "127.0.0.1:1234"),
        ("bench_throughput", "127.0.0.1:1234"),
    ]
    assert {"e2e", "e2e@apache", "throughput@apache"} <= set(res)
    table = render(
        {
            **res,
            "e2e@apache": {"single": [{"fetch_max_wait_ms": 5, "median_ms": 2.5, "p99_ms": 6.0}]},
            "throughput": {"broker": {"candles_per_s": 2500.0}},
            "throughput@apache": {"broker": {"candles_per_s": 2400.0}},
        }
    )
    assert (
        "| (3) one symbol end to end, Apache Kafka | produce -> prediction consumed, ms; "
        "fetch wait 5 ms; max nan ms | 2.50 | 6.00 | median <= 3 ms, p99 <= 10 ms | yes |"
    ) in table
    assert (
        "| (5) sustained throughput, Apache Kafka | full inference through the broker, "
        "candles/s | 2,400 |  | >= 2,000 /s and >= Tansu's 2,500 /s | **no** |"
    ) in table
    assert "Apache Kafka 4" in table and "the embedded Tansu broker" in table


class _Machine:
    @staticmethod
    def machine() -> dict[str, Any]:
        return {
            k: "x" for k in ("cpu", "cores", "memory_gib", "python", "torch", "onnxruntime")
        } | {
            "date": "d",
            "load_avg_1m": 0.0,
        }


@pytest.mark.services
def test_library_tiny(pg_server: str) -> None:
    import bench_library

    from tests.fixtures_pg import PG_HOST, pg_port

    r = bench_library.run(
        calls=4, symbols=3, calls_many=2, cold_trials=1, host=PG_HOST, port=pg_port()
    )
    assert "skipped" not in r and "error" not in r, r
    assert r["one"]["n"] == 4 and r["one"]["streams"] == 1
    assert r["many"]["n"] == 2 and r["many"]["streams"] == 3
    for key in ("one", "many", "cold_one", "cold_many"):
        assert _finite(r, key, "median_ms") > 0
    # inside the call's own clock: call start -> predictions built, never more than the call
    assert 0 < r["one"]["latency_ms_median"] <= r["one"]["max_ms"]
    from stream_infer.features import WARMUP

    assert r["need"] > WARMUP  # warm-up plus the model's window, from the library itself
    table = render(
        {
            "machine": {
                "cpu": "x",
                "cores": 2,
                "memory_gib": 1,
                "python": "3.11",
                "torch": "t",
                "onnxruntime": "o",
                "date": "d",
                "load_avg_1m": 0.0,
            },
            "quick": True,
            "library": r,
        }
    )
    assert "| (8) library call from Postgres | run_inference_pipeline, one symbol" in table
    assert "the same, 3 symbols in one call, ms" in table

"""benchmarks/bench_features.py stays importable and runnable (a small smoke run); the one
timing comparison runs with ``-m slow`` only (timings are the benchmarks' business)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from tests.conftest import DATA, REPO


def _run_bench() -> tuple[Any, dict[str, Any]]:
    spec = importlib.util.spec_from_file_location(
        "bench_features", REPO / "benchmarks" / "bench_features.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz", tail=512, samples=4)
    return bench, res


def test_bench_runs_and_reports() -> None:
    bench, res = _run_bench()
    assert res["timed_updates"] == 5738 - 512 and res["naive_samples"] == 4
    assert res["naive_batch_features_max_err"] <= 1e-9  # the tail recompute agrees with streaming
    assert "median" in bench.report(res)


@pytest.mark.slow
def test_bench_batch_recompute_is_slower_than_streaming() -> None:
    _, res = _run_bench()
    assert res["ratio_batch_features_over_stream"] > 1.0

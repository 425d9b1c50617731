"""benchmarks/bench_features.py stays importable and runnable (a small smoke run, not a timing)."""

from __future__ import annotations

import importlib.util

from tests.conftest import DATA, REPO


def test_bench_runs_and_reports() -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_features", REPO / "benchmarks" / "bench_features.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz", tail=512, samples=4)
    assert res["timed_updates"] == 5738 - 512 and res["naive_samples"] == 4
    assert res["naive_batch_features_max_err"] <= 1e-9  # the tail recompute agrees with streaming
    assert res["ratio_batch_features_over_stream"] > 1.0
    assert "median" in bench.report(res)

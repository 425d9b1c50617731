"""Soak: a long run of ``stream-infer run`` with hot reloads, watching for leaks.

``-m slow`` (standalone: ``pytest -m slow tests/reliability/test_soak.py``): 1,000,000
candles (100 synthetic symbols x 10,000 real candles each, see ``_load.py``) and 50 hot
reloads, alternating two model directories with different Mamba weights (0.3 and 0.7) in
Postgres. The default run does the same at small scale: 20,000 candles, 3 reloads.

The producer keeps at most 20,000 candles ahead of the service (a steady stream, not a
flood: that is test_backpressure). The test reads every prediction as it arrives and
checks that every ready candle is predicted exactly once, by an ensemble that was
activated, with that row's weight (p = w * mamba + (1 - w) * lgbm, per horizon); on a
sample of the symbols (all of them in the small run) every value equals the offline
twin of the directory that served it. Resources from /proc: RSS once every stream is warm
and 10% of the candles are through vs at the end (growth < 10%), open file descriptors
and threads at that point vs at the end (no growth).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_infer.config import DatabaseSettings
from stream_infer.db import Database, migrate
from stream_infer.events import decode_prediction
from stream_infer.pipeline import ready_candles
from tests.fixtures_kafka import TopicsFactory
from tests.kafka._util import offline
from tests.kafka_helpers import Collector
from tests.reliability._harness import ServiceProc, metric, record
from tests.reliability._load import Produced, make_feed, produce_feed
from tests.reliability._pg import activate_dir

pytestmark = pytest.mark.services

models = pytest.importorskip("stream_infer.models")

AHEAD = 20_000  # the producer waits while this many candles are not consumed yet
WEIGHTS = {"a": 0.3, "b": 0.7}


class PredictionReader(Collector):
    """Reads the predictions topic in the background and checks each prediction as it comes
    (1M pydantic objects would not fit a test's budget): counts per key and per ensemble,
    the combination rule against the weight of the row that made it, and keeps the full
    predictions of the sampled symbols."""

    def __init__(
        self, bootstrap: str, topic: str, weights: dict[str, float], sampled: set[str]
    ) -> None:
        super().__init__(bootstrap, topic, max_poll_records=5000)
        self.weights = weights  # ensemble_id -> mamba weight, filled as rows are activated
        self.sampled = sampled
        self.copies: Counter[tuple[str, int]] = Counter()
        self.by_ensemble: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self.kept: list[Any] = []
        self.worst_rule_error = 0.0
        self.count = 0

    def keep(self, record: Any) -> None:
        self._check(record.value)

    def _check(self, value: bytes) -> None:
        d = orjson.loads(value)
        key = (d["symbol"], d["open_time"])
        self.copies[key] += 1
        ens = d["ensemble_id"]
        self.by_ensemble[ens] += 1
        w = self.weights.get(ens)
        if w is None:  # no row of this id was activated: the test fails on it
            self.unknown[ens] += 1
        else:
            for p, m, g in zip(
                d["predictions"], d["components"]["mamba"], d["components"]["lgbm"], strict=True
            ):
                err = abs(p - (w * m + (1 - w) * g))
                self.worst_rule_error = max(self.worst_rule_error, err)
        if d["symbol"] in self.sampled:
            self.kept.append(decode_prediction(value))
        self.count += 1


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, what
        await asyncio.sleep(0.2)
    return time.monotonic() - t0


async def _resources(svc: ServiceProc, consumed: float, t: float) -> dict[str, Any]:
    """RSS, and the open descriptors and threads that persist: the least of 5 readings over
    0.8 s (a scrape's socket or a short-lived worker is not a leak; a leak stays)."""
    fds: list[tuple[int, dict[str, int]]] = []
    threads: list[int] = []
    for i in range(5):
        if i:
            await asyncio.sleep(0.2)
        kinds = svc.fd_kinds()
        fds.append((sum(kinds.values()), dict(kinds)))
        threads.append(svc.threads())
    n_fds, kinds = min(fds, key=lambda x: x[0])
    return {
        "t": round(t, 1),
        "consumed": consumed,
        "rss_mb": round(svc.rss_mb(), 1),
        "fds": n_fds,
        "threads": min(threads),
        "fd_kinds": kinds,
    }


async def _soak(
    pg_settings: DatabaseSettings,
    kafka_topics: TopicsFactory,
    ensemble_dir: Path,
    tmp_path: Path,
    *,
    n_symbols: int,
    length: int,
    reloads: int,
    sample_every: int,
) -> None:
    s = kafka_topics(partitions=2)
    db = Database(pg_settings)
    try:
        async with db.acquire() as conn:
            await migrate(conn)
    finally:
        await db.close()
    root = tmp_path / "models"
    for d in WEIGHTS:
        shutil.copytree(ensemble_dir, root / d)
    feed = make_feed(n_symbols, length)
    total = len(feed.events)
    seq_len = int(orjson.loads((ensemble_dir / "manifest.json").read_bytes())["seq_len"])
    want_keys = feed.ready_keys(seq_len)
    sampled = set(feed.symbols[::sample_every])
    weights: dict[str, float] = {}
    rows: list[tuple[int, str]] = []  # (row id, directory) in activation order

    async def activate(k: int) -> None:
        d = "ab"[k % 2]
        row = await activate_dir(pg_settings, root / d, version=f"{d}-{k}", weight=WEIGHTS[d])
        weights[str(row)] = WEIGHTS[d]
        rows.append((row, d))

    await activate(0)
    env = {
        "DB_HOST": str(pg_settings.host),
        "DB_PORT": str(pg_settings.port),
        "DB_NAME": pg_settings.name,
        "DB_USER": pg_settings.user,
        "DB_SSLMODE": "disable",
        "ML_MODELS_ROOT": str(root),
        "ML_RELOAD_POLL_S": "1",
    }
    bootstrap = s.kafka_bootstrap_servers
    log = tmp_path / "service.log"
    produced = Produced()
    series: list[dict[str, Any]] = []
    warm_at = max(total // 10, n_symbols * ready_candles(seq_len) + 2 * s.kafka_max_poll_records)
    warm: dict[str, Any] | None = None
    reload_s: list[float] = []
    svc = ServiceProc(s, log, env=env)
    t0 = time.monotonic()
    try:
        await svc.wait_ready(90)
        start = await _resources(svc, 0, 0.0)

        def consumed() -> float:
            return metric(svc.metrics(), "stream_infer_candles_consumed_total")

        # Reload k is activated once the service has consumed points[k] candles (and the
        # row serving has predicted); until it has swapped, the producer stops halfway to
        # points[k + 1]: the service is at work during every reload, and every row serves
        # part of the stream.
        warm_up = n_symbols * ready_candles(seq_len)
        points = [warm_up + i * (total - warm_up) // (reloads + 1) for i in range(reloads + 2)]
        done = 0

        def allowed() -> int:
            k = done + 1
            return total if k > reloads else (points[k] + points[k + 1]) // 2

        async def hold() -> None:
            while produced.count - consumed() > AHEAD or produced.count >= allowed():
                await asyncio.sleep(0.1)

        async with PredictionReader(bootstrap, s.kafka_predictions_topic, weights, sampled) as rd:
            producing = asyncio.create_task(
                produce_feed(
                    bootstrap, s.kafka_candles_topic, feed.events, produced, window=500, hold=hold
                )
            )

            async def sample() -> None:
                nonlocal warm
                while True:
                    x = await _resources(svc, consumed(), time.monotonic() - t0)
                    series.append(x)
                    if warm is None and x["consumed"] >= warm_at:
                        warm = x
                    await asyncio.sleep(2.0)

            sampler = asyncio.create_task(sample())
            try:
                for k in range(1, reloads + 1):
                    serving = str(rows[-1][0])
                    await _until(
                        lambda k=k, serving=serving: (
                            consumed() >= points[k] and rd.by_ensemble[serving] > 0
                        ),
                        600,
                        f"stuck before reload {k}: {produced.count} produced, {svc.tail()}",
                    )
                    t_act = time.monotonic()
                    await activate(k)
                    await _until(
                        lambda k=k: (
                            metric(svc.metrics(), "stream_infer_reloads_total", result="ok") >= k
                        ),
                        60,
                        f"reload {k} did not happen: {svc.tail()}",
                    )
                    reload_s.append(time.monotonic() - t_act)
                    done = k
                await producing
                await _until(
                    lambda: rd.count >= len(want_keys),
                    max(120.0, total / 1000),
                    f"{rd.count} of {len(want_keys)} predictions: {svc.tail()}",
                )
                await asyncio.sleep(2.0)  # a late duplicate would show now
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            m = svc.metrics()
            end = await _resources(
                svc, metric(m, "stream_infer_candles_consumed_total"), time.monotonic() - t0
            )
            hwm = svc.hwm_mb()
        assert svc.stop() == 0
    finally:
        svc.kill()
    wall_s = time.monotonic() - t0
    assert warm is not None, series[-3:]

    # every ready candle predicted exactly once, by an activated row, with its weight
    missing = want_keys - set(rd.copies)
    extra = set(rd.copies) - want_keys
    assert not missing, f"{len(missing)} candles lost their prediction, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} predictions for no ready candle, e.g. {sorted(extra)[:5]}"
    duplicates = sum(n - 1 for n in rd.copies.values())
    assert duplicates == 0, Counter(rd.copies.values())
    assert rd.worst_rule_error < 1e-6, rd.worst_rule_error
    assert not rd.unknown, f"predictions from ensembles no row activated: {rd.unknown}"
    assert set(rd.by_ensemble) <= set(weights)
    assert all(rd.by_ensemble[str(r)] > 0 for r, _ in rows), (rows, rd.by_ensemble)
    assert metric(m, "stream_infer_reloads_total", result="ok") == reloads
    assert metric(m, "stream_infer_reloads_total", result="failed") == 0
    assert metric(m, "stream_infer_candles_consumed_total") == total
    # the sampled streams: every value equals the twin of the directory that served it
    subset = [v for _, v, k in feed.events if k[0] in sampled]
    twins = {
        d: offline(
            models.load_ensemble(root / d, mamba_weight=w, ensemble_id=d, version=d), subset
        )[0]
        for d, w in WEIGHTS.items()
    }
    served_by = {str(r): d for r, d in rows}
    assert len(rd.kept) == sum(1 for k in want_keys if k[0] in sampled)
    for p in rd.kept:
        ref = twins[served_by[p.ensemble_id]][(p.symbol, p.open_time)]
        assert p.horizons == ref.horizons and p.feature_version == ref.feature_version
        for a, b in zip(p.predictions, ref.predictions, strict=True):
            assert abs(a - b) <= 1e-6, (p, ref)
        for name in ("mamba", "lgbm"):
            for a, b in zip(p.components[name], ref.components[name], strict=True):
                assert abs(a - b) <= 1e-6, (name, p, ref)

    # resources: no leak
    growth = (end["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"]
    assert growth < 0.10, f"RSS grew {100 * growth:.1f}% after warm-up: {series[::5]}"
    assert end["fds"] <= warm["fds"], (
        f"file descriptors grew: {warm['fd_kinds']} -> {end['fd_kinds']}; {series[::5]}"
    )
    assert end["threads"] <= warm["threads"], f"threads grew: {series[::5]}"
    record(
        f"soak: {total:,} candles, {reloads} hot reloads",
        candles=total,
        symbols=n_symbols,
        expected_predictions=len(want_keys),
        predictions_received=rd.count,
        lost=0,
        duplicates=duplicates,
        reloads_ok=int(metric(m, "stream_infer_reloads_total", result="ok")),
        reloads_failed=0,
        reload_s_max=round(max(reload_s, default=0.0), 2),
        values_compared=len(rd.kept),
        wall_s=round(wall_s),
        candles_per_s=round(total / wall_s),
        rss_mb_start=start["rss_mb"],
        rss_mb_warm=warm["rss_mb"],
        rss_mb_end=end["rss_mb"],
        rss_mb_peak=round(hwm, 1),
        rss_growth_pct=round(100 * growth, 2),
        fds=[start["fds"], warm["fds"], end["fds"]],
        threads=[start["threads"], warm["threads"], end["threads"]],
        warm_at_candles=int(warm["consumed"]),
        # (t s, consumed, RSS MiB, fds, threads), ~every 20 s
        series=[
            [x["t"], int(x["consumed"]), x["rss_mb"], x["fds"], x["threads"]] for x in series[::10]
        ],
    )


async def test_soak_small(
    pg_settings: DatabaseSettings, kafka_topics: TopicsFactory, ensemble_dir: Path, tmp_path: Path
) -> None:
    """20,000 candles, 3 reloads, every value compared (the default run's version)."""
    await _soak(
        pg_settings,
        kafka_topics,
        ensemble_dir,
        tmp_path,
        n_symbols=20,
        length=1000,
        reloads=3,
        sample_every=1,
    )


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_soak_a_million_candles_and_50_reloads(
    pg_settings: DatabaseSettings, kafka_topics: TopicsFactory, ensemble_dir: Path, tmp_path: Path
) -> None:
    n_symbols = int(os.environ.get("RELIABILITY_SOAK_SYMBOLS", "100"))
    await _soak(
        pg_settings,
        kafka_topics,
        ensemble_dir,
        tmp_path,
        n_symbols=n_symbols,
        length=int(os.environ.get("RELIABILITY_SOAK_LENGTH", "10000")),
        reloads=int(os.environ.get("RELIABILITY_SOAK_RELOADS", "50")),
        sample_every=max(1, n_symbols // 3),
    )

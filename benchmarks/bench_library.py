"""The seed's library call, ``run_inference_pipeline(db, manager)``, from Postgres candles.

Setup: a database created for the run on DB_HOST (default 127.0.0.1:5432, user postgres,
trust) over loopback, migrated; ``symbols`` streams of real NEARUSDT candles
(``symbol_candles``: each from another part of the month, its own price scale) loaded
with readiness's worth of history (``history_need``: warm-up + seq_len) and a margin; the
shipped ensemble in a ``ModelManager``; default asyncio event loop (the caller's).

Measured, wall clock around one ``await run_inference_pipeline(...)``, the database
queries included:

* warm manager, the seed's minute: before each call one new closed candle per stream is
  inserted (one INSERT, outside the timing), then the call predicts the newest candle of
  each stream. One symbol (``symbol=...``) and ``symbols`` streams (``symbol=None``).
  A warm manager holds each stream's feature state from its last call, so a call reads
  the rows inserted since (an index probe per stream, plus a fingerprint of the rows it
  holds), updates the features once per new candle and runs the model once for all.
* the same, every held stream's fingerprint read on each call (a schema without the
  change count of migration 2): the gain of that count.
* the model floor: ``Ensemble.predict`` alone on a batch of as many windows, timed right
  after each call (what no implementation of the call can go below on this machine now).
* cold: a manager that holds nothing (the first call of a process, or the state of the
  art before this work: read every stream's window, warm its features from scratch).
  The ratio cold/warm of the medians is the gain of holding the state.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHIPPED, missing, summary_ms, symbol_candles

MARGIN = 10  # candles beyond readiness already in the table at the start


def _frame(candles: list[Any]) -> Any:
    import pandas as pd

    from stream_infer.candles import CANDLE_COLUMNS

    return pd.DataFrame([c.model_dump() for c in candles], columns=list(CANDLE_COLUMNS))


async def _calls(
    db: Any,
    manager: Any,
    streams: list[list[Any]],
    first: list[int],
    calls: int,
    symbol: str | None,
) -> dict[str, Any]:
    """``calls`` timed calls; before each, stream ``j``'s candle ``first[j] + k`` is inserted
    (one INSERT for all, not timed). Every call must predict each stream's newest candle."""
    import numpy as np

    from stream_infer.db import load_candles
    from stream_infer.pgsource import run_inference_pipeline

    ms: list[float] = []
    inside: list[float] = []
    floor: list[float] = []
    ensemble = manager.current
    windows = np.random.default_rng(0).normal(size=(len(streams), ensemble.seq_len, 27))
    await run_inference_pipeline(db, manager, symbol=symbol)  # the cold read, not timed
    for k in range(calls):
        new = [s[f + k] for s, f in zip(streams, first, strict=True)]
        async with db.acquire() as conn:
            await load_candles(conn, _frame(new))
        t0 = time.perf_counter()
        result = await run_inference_pipeline(db, manager, symbol=symbol)
        ms.append((time.perf_counter() - t0) * 1000.0)
        inside.append(result.latency_ms)
        t0 = time.perf_counter()
        ensemble.predict(windows)  # the model alone on a batch this size, beside each call
        floor.append((time.perf_counter() - t0) * 1000.0)
        got = {p.symbol: p.open_time for p in result.predictions}
        if result.skipped or got != {c.symbol: c.open_time for c in new}:
            raise RuntimeError(
                f"not one prediction per stream's newest candle: {result.skipped[:2]}"
            )
    out = summary_ms(ms)
    out["latency_ms_median"] = round(statistics.median(inside), 3)  # call start -> built
    out["model_floor_ms_median"] = round(statistics.median(floor), 3)
    out["streams"] = len(streams)
    return out


async def _cold(db: Any, make_manager: Any, symbol: str | None, trials: int) -> dict[str, Any]:
    from stream_infer.pgsource import run_inference_pipeline

    ms: list[float] = []
    for _ in range(trials):
        manager = make_manager()
        t0 = time.perf_counter()
        await run_inference_pipeline(db, manager, symbol=symbol)
        ms.append((time.perf_counter() - t0) * 1000.0)
    return summary_ms(ms)


async def _main(
    ensemble: Any,
    models: Path,
    host: str,
    port: int,
    calls: int,
    symbols: int,
    calls_many: int,
    cold_trials: int,
) -> dict[str, Any]:
    import asyncpg

    from stream_infer.config import DatabaseSettings, resolve_ensemble
    from stream_infer.db import Database, load_candles, migrate
    from stream_infer.pgsource import history_need_of
    from stream_infer.pipeline import Pipeline
    from stream_infer.reload import ModelManager

    config = resolve_ensemble(None, env={"ML_LGBM_MODELS_DIR": str(models)})

    def make_manager() -> Any:
        return ModelManager(config, ensemble)

    # the library's own readiness (warm-up + seq_len), not a number written here
    need = history_need_of(Pipeline(ensemble, keep_rows=1))
    start = need + MARGIN
    name = f"bench_library_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(host=host, port=port, user="postgres", database="postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    settings = DatabaseSettings(host=host, port=port, name=name, user="postgres", sslmode="disable")
    db = Database(settings)
    try:
        async with db.acquire() as conn:
            await migrate(conn)
        # stream 0 is the one-symbol stream; all ``symbols`` streams are the many-symbol case
        streams = symbol_candles(symbols, start + calls + 2 * calls_many, prefix="L")
        async with db.acquire() as conn:
            await load_candles(conn, _frame([c for s in streams for c in s[:start]]))
            await conn.execute("ANALYZE candles")
        sym = streams[0][0].symbol
        warm_one = await _calls(db, make_manager(), streams[:1], [start], calls, sym)
        warm_many = await _calls(
            db,
            make_manager(),
            streams,
            [start + calls] + [start] * (symbols - 1),
            calls_many,
            None,
        )
        # the same without the change count: every call reads each held stream's
        # fingerprint (what it does on a schema without candle_changes)
        uncounted = make_manager()
        from stream_infer.pgsource._infer import _streams

        _streams(uncounted, db, "1m").counted = False  # a benchmark may reach inside
        many_fingerprint = await _calls(
            db,
            uncounted,
            streams,
            [start + calls + calls_many] + [start + calls_many] * (symbols - 1),
            calls_many,
            None,
        )
        cold_one = await _cold(db, make_manager, sym, cold_trials)
        cold_many = await _cold(db, make_manager, None, cold_trials)
    finally:
        await db.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {
        "need": need,
        "one": warm_one,
        "many": warm_many,
        "many_fingerprint": many_fingerprint,
        "cold_one": cold_one,
        "cold_many": cold_many,
        "ratio_one": round(cold_one["median_ms"] / warm_one["median_ms"], 1),
        "ratio_many": round(cold_many["median_ms"] / warm_many["median_ms"], 1),
        "ratio_count": round(many_fingerprint["median_ms"] / warm_many["median_ms"], 2),
    }


def run(
    *,
    models: Path = SHIPPED,
    calls: int = 300,
    symbols: int = 100,
    calls_many: int = 40,
    cold_trials: int = 5,
    host: str | None = None,
    port: int | None = None,
) -> dict[str, Any]:
    """``host``/``port``: the Postgres server (default DB_HOST, DB_PORT or 127.0.0.1:5432)."""
    host = host or os.environ.get("DB_HOST", "127.0.0.1")
    port = port or int(os.environ.get("DB_PORT", "5432"))
    why = missing("models") or _reachable(host, port)
    if why:
        return {"skipped": why}
    from stream_infer.cli._replay import _load_ensemble

    ensemble = _load_ensemble(models, None, 1)
    return asyncio.run(_main(ensemble, models, host, port, calls, symbols, calls_many, cold_trials))


def _reachable(host: str, port: int) -> str | None:
    import socket

    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        return f"no Postgres server at {host}:{port} ({exc})"
    return None

"""The naive baseline, measured side by side with stream_infer in the same run.

Naive: what a service built on the training code would do, per new candle: insert it into
Postgres, SELECT the symbol's last 512 candles (``ORDER BY open_time DESC LIMIT 512``),
build a DataFrame, recompute the 27 features over them with pandas rolling/ewm
(:func:`_baseline.pandas_features`, written the way a training script would: it is the BASELINE,
not our product, and follows docs/feature-spec.md only approximately, e.g. its EMAs start at the
512-candle window instead of the stream's start), take the last ``seq_len`` rows and
predict with the same ensemble. A real Postgres (DB_HOST, default 127.0.0.1:5432, user
postgres, trust) holds the candles in a database created for the run and dropped after.

stream_infer: ``Pipeline.process`` of that one candle's message (decode, rules, O(1)
feature update, the same ensemble), warm, no broker. Also: the per-candle cost when
``symbols`` streams close at once (one micro-batch). Reported: medians and p99 per
candle, the naive cost split by step, and the ratios of the medians. The ratio through
the broker (one symbol end to end) is computed by ``stream-infer bench`` from bench_e2e.
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

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baseline import pandas_features
from _common import SHIPPED, SOURCE, history_len, missing, pct, symbol_candles

from stream_infer.candles import CANDLE_FIELDS

_COLS = CANDLE_FIELDS
TAIL = 512


async def _naive(
    rows: list[dict[str, Any]], start: int, n: int, ensemble: Any, db: str
) -> dict[str, list[float]]:
    import asyncpg

    host = os.environ.get("DB_HOST", "127.0.0.1")
    port = int(os.environ.get("DB_PORT", "5432"))
    admin = await asyncpg.connect(host=host, port=port, user="postgres", database="postgres")
    await admin.execute(f'CREATE DATABASE "{db}"')
    try:
        conn = await asyncpg.connect(host=host, port=port, user="postgres", database=db)
        try:
            await conn.execute(
                "CREATE TABLE candles (symbol text, open_time bigint, open float8, "
                "high float8, low float8, close float8, volume float8, quote_volume float8, "
                "trades bigint, taker_buy_base float8, taker_buy_quote float8, "
                "spread_bps float8, PRIMARY KEY (symbol, open_time))"
            )

            def record(r: dict[str, Any]) -> tuple[Any, ...]:
                return ("NEARUSDT", *(None if c == "spread_bps" else r[c] for c in _COLS))

            await conn.copy_records_to_table(
                "candles", records=[record(r) for r in rows[:start]], columns=["symbol", *_COLS]
            )
            await conn.execute("ANALYZE candles")
            cols = ", ".join(_COLS)
            marks = ", ".join(f"${i}" for i in range(1, len(_COLS) + 2))
            insert = f"INSERT INTO candles (symbol, {cols}) VALUES ({marks})"
            select = (
                f"SELECT {cols} FROM candles WHERE symbol = $1 ORDER BY open_time DESC LIMIT {TAIL}"
            )
            steps: dict[str, list[float]] = {
                k: [] for k in ("total", "db", "frame", "features", "model")
            }
            seq_len = ensemble.seq_len
            for r in rows[start : start + n]:
                t0 = time.perf_counter()
                await conn.execute(insert, *record(r))
                got = await conn.fetch(select, "NEARUSDT")
                t1 = time.perf_counter()
                df = pd.DataFrame([dict(x) for x in reversed(got)], columns=list(_COLS))
                t2 = time.perf_counter()
                window = pandas_features(df, seq_len)
                t3 = time.perf_counter()
                ensemble.predict(window[None, :, :])
                t4 = time.perf_counter()
                for k, dt in zip(steps, (t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    steps[k].append(dt)
            return steps
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


def _ours(rows: list[dict[str, Any]], start: int, n: int, ensemble: Any) -> list[float]:
    import orjson

    from stream_infer.pipeline import Inbound, Pipeline

    def msg(r: dict[str, Any]) -> bytes:
        return orjson.dumps({**r, "symbol": "NEARUSDT", "interval": "1m", "spread_bps": None})

    pipeline = Pipeline(ensemble)
    pipeline.process([Inbound(msg(r), 0, i, 0.0) for i, r in enumerate(rows[:start])])
    times: list[float] = []
    for i, r in enumerate(rows[start : start + n]):
        m = [Inbound(msg(r), 0, start + i, 0.0)]
        t0 = time.perf_counter()
        out = pipeline.process(m)
        times.append(time.perf_counter() - t0)
        if len(out.predictions) != 1:
            raise RuntimeError("stream_infer made no prediction for a ready candle")
    return times


def _ours_batched(ensemble: Any, symbols: int, bursts: int) -> list[float]:
    """Per-candle cost when ``symbols`` streams close at once (one micro-batch)."""
    from stream_infer.events import encode_candle
    from stream_infer.pipeline import Inbound, Pipeline

    history = history_len(ensemble.seq_len)
    streams = symbol_candles(symbols, history + bursts, prefix="N")
    pipeline = Pipeline(ensemble)
    for s in streams:
        pipeline.warm(s[:history])
    per_candle: list[float] = []
    for b in range(bursts):
        msgs = [Inbound(encode_candle(s[history + b]), 0, k, 0.0) for k, s in enumerate(streams)]
        t0 = time.perf_counter()
        out = pipeline.process(msgs)
        per_candle.append((time.perf_counter() - t0) / len(msgs))
        if len(out.predictions) != symbols:
            raise RuntimeError(f"{len(out.predictions)} predictions for {symbols} candles")
    return per_candle


def _agreement(rows: list[dict[str, Any]], start: int, seq_len: int) -> float:
    """Largest relative difference, baseline vs our streaming features, over one window."""
    from stream_infer.features import StreamingFeatures

    sf = StreamingFeatures(keep_rows=seq_len)
    recs = [{**r, "spread_bps": None} for r in rows[:start]]
    sf.warm(recs)
    ours = sf.window(seq_len)
    df = pd.DataFrame(recs[-TAIL:], columns=list(_COLS))
    base = pandas_features(df, seq_len)
    return float(np.max(np.abs(base - ours) / np.maximum(1.0, np.abs(ours))))


def run(*, models: Path = SHIPPED, candles: int = 200, symbols: int = 64) -> dict[str, Any]:
    why = missing("models", "postgres")
    if why:
        return {"skipped": why}
    from stream_infer.candles import read_klines
    from stream_infer.models import load_ensemble, tune_malloc

    tune_malloc()
    ensemble = load_ensemble(models, ensemble_id="bench")
    frame = read_klines(SOURCE).drop(columns=["symbol", "interval"])
    rows = [
        {**{str(k): v for k, v in r.items()}, "trades": int(r["trades"])}
        for r in frame.to_dict("records")
    ]
    start = 1000
    ours = _ours(rows, start, candles, ensemble)
    naive = asyncio.run(
        _naive(rows, start, candles, ensemble, f"bench_naive_{uuid.uuid4().hex[:8]}")
    )
    batched = _ours_batched(ensemble, symbols, bursts=10)
    ours_med = statistics.median(ours) * 1e6
    naive_med = statistics.median(naive["total"]) * 1e6
    batched_med = statistics.median(batched) * 1e6
    return {
        "candles": candles,
        "tail": TAIL,
        "ours_median_us": round(ours_med, 1),
        "ours_p99_us": round(pct(ours, 0.99) * 1e6, 1),
        "naive_median_us": round(naive_med, 1),
        "naive_p99_us": round(pct(naive["total"], 0.99) * 1e6, 1),
        "naive_median_us_by_step": {
            k: round(statistics.median(v) * 1e6, 1) for k, v in naive.items() if k != "total"
        },
        "ratio": round(naive_med / ours_med, 1),
        "ours_batched_symbols": symbols,
        "ours_batched_median_us_per_candle": round(batched_med, 1),
        "ratio_batched": round(naive_med / batched_med, 1),
        "baseline_features_max_rel_diff": _agreement(rows, start, ensemble.seq_len),
    }


def main() -> None:
    import json

    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()

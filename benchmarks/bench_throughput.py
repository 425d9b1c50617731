"""Maximum sustained throughput with full inference.

* broker: ``symbols`` streams are warmed through the candles topic (the service, a child
  process built as ``stream-infer run`` builds it, consumes ``first_prediction_index(seq_len)`` candles of
  each live), then a backlog of ``per_symbol`` candles per symbol, every one of them
  predictable, is produced as fast as the producer goes while the service runs.
  Throughput = backlog / (first backlog send -> the last of its predictions read from the
  predictions topic here). Also reported: the rate between the first and the last
  prediction read (steady state), and the service's own per-batch numbers.
* core: the same kind of candles through ``Pipeline.process`` in batches of
  ``KAFKA_MAX_POLL_RECORDS`` (what the service gets from a backlog), plus encoding each
  prediction, in this process, no broker.

``python benchmarks/bench_throughput.py [--profile]`` prints the JSON; ``--profile`` runs
the service under cProfile and adds its top functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    SHIPPED,
    PredictionReader,
    events,
    history_len,
    make_topics,
    missing,
    produce_all,
    service_process,
    symbol_candles,
    wait_committed,
)

from stream_infer.candles import Candle


def _profile_top(path: Path, n: int = 25) -> list[str]:
    import io
    import pstats

    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).sort_stats("tottime").print_stats(n)
    lines = [ln.rstrip() for ln in buf.getvalue().splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    return [ln for ln in lines[start:] if ln.strip()]


async def _broker(
    bootstrap: str,
    models: Path,
    streams: list[list[Candle]],
    history: int,
    fetch_max_wait_ms: int,
    profile: Path | None,
) -> dict[str, Any]:
    s = await make_topics(bootstrap, "throughput", fetch_max_wait_ms)
    warm = events(streams, 0, history)
    backlog = events(streams, history, len(streams[0]))
    await produce_all(bootstrap, s.kafka_candles_topic, warm)
    with service_process(s, models, profile=profile) as stats:
        await wait_committed(s, len(warm), timeout=600)
        async with PredictionReader(s) as reader:
            t0 = time.perf_counter()
            await produce_all(bootstrap, s.kafka_candles_topic, backlog)
            t_produced = time.perf_counter()
            t_last = await reader.until(len(backlog), timeout=600)
            t_first = reader.arrivals[0][0]
    n = len(backlog)
    batches = stats.get("batches") or 0
    return {
        "symbols": len(streams),
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "backlog_candles": n,
        "seconds": round(t_last - t0, 3),
        "produce_seconds": round(t_produced - t0, 3),
        "candles_per_s": round(n / (t_last - t0), 1),
        "steady_candles_per_s": (
            round((n - 1) / (t_last - t_first), 1) if t_last > t_first else None
        ),
        "service": {
            "predictions": stats.get("predictions"),
            "batches": batches,
            "mean_batch": round((stats.get("messages") or 0) / batches, 1) if batches else None,
            "batch_process_ms_p50": stats.get("batch_process_ms_p50"),
            "batch_publish_ms_p50": stats.get("batch_publish_ms_p50"),
            "batch_commit_ms_p50": stats.get("batch_commit_ms_p50"),
        },
    }


def _core(models: Path, streams: list[list[Candle]], history: int, batch: int) -> dict[str, Any]:
    from stream_infer.events import encode_candle, encode_prediction
    from stream_infer.models import load_ensemble, tune_malloc
    from stream_infer.pipeline import Inbound, Pipeline

    tune_malloc()
    pipeline = Pipeline(load_ensemble(models, ensemble_id="bench"))
    for s in streams:
        pipeline.warm(s[:history])
    msgs = [
        Inbound(encode_candle(s[m]), 0, i, 0.0)
        for i, (m, s) in enumerate((m, s) for m in range(history, len(streams[0])) for s in streams)
    ]
    preds = 0
    decode = features = model = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(msgs), batch):
        out = pipeline.process(msgs[i : i + batch])
        for p in out.predictions:
            encode_prediction(p)
        preds += len(out.predictions)
        decode += out.times.decode
        features += out.times.features
        model += out.times.models
    dt = time.perf_counter() - t0
    if preds != len(msgs):
        raise RuntimeError(f"core: {preds} predictions for {len(msgs)} ready candles")
    return {
        "symbols": len(streams),
        "candles": len(msgs),
        "batch": batch,
        "candles_per_s": round(len(msgs) / dt, 1),
        "us_per_candle": {
            "total": round(dt / len(msgs) * 1e6, 1),
            "decode": round(decode / len(msgs) * 1e6, 1),
            "features": round(features / len(msgs) * 1e6, 1),
            "model": round(model / len(msgs) * 1e6, 1),
        },
    }


def run(
    *,
    symbols: int = 200,
    per_symbol: int = 250,
    fetch_max_wait_ms: int = 5,
    broker: bool = True,
    profile: bool = False,
    bootstrap: str | None = None,
    models: Path = SHIPPED,
) -> dict[str, Any]:
    """Core always; through the broker when the Kafka service exists (``broker``)."""
    why = missing("models")
    if why:
        return {"skipped": why}
    import json

    from stream_infer.config import KafkaSettings

    seq_len = int(json.loads((models / "manifest.json").read_text())["seq_len"])
    history = history_len(seq_len)
    streams = symbol_candles(symbols, history + per_symbol, prefix="T")
    out: dict[str, Any] = {
        "core": _core(models, streams, history, KafkaSettings().kafka_max_poll_records)
    }
    why = missing("kafka") if broker else "not asked for"
    if why:
        out["broker"] = {"skipped": why}
        return out
    from stream_infer.kafka import EmbeddedBroker

    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
        prof = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "service.prof"
        out["broker"] = asyncio.run(
            _broker(
                bootstrap, models, streams, history, fetch_max_wait_ms, prof if profile else None
            )
        )
        if profile and prof.is_file():
            out["broker"]["profile_top_tottime"] = _profile_top(prof)
    return out


def main() -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--symbols", type=int, default=200)
    ap.add_argument("--per-symbol", type=int, default=250)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    print(json.dumps(run(symbols=a.symbols, per_symbol=a.per_symbol, profile=a.profile), indent=2))


if __name__ == "__main__":
    main()

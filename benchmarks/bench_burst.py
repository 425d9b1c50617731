"""Minute-boundary burst: N warm symbols close a minute at once; how long until the last
prediction is out.

* broker: one service (a child process, built as ``stream-infer run`` builds it, the
  embedded broker, the shipped ensemble) holds ``max(sizes)`` warm streams, warmed through
  the candles topic (the service consumes ``first_prediction_index(seq_len)`` candles of each live, so
  each stream's next candle is predicted). Then, per trial and per N, the next candle of
  the first N symbols is sent at once (N sends, then wait for every acknowledgement).
  Measured: the last of them acknowledged by the broker -> the last of their N
  predictions read from the predictions topic here (also: first send -> last read).
  Trials alternate the sizes; the fetch wait (``KAFKA_FETCH_MAX_WAIT_MS``) is stated.
* core: the same bursts through ``Pipeline.process`` as one batch in this process, no
  broker: the pure compute share, split into decode / features / model (the pipeline's
  own stage times) and encoding the N predictions (CPU a publish needs).

``python benchmarks/bench_burst.py [N ...]`` prints the JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    SHIPPED,
    PredictionReader,
    history_len,
    make_topics,
    missing,
    produce_all,
    service_process,
    summary_ms,
    symbol_candles,
    wait_committed,
)

from stream_infer.candles import Candle


def _core(
    models: Path, streams: list[list[Candle]], history: int, sizes: Sequence[int], trials: int
) -> dict[str, Any]:
    from stream_infer.events import encode_candle, encode_prediction
    from stream_infer.models import load_ensemble, tune_malloc
    from stream_infer.pipeline import Inbound, Pipeline

    tune_malloc()
    pipeline = Pipeline(load_ensemble(models, ensemble_id="bench"))
    for s in streams:
        pipeline.warm(s[:history])
    nxt = [history] * len(streams)
    rows: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    offset = 0
    for _ in range(trials):
        for n in sizes:
            msgs = []
            for k in range(n):
                msgs.append(Inbound(encode_candle(streams[k][nxt[k]]), 0, offset, 0.0))
                nxt[k] += 1
                offset += 1
            t0 = time.perf_counter()
            out = pipeline.process(msgs)
            t1 = time.perf_counter()
            for p in out.predictions:
                encode_prediction(p)
            t2 = time.perf_counter()
            if len(out.predictions) != n:
                raise RuntimeError(f"core burst of {n}: {len(out.predictions)} predictions")
            rows[n].append(
                {
                    "process_ms": (t1 - t0) * 1e3,
                    "decode_ms": out.times.decode * 1e3,
                    "features_ms": out.times.features * 1e3,
                    "model_ms": out.times.models * 1e3,
                    "encode_predictions_ms": (t2 - t1) * 1e3,
                    "total_ms": (t2 - t0) * 1e3,
                }
            )
    res: dict[str, Any] = {}
    for n, rs in rows.items():
        med = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
        res[str(n)] = {
            "trials": len(rs),
            **{f"median_{k}": v for k, v in med.items()},
            "total": summary_ms([r["total_ms"] for r in rs]),
            "per_candle_us": round(med["total_ms"] * 1e3 / n, 1),
        }
    return res


async def _broker(
    bootstrap: str,
    models: Path,
    streams: list[list[Candle]],
    history: int,
    sizes: Sequence[int],
    trials: int,
    fetch_max_wait_ms: int,
) -> dict[str, Any]:
    from _common import events

    from stream_infer.events import encode_candle
    from stream_infer.kafka import make_producer

    s = await make_topics(bootstrap, "burst", fetch_max_wait_ms)
    warm = events(streams, 0, history)
    t0 = time.perf_counter()
    await produce_all(bootstrap, s.kafka_candles_topic, warm)
    produce_s = time.perf_counter() - t0
    nxt = [history] * len(streams)
    rows: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    with service_process(s, models) as service_stats:
        t0 = time.perf_counter()
        await wait_committed(s, len(warm), timeout=600)
        catch_up_s = time.perf_counter() - t0
        producer = make_producer(bootstrap)
        await producer.start()
        expected = 0
        try:
            async with PredictionReader(s) as reader:
                for _ in range(trials):
                    for n in sizes:
                        burst = []
                        for k in range(n):
                            c = streams[k][nxt[k]]
                            burst.append((c.symbol.encode(), encode_candle(c)))
                            nxt[k] += 1
                        expected += n
                        t_first = time.perf_counter()
                        futs = [
                            await producer.send(s.kafka_candles_topic, v, key=key)
                            for key, v in burst
                        ]
                        await asyncio.gather(*futs)
                        t_acked = time.perf_counter()
                        t_out = await reader.until(expected, timeout=60)
                        keys = {k for _, k in reader.arrivals[expected - n : expected]}
                        if keys != {key for key, _ in burst}:
                            raise RuntimeError(f"burst of {n}: predictions for other symbols")
                        rows[n].append(
                            {
                                "last_in_to_last_out_ms": (t_out - t_acked) * 1e3,
                                "first_in_to_last_out_ms": (t_out - t_first) * 1e3,
                                "produce_ms": (t_acked - t_first) * 1e3,
                            }
                        )
                        await asyncio.sleep(0.3)  # let the service go idle between bursts
        finally:
            await producer.stop()
    made = service_stats.get("predictions")
    if made is not None and made != expected:
        # e.g. warm-up candles that were predicted: the counts above would be off
        raise RuntimeError(f"the service made {made} predictions, the bursts {expected}")
    res: dict[str, Any] = {
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "warm_streams": len(streams),
        "warm_up": {
            "candles": len(warm),
            "produce_s": round(produce_s, 2),
            "service_catch_up_s": round(catch_up_s, 2),
        },
    }
    for n, rs in rows.items():
        res[str(n)] = {
            "last_in_to_last_out": summary_ms([r["last_in_to_last_out_ms"] for r in rs]),
            "first_in_to_last_out": summary_ms([r["first_in_to_last_out_ms"] for r in rs]),
            "median_produce_ms": round(statistics.median(r["produce_ms"] for r in rs), 2),
        }
    res["service"] = {
        k: service_stats.get(k)
        for k in ("predictions", "batches", "batch_process_ms_p50", "batch_publish_ms_p50")
    }
    return res


def run(
    *,
    sizes: Sequence[int] = (100, 1000),
    trials: int = 5,
    fetch_max_wait_ms: int = 5,
    broker: bool = True,
    bootstrap: str | None = None,
    models: Path = SHIPPED,
) -> dict[str, Any]:
    """Core bursts always; broker bursts when the Kafka service exists (``broker``)."""
    why = missing("models")
    if why:
        return {"skipped": why}
    import json

    seq_len = int(json.loads((models / "manifest.json").read_text())["seq_len"])
    history = history_len(seq_len)
    sizes = sorted(set(sizes))
    streams = symbol_candles(max(sizes), history + trials * len(sizes), prefix="B")
    out: dict[str, Any] = {"sizes": list(sizes), "trials": trials, "history": history}
    out["core"] = _core(models, streams, history, sizes, trials)
    why = missing("kafka") if broker else "not asked for"
    if why:
        out["broker"] = {"skipped": why}
        return out
    from stream_infer.kafka import EmbeddedBroker

    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
        out["broker"] = asyncio.run(
            _broker(bootstrap, models, streams, history, sizes, trials, fetch_max_wait_ms)
        )
    return out


def main() -> None:
    import json

    sizes = tuple(int(a) for a in sys.argv[1:]) or (100, 1000)
    print(json.dumps(run(sizes=sizes), indent=2))


if __name__ == "__main__":
    main()

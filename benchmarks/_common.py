"""Shared by the benchmarks: machine description, percentiles, multi-symbol candles built from
real klines, and a small harness around the Kafka service (public APIs only).

The service harness runs ``stream_infer.kafka.Service`` in a child process, as
``stream-infer run`` builds it (``tune_malloc``, uvloop when installed, the shipped
ensemble), so the process that produces candles and reads predictions does not share an
interpreter with it; both read one monotonic clock (``time.perf_counter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import multiprocessing as mp
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stream_infer.candles import Candle, read_klines  # noqa: E402

if TYPE_CHECKING:
    from stream_infer.config import KafkaSettings

DATA = REPO / "tests" / "data" / "klines"
SOURCE = DATA / "NEARUSDT-1m-2023-02.csv.gz"
SHIPPED = REPO / "artifacts" / "ensemble-v1"
START_MS = 1_672_531_200_000  # 2023-01-01 00:00 UTC: every generated stream starts here


# -- what exists ----------------------------------------------------------------------------


def missing(*parts: str) -> str | None:
    """None when every named part is there, else why a benchmark cannot run.

    Parts: ``models`` (artifacts/ensemble-v1), ``kafka`` (the service and the embedded
    broker), ``postgres`` (a server on DB_HOST, default 127.0.0.1:5432).
    """
    for part in parts:
        if part == "models" and not (SHIPPED / "manifest.json").is_file():
            return f"no trained ensemble at {SHIPPED.relative_to(REPO)}"
        if part == "kafka":
            try:
                from stream_infer.kafka import EmbeddedBroker, Service  # noqa: F401
            except ImportError as exc:
                return f"the Kafka service is not there yet ({exc})"
            from stream_infer.kafka import tansu_binary

            try:
                tansu_binary()
            except Exception as exc:  # the helper raises its own error type
                return f"no embedded broker binary: {exc}"
        if part == "postgres":
            if importlib.util.find_spec("asyncpg") is None:
                return "asyncpg is not installed"
            import socket

            host = os.environ.get("DB_HOST", "127.0.0.1")
            port = int(os.environ.get("DB_PORT", "5432"))
            try:
                socket.create_connection((host, port), timeout=2).close()
            except OSError as exc:
                return f"no Postgres server at {host}:{port} ({exc})"
    return None


# -- numbers --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(x.split()[1])
            for x in Path("/proc/meminfo").read_text().splitlines()
            if x.startswith("MemTotal")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    import onnxruntime
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    return float(np.quantile(np.asarray(values, dtype=np.float64), q))


def summary_ms(ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """n, median, p99 and max of times in milliseconds (rounded to the microsecond)."""
    a = np.asarray(ms, dtype=np.float64)
    return {
        "n": int(a.size),
        "median_ms": round(float(np.median(a)), 3),
        "p99_ms": round(float(np.quantile(a, 0.99)), 3),
        "max_ms": round(float(a.max()), 3),
    }


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# -- data -----------------------------------------------------------------------------------


def history_len(seq_len: int) -> int:
    """Candles a stream holds before its first prediction (the readiness rule)."""
    from stream_infer.pipeline import first_prediction_index

    return first_prediction_index(seq_len)


def symbol_candles(symbols: int, per_symbol: int, prefix: str = "S") -> list[list[Candle]]:
    """``symbols`` streams of real NEARUSDT candles, each from another part of the month and
    scaled by its own price factor, so every stream has real, distinct feature values.

    Stream k is named ``{prefix}{k:05d}USDT``; every stream's candles start at 2023-01-01
    00:00 UTC, one minute apart, so candle m of every stream closes in the same minute.
    """
    df = read_klines(SOURCE)
    rows = [{str(k): v for k, v in r.items()} for r in df.to_dict("records")]
    if per_symbol > len(rows):
        raise ValueError(f"{per_symbol} candles per symbol: the source has {len(rows)}")
    step = max(1, (len(rows) - per_symbol) // max(1, symbols))
    out: list[list[Candle]] = []
    for k in range(symbols):
        scale = 1.0 + (k % 97) / 10.0
        start = (k * step) % max(1, len(rows) - per_symbol)
        chunk = rows[start : start + per_symbol]
        t0 = chunk[0]["open_time"]
        out.append(
            [
                Candle(
                    **{
                        **r,
                        "symbol": f"{prefix}{k:05d}USDT",
                        "open_time": START_MS + (r["open_time"] - t0),
                        "close_time": START_MS + (r["open_time"] - t0) + 59_999,
                        "open": r["open"] * scale,
                        "high": r["high"] * scale,
                        "low": r["low"] * scale,
                        "close": r["close"] * scale,
                        "quote_volume": r["quote_volume"] * scale,
                        "taker_buy_quote": r["taker_buy_quote"] * scale,
                        "spread_bps": None,
                    }
                )
                for r in chunk
            ]
        )
    return out


def events(streams: Sequence[Sequence[Candle]], start: int, stop: int) -> list[tuple[bytes, bytes]]:
    """(key, Candle JSON) of candles ``start..stop-1`` of every stream, minute by minute."""
    from stream_infer.events import encode_candle

    return [
        (s[m].symbol.encode(), encode_candle(s[m])) for m in range(start, stop) for s in streams
    ]


# -- the Kafka service in a child process ---------------------------------------------------


def _service_child(
    settings: dict[str, Any], models: str, profile: str | None, ready: Any, out: Any
) -> None:
    import signal

    from stream_infer.config import KafkaSettings
    from stream_infer.kafka import build_service
    from stream_infer.models import load_ensemble, tune_malloc

    tune_malloc()  # as `stream-infer run` does when models serve
    with contextlib.suppress(ImportError):
        import uvloop  # as `stream-infer run` does when it is installed

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    ensemble = load_ensemble(models, ensemble_id="bench")
    kafka = KafkaSettings(**settings)

    async def main() -> None:
        service = build_service(kafka, ensemble)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, service.request_stop)
        task = asyncio.create_task(service.run())
        await service.wait_assigned(60)
        ready.set()
        stats = await task
        out.put(stats.as_dict())

    if profile is None:
        asyncio.run(main())
        return
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        asyncio.run(main())
    finally:
        prof.disable()
        prof.dump_stats(profile)


def settings_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """``settings`` as keyword arguments a spawned child can rebuild them from."""
    return {
        k: v
        for k, v in settings.model_dump(mode="python").items()
        if v is not None and not k.endswith("password")
    }


@contextlib.contextmanager
def child_process(target: Any, *args: Any) -> Iterator[dict[str, Any]]:
    """``target(*args, ready, out)`` in a spawned process, until it sets ``ready`` (assigned
    its partitions); yields a dict that holds what it puts on ``out`` once told to stop
    (SIGTERM at the end of the block)."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, ready, out), daemon=True)
    proc.start()
    result: dict[str, Any] = {}
    try:
        if not ready.wait(120):
            raise RuntimeError("the service did not get its partitions within 120 s")
        yield result
    finally:
        if proc.pid is not None and proc.is_alive():
            os.kill(proc.pid, 15)
        with contextlib.suppress(Exception):
            result.update(out.get(timeout=60))
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def service_process(
    settings: KafkaSettings, models: Path = SHIPPED, *, profile: Path | None = None
) -> contextlib.AbstractContextManager[dict[str, Any]]:
    """The service in a child process, assigned its partitions; yields a dict that holds the
    service's ``Stats.as_dict()`` once the block ends (SIGTERM: it finishes and commits).
    ``profile``: run the child under cProfile and dump the stats there."""
    return child_process(
        _service_child,
        settings_kwargs(settings),
        str(models),
        None if profile is None else str(profile),
    )


async def make_topics(bootstrap: str, name: str, fetch_max_wait_ms: int) -> KafkaSettings:
    """Fresh topics (one partition each) and a fresh group for one benchmark."""
    from stream_infer.config import KafkaSettings
    from stream_infer.kafka import create_topics

    base = f"bench.{name}.{uuid.uuid4().hex[:8]}"
    s = KafkaSettings(
        kafka_bootstrap_servers=bootstrap,
        kafka_candles_topic=f"{base}.candles",
        kafka_predictions_topic=f"{base}.predictions",
        kafka_dlq_topic=f"{base}.dlq",
        kafka_group_id=f"{base}.group",
        kafka_fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await create_topics(
        bootstrap, {s.kafka_candles_topic: 1, s.kafka_predictions_topic: 1, s.kafka_dlq_topic: 1}
    )
    return s


async def produce_all(bootstrap: str, topic: str, evs: list[tuple[bytes, bytes]]) -> None:
    """Every event, as fast as the producer goes (batched, linger 5 ms), all acknowledged."""
    from stream_infer.kafka import make_producer, produce_events

    p = make_producer(bootstrap, linger_ms=5)
    await p.start()
    try:
        await produce_events(p, topic, evs)
    finally:
        await p.stop()


async def wait_committed(s: KafkaSettings, total: int, timeout: float = 300) -> None:
    """Until the service's group has committed ``total`` records of the candles topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(
        bootstrap_servers=s.kafka_bootstrap_servers,
        group_id=s.kafka_group_id,
        enable_auto_commit=False,
    )
    await c.start()
    try:
        deadline = time.monotonic() + timeout
        tp = TopicPartition(s.kafka_candles_topic, 0)
        while time.monotonic() < deadline:
            if (await c.committed(tp) or 0) >= total:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the service did not commit {total} candles within {timeout:g} s")
    finally:
        await c.stop()


class PredictionReader:
    """Reads the predictions topic from its start in the background; ``arrivals`` holds the
    (perf_counter time, key) of every prediction as it was read."""

    def __init__(self, s: KafkaSettings) -> None:
        self._s = s
        self.arrivals: list[tuple[float, bytes | None]] = []
        self._task: asyncio.Task[None] | None = None
        self._grew = asyncio.Event()

    async def __aenter__(self) -> PredictionReader:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        s = self._s
        c = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            max_poll_records=10_000,
        )
        await c.start()
        tp = TopicPartition(s.kafka_predictions_topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        self._consumer = c
        self._task = asyncio.create_task(self._loop())
        return self

    async def _loop(self) -> None:
        c = self._consumer
        while True:
            got = await c.getmany(timeout_ms=1000)
            now = time.perf_counter()
            for records in got.values():
                self.arrivals.extend((now, r.key) for r in records)
            if got:
                self._grew.set()

    async def until(self, count: int, timeout: float) -> float:
        """Wait until ``count`` predictions have been read; the time the last one was."""
        deadline = time.monotonic() + timeout
        while True:
            self._grew.clear()  # no await between this and the check: nothing slips by
            if len(self.arrivals) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"{len(self.arrivals)} of {count} predictions within {timeout:g} s"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), left)
        return self.arrivals[count - 1][0]

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

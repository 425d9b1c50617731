"""The stack the Prometheus tests watch: a private Postgres with the shipped ensemble as its
active row, ``stream-infer run`` in a subprocess (hot reload and the predictions sink on),
three streams of real candles warmed up and then fed live at a steady rate from a thread,
and a real Prometheus scraping the service every second with the test's rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stream_infer.candles import Candle
from stream_infer.config import KafkaSettings
from stream_infer.events import encode_candle
from stream_infer.kafka import make_producer
from tests.conftest import DATA, REPO
from tests.kafka._util import interleave, real_candles
from tests.kafka_helpers import fresh_topics, run_sync
from tests.ops._prometheus import Prometheus, alert_state, running
from tests.reliability._harness import ServiceProc, produce_candles
from tests.reliability._pg import PrivatePg, activate_dir, private_pg

SHIPPED = REPO / "artifacts" / "ensemble-v1"
KLINES = DATA / "klines"
SYMBOLS = ("NEARUSDT", "FILUSDT", "AVAXUSDT")
WARM = 440  # candles per stream before the live feed: past the 431 a stream needs

Message = tuple[bytes, bytes, str]  # key, value, kind ("candle" or the dead-letter reason)


def klines(symbol: str) -> Path:
    return KLINES / f"{symbol}-1m-2023-02.csv.gz"


def poison() -> list[Message]:
    """Bad messages and the dead-letter reason each must get."""
    template = json.loads(encode_candle(real_candles("NEARUSDT", 1, source=klines("NEARUSDT"))[0]))

    def bad(**change: Any) -> bytes:
        d = {k: v for k, v in template.items() if k not in change or change[k] is not None}
        d.update({k: v for k, v in change.items() if v is not None})
        return json.dumps(d).encode()

    return [
        (b"NEARUSDT", b"\x00\xff garbage", "not_json"),
        (b"NEARUSDT", bad(close=None), "schema:close"),
        (b"NEARUSDT", b"{not json", "not_json"),
        (b"NEARUSDT", bad(high=template["low"] * 0.5), "rule:high_bound"),
        (b"NEARUSDT", bad(close=None, volume=1.0), "schema:close"),
    ]


@dataclass
class Feed:
    """``messages`` at ``rate`` per second from a thread of its own (the tests are
    synchronous), with more injected on request; every acknowledged send is logged as
    (wall time, kind)."""

    bootstrap: str
    topic: str
    messages: Sequence[Message]
    rate: float
    sent: list[tuple[float, str]] = field(default_factory=list)
    error: BaseException | None = None
    _extra: queue.SimpleQueue[Message] = field(default_factory=queue.SimpleQueue)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Feed:
        self._thread = threading.Thread(target=self._main, name="feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def inject(self, messages: Sequence[Message]) -> None:
        """Sent as soon as possible, between two paced ones."""
        for m in messages:
            self._extra.put(m)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    def count(self, start: float, end: float) -> Counter[str]:
        """What was acknowledged in (start, end]."""
        return Counter(kind for t, kind in list(self.sent) if start < t <= end)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc

    async def _run(self) -> None:
        producer = make_producer(self.bootstrap, request_timeout_ms=60_000)
        await producer.start()
        try:
            t0 = time.perf_counter()
            for i, (key, value, kind) in enumerate(self.messages):
                if self._stop.is_set():
                    return
                extra: list[tuple[str, Any]] = []
                with contextlib.suppress(queue.Empty):
                    while True:
                        k, v, what = self._extra.get_nowait()
                        extra.append((what, await producer.send(self.topic, v, key=k)))
                for what, fut in extra:
                    await fut
                    self.sent.append((time.time(), what))
                delay = t0 + i / self.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await (await producer.send(self.topic, value, key=key))
                self.sent.append((time.time(), kind))
            if not self._stop.is_set():
                raise AssertionError("the feed ran out of messages")
        finally:
            await producer.stop()


@dataclass
class Stack:
    settings: KafkaSettings
    pg: PrivatePg
    root: Path
    svc: ServiceProc
    feed: Feed
    prom: Prometheus
    row: int
    activated_at: float
    setup: str  # seconds per set-up step

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.svc.port}"

    def wait_alert(self, name: str, t0: float, deadline_s: float) -> dict[str, float]:
        """Seconds from ``t0`` until ``name`` was first seen pending (or firing) and firing;
        AssertionError when it does not fire within ``deadline_s``."""
        seen: dict[str, float] = {}
        while "firing" not in seen:
            state = alert_state(self.prom, name)
            if state is not None:
                seen.setdefault("active", time.time() - t0)
                if state == "firing":
                    seen["firing"] = time.time() - t0
            assert time.time() - t0 < deadline_s, (
                f"{name} not firing {deadline_s:.0f} s after the fault (seen: {seen}); "
                f"alerts: {self.prom.alerts()}; service: {self.svc.tail(1500)}"
            )
            time.sleep(0.25)
        return seen

    def alert(self, name: str) -> dict[str, Any]:
        (found,) = [a for a in self.prom.alerts() if a["labels"]["alertname"] == name]
        return found


def live_messages(per_stream: int) -> tuple[list[Candle], list[Message]]:
    """(warm-up, live): the three streams interleaved by time, cut after ``WARM`` each."""
    streams = [real_candles(sym, per_stream, source=klines(sym)) for sym in SYMBOLS]
    candles = interleave(streams)
    warm = len(SYMBOLS) * WARM
    return candles[:warm], [(c.symbol.encode(), encode_candle(c), "candle") for c in candles[warm:]]


@contextlib.contextmanager
def stack(
    bootstrap: str,
    tmp: Path,
    rules: Mapping[str, Any],
    *,
    rate: float,
    per_stream: int,
    session_ms: int,
    env: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """The stack on the broker at ``bootstrap``; the service's environment plus ``env``."""
    if not (SHIPPED / "manifest.json").is_file():
        pytest.skip("artifacts/ensemble-v1 is not in this checkout")
    root = tmp / "models"
    shutil.copytree(SHIPPED, root / "v1")
    took = _Steps()
    with private_pg() as pg:
        took("postgres")
        row = run_sync(activate_dir(pg, root / "v1", version="v1"))
        (rec,) = run_sync(pg.fetch("SELECT created_at FROM active_ensembles WHERE id = $1", row))
        s = fresh_topics(bootstrap, "prom", partitions=2, kafka_max_poll_records=200)
        warm, live = live_messages(per_stream)
        took("candles")
        run_sync(produce_candles(bootstrap, s.kafka_candles_topic, warm, {}))
        service_env = pg.env(
            DB_WRITE_PREDICTIONS="true", ML_MODELS_ROOT=str(root), ML_RELOAD_POLL_S="1"
        )
        service_env.update(env or {})
        svc = ServiceProc(s, tmp / "service.log", env=service_env, session_timeout_ms=session_ms)
        feed = Feed(bootstrap, s.kafka_candles_topic, live, rate)
        try:
            run_sync(svc.wait_ready(120))
            took("service ready")
            wait(
                lambda: svc.metrics().get("stream_infer_predictions_produced_total", 0.0) > 0,
                60,
                "no predictions from the warm-up",
            )
            feed.start()
            wait(lambda: _caught_up(svc), 30, "the service did not catch up with the live feed")
            took("warm and caught up")
            with running(tmp / "prometheus", [f"127.0.0.1:{svc.port}"], rules) as prom:
                wait(lambda: bool(prom.query("up == 1")), 30, f"no scrape: {prom.tail()}")
                took("prometheus scraping")
                yield Stack(
                    s, pg, root, svc, feed, prom, row, rec["created_at"].timestamp(), str(took)
                )
        finally:
            feed.stop()
            if svc.alive():
                os.kill(svc.pid, signal.SIGCONT)
                svc.stop()


def wait(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, what
        time.sleep(0.1)
    return time.monotonic() - t0


def _caught_up(svc: ServiceProc) -> bool:
    m = svc.metrics()
    lags = [v for k, v in m.items() if k.startswith("stream_infer_consumer_lag_seconds{")]
    return bool(lags) and max(lags) < 1.0


class _Steps:
    """Seconds per set-up step, for the log."""

    def __init__(self) -> None:
        self.t = time.monotonic()
        self.steps: dict[str, float] = {}

    def __call__(self, step: str) -> None:
        now = time.monotonic()
        self.steps[step] = round(now - self.t, 1)
        self.t = now

    def __str__(self) -> str:
        return ", ".join(f"{k} {v} s" for k, v in self.steps.items())

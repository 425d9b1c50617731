"""Fault-injection harness: the real ``stream-infer run`` in a subprocess, its /metrics and
/readyz over HTTP, a broker behind a cuttable proxy, and the delivery invariants.

The invariants every fault test checks (``check_delivery``):

* every candle that is ready gets its prediction (none lost), equal to the offline
  pipeline's (``tests.kafka._util.offline``);
* a candle is predicted more than once only if its offset was not committed when a fault
  hit (the uncommitted range), and at most once more per such fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_infer.candles import Candle
from stream_infer.config import KafkaSettings
from stream_infer.events import decode_prediction, encode_candle
from stream_infer.kafka import (
    ApacheKafka,
    EmbeddedBroker,
    free_port,
    make_producer,
)
from tests.conftest import REPO
from tests.kafka._util import assert_same_prediction
from tests.tcp_proxy import TcpProxy

Key = tuple[str, int]  # (symbol, open_time)
Where = dict[Key, tuple[int, int]]  # -> (partition, offset)


# -- results ------------------------------------------------------------------------------


def record(fault: str, **figures: Any) -> None:
    """Print the figures of one fault run (``-s`` shows them) and append them as one JSON line
    to ``$RELIABILITY_RESULTS`` when set (RELIABILITY.md is written from those)."""
    line = json.dumps({"fault": fault, **figures}, default=str, sort_keys=True)
    print(f"\nRELIABILITY {line}")
    path = os.environ.get("RELIABILITY_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


# -- a broker behind a proxy --------------------------------------------------------------


@dataclass
class ProxiedBroker:
    """A broker that every client reaches through ``proxy`` (it advertises the proxy's
    port, so reconnects go through it too)."""

    broker: EmbeddedBroker | ApacheKafka
    proxy: TcpProxy

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"


@contextlib.contextmanager
def proxied_broker(kind: str = "embedded") -> Iterator[ProxiedBroker]:
    """``kind``: ``embedded`` (Tansu) or ``apache`` (one Apache Kafka node)."""
    with TcpProxy("127.0.0.1", free_port()) as proxy:
        broker: EmbeddedBroker | ApacheKafka
        if kind == "apache":
            broker = ApacheKafka(1, ports={1: proxy.target[1]}, advertised_ports={1: proxy.port})
        else:
            broker = EmbeddedBroker(proxy.target[1], advertised_port=proxy.port)
        broker.start()
        try:
            yield ProxiedBroker(broker, proxy)
        finally:
            broker.stop()


# -- producing and reading ----------------------------------------------------------------


async def produce_candles(
    bootstrap: str,
    topic: str,
    candles: Sequence[Candle],
    where: Where,
    *,
    rate: float | None = None,
    window: int = 500,
) -> None:
    """Send the candles keyed by symbol, recording each one's (partition, offset) in ``where``.

    ``rate`` paces them (candles per second); else they go in windows of ``window``
    unacknowledged sends.
    """
    producer = make_producer(bootstrap, request_timeout_ms=60_000)
    await producer.start()
    try:
        t0 = time.perf_counter()
        pending: list[tuple[Candle, asyncio.Future[Any]]] = []

        async def drain() -> None:
            for c, fut in pending:
                md = await fut
                where[(c.symbol, c.open_time)] = (md.partition, md.offset)
            pending.clear()

        for i, c in enumerate(candles):
            if rate is not None:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            fut = await producer.send(topic, encode_candle(c), key=c.symbol.encode())
            pending.append((c, fut))
            if len(pending) >= (1 if rate is not None else window):
                await drain()
        await drain()
    finally:
        await producer.stop()


# -- the invariants -----------------------------------------------------------------------


@dataclass
class Delivery:
    """What ``check_delivery`` found: figures for RELIABILITY.md."""

    candles: int
    expected: int
    predictions: int
    lost: int
    duplicates: int
    faults: int
    max_copies: int
    dup_keys: list[Key] = field(default_factory=list)

    def figures(self) -> dict[str, int]:
        return {
            "candles": self.candles,
            "expected_predictions": self.expected,
            "predictions_received": self.predictions,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "faults": self.faults,
        }


def check_delivery(
    records: Sequence[Any],
    want: Mapping[Key, Any],
    where: Where,
    committed_at_faults: Sequence[Mapping[int, int]],
    *,
    candles: int,
    window: int | None = None,
    twins: Mapping[str, Mapping[Key, Any]] | None = None,
) -> Delivery:
    """Assert the invariants (module docstring); returns the figures.

    ``want``: the offline predictions, one per ready candle; a ``None`` value means the key
    must be predicted but its values are not compared (long runs compare a sample of the
    streams). ``twins``: when several ensembles served (a hot reload), the offline
    predictions per ``ensemble_id`` each prediction is compared with (default: ``want``'s).

    ``committed_at_faults``: the group's committed offsets when each fault hit (a lower
    bound is fine: the check then allows a little more). ``window``: when given, a replay
    after a fault covers at most this many offsets past that fault's committed offset
    (one batch: KAFKA_MAX_POLL_RECORDS).
    """
    got = [decode_prediction(r.value) for r in records]
    copies = Counter((p.symbol, p.open_time) for p in got)
    missing = set(want) - set(copies)
    extra = set(copies) - set(want)
    assert not missing, (
        f"{len(missing)} candles lost their prediction: "
        f"{sorted((k, where.get(k)) for k in missing)[:10]} ... {sorted(missing)[-3:]}"
    )
    assert not extra, f"{len(extra)} predictions for no ready candle, e.g. {sorted(extra)[:5]}"
    for p in got:
        ref = want if twins is None else twins[p.ensemble_id]
        expected = ref[(p.symbol, p.open_time)]
        if expected is not None:
            assert_same_prediction(p, expected)
    dup_keys = [k for k, n in copies.items() if n > 1]
    for k in dup_keys:
        part, off = where[k]
        allowed = [
            f
            for f in committed_at_faults
            if off >= f.get(part, 0) and (window is None or off < f.get(part, 0) + window)
        ]
        assert copies[k] <= 1 + len(allowed), (
            f"{k} at {part}/{off} predicted {copies[k]} times; committed at the faults: "
            f"{list(committed_at_faults)} (window {window})"
        )
    return Delivery(
        candles=candles,
        expected=len(want),
        predictions=len(got),
        lost=len(missing),
        duplicates=sum(n - 1 for n in copies.values()),
        faults=len(committed_at_faults),
        max_copies=max(copies.values(), default=0),
        dup_keys=dup_keys,
    )


# -- the service in a subprocess ----------------------------------------------------------


def service_env(s: KafkaSettings, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "DB_", "ML_", "METRICS_")) and k != "STREAM_INFER_CONFIG"
    }
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=s.kafka_bootstrap_servers,
        KAFKA_CANDLES_TOPIC=s.kafka_candles_topic,
        KAFKA_PREDICTIONS_TOPIC=s.kafka_predictions_topic,
        KAFKA_DLQ_TOPIC=s.kafka_dlq_topic,
        KAFKA_GROUP_ID=s.kafka_group_id,
        KAFKA_MAX_POLL_RECORDS=str(s.kafka_max_poll_records),
        KAFKA_MAX_MESSAGE_BYTES=str(s.kafka_max_message_bytes),
    )
    env.update(extra)
    return env


class ServiceProc:
    """``stream-infer run`` as a child process with a metrics port; logs appended to ``log``."""

    def __init__(
        self,
        s: KafkaSettings,
        log: Path,
        *,
        models: Path | None = None,
        no_models: bool = False,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        session_timeout_ms: int = 6000,
    ) -> None:
        self.settings = s
        self.log = log
        self.port = free_port()
        cmd = [sys.executable, "-c", "from stream_infer.cli import main; main()", "run"]
        if models is not None:
            cmd += ["--models", str(models)]
        if no_models:
            cmd.append("--no-models")
        cmd += [
            "--metrics-port",
            str(self.port),
            "--metrics-host",
            "127.0.0.1",
            "--session-timeout-ms",
            str(session_timeout_ms),
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=service_env(s, **dict(env or {})),
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """(status, body) of GET ``path`` on the metrics port; (0, error) when not answering."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=timeout
            ) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as ``name{label="v",...}`` -> value ({} when not up)."""
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.get("/metrics")
        if status != 200:
            return {}
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(body):
            for sample in fam.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    async def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until /readyz says 200; AssertionError on timeout or if the process died."""
        t0 = time.monotonic()
        while not self.ready():
            assert self.alive(), f"the service exited: {self.tail()}"
            assert time.monotonic() - t0 < timeout, f"not ready after {timeout} s: {self.tail()}"
            await asyncio.sleep(0.1)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (kills after ``timeout``)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the service did not stop on SIGTERM: {self.tail()}") from None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    # resources, from /proc
    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024.0

    def hwm_mb(self) -> float:
        """Peak RSS of the process so far (VmHWM): catches what sampling misses."""
        return _status_kb(self.pid, "VmHWM") / 1024.0

    def threads(self) -> int:
        return int(_status_kb(self.pid, "Threads"))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_kinds(self) -> Counter[str]:
        """Open descriptors by kind: ``tcp:<remote port>`` for TCP sockets, else the link's
        kind (``pipe``, ``anon_inode:[eventfd]``, a file's path ...). For a leak hunt."""
        remote: dict[str, str] = {}
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]:
                    f = line.split()
                    remote[f[9]] = str(int(f[2].rsplit(":", 1)[1], 16))
        out: Counter[str] = Counter()
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = target[len("socket:[") : -1]
                out[f"tcp:{remote[inode]}" if inode in remote else "socket"] += 1
            elif target.startswith("pipe:"):
                out["pipe"] += 1
            else:
                out[target] += 1
        return out


def _status_kb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise KeyError(key)


def metric(m: Mapping[str, float], name: str, **labels: str) -> float:
    """One sample of ``ServiceProc.metrics()`` (0 when absent)."""
    if labels:
        name += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return m.get(name, 0.0)


def metric_sum(m: Mapping[str, float], name: str) -> float:
    """The sum over every label set of ``name``."""
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))

"""Apache Kafka in KRaft mode on loopback: one node or a cluster, each node broker + controller.

The broker that proves the product: the tests, the benchmarks and ``stream-infer broker
--kafka apache`` start it with ``ApacheKafka``. Where it finds the broker's classes:

1. ``KAFKA_HOME`` set: that distribution's ``libs/`` (any Kafka 4.x the user has);
2. else the cache folder (``STREAM_INFER_CACHE``, default ``~/.cache/stream_infer``)
   holding ``kafka-<KAFKA_VERSION>/libs``, fetched there once from Maven Central by Maven
   (``org.apache.kafka:kafka_2.13`` with a Log4j2 binding) and reused afterwards.

Every node gets its own storage folder (formatted with a fresh cluster id), a broker and
a controller port picked free on 127.0.0.1, and a JVM that dies with the process that
started it. ``stop()`` ends every JVM it started (SIGTERM, then SIGKILL) and removes the
storage it made. Nodes can be killed and restarted one by one (failover tests).

A bad environment raises ``BrokerError`` with one line that says what to do: no Java,
Java older than 17, neither Maven nor KAFKA_HOME, a download that failed.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from stream_infer._errors import BrokerError
from stream_infer.kafka._broker import die_with_parent, free_port, wait_for_broker

__all__ = [
    "KAFKA_VERSION",
    "ApacheKafka",
    "KafkaNode",
    "java_command",
    "kafka_libs",
]

#: The Apache Kafka release the launcher fetches (docker-compose.yml runs the same one).
KAFKA_VERSION = "4.4.0"
_LOG4J_VERSION = "2.26.1"
_SLF4J_VERSION = "2.0.17"
_MIN_JAVA = 17
_COMPLETE = ".complete"  # written last: a cache folder without it is an interrupted fetch

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>stream-infer.local</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

# Warnings and errors only, into the node's folder: the broker's INFO log is ~1 MB a minute.
_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""


def _cache_root() -> Path:
    env = os.environ.get("STREAM_INFER_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "stream_infer"


def java_command() -> str:
    """The ``java`` to run (``JAVA_HOME`` first, else PATH), checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={home} has no bin/java" if home else "no `java` on PATH"
        raise BrokerError(f"Apache Kafka needs Java {_MIN_JAVA} or newer: {where}")
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"cannot run {java} -version: {exc}") from exc
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if found is None:
        raise BrokerError(f"cannot read the Java version from {java} -version")
    major = int(found.group(1))
    if major == 1 and found.group(2):  # "1.8.0_292" is Java 8
        major = int(found.group(2))
    if major < _MIN_JAVA:
        raise BrokerError(
            f"Apache Kafka {KAFKA_VERSION} needs Java {_MIN_JAVA} or newer; {java} is Java {major}"
        )
    return java


def kafka_libs(*, progress: Callable[[str], None] | None = None) -> Path:
    """The folder of the broker's jars: ``$KAFKA_HOME/libs``, else the cache (fetched once)."""
    home = os.environ.get("KAFKA_HOME")
    if home:
        libs = Path(home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                f"KAFKA_HOME={home} is not a Kafka distribution (no libs/kafka_2.13-*.jar)"
            )
        return libs
    target = _cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"
    if (target / _COMPLETE).exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Apache Kafka is neither installed nor fetchable: set KAFKA_HOME to a Kafka "
            "distribution, or install Maven (mvn) to fetch it from Maven Central"
        )
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {target.parent} (once)")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=target.parent))
    try:
        (work / "pom.xml").write_text(
            _POM.format(kafka=KAFKA_VERSION, log4j=_LOG4J_VERSION, slf4j=_SLF4J_VERSION)
        )
        try:
            done = subprocess.run(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-f",
                    str(work / "pom.xml"),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={work / 'libs'}",
                    "-DincludeScope=runtime",
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerError(f"fetching Apache Kafka with Maven failed: {exc}") from exc
        if done.returncode != 0 or not any((work / "libs").glob("kafka_2.13-*.jar")):
            lines = [ln for ln in (done.stdout + done.stderr).splitlines() if "ERROR" in ln]
            why = lines[0].strip() if lines else f"mvn exited with code {done.returncode}"
            raise BrokerError(f"fetching Apache Kafka {KAFKA_VERSION} with Maven failed: {why}")
        (work / "libs" / _COMPLETE).write_text(KAFKA_VERSION + "\n")
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(target)
        # A rename, so a concurrent launcher sees either no folder or a complete one.
        try:
            (work / "libs").rename(target)
        except OSError:
            if not (target / _COMPLETE).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"Apache Kafka {KAFKA_VERSION} cached in {target}")
    return target


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaNode:
    """One KRaft node (broker + controller): its id, ports, folder and JVM."""

    node_id: int
    port: int
    controller_port: int
    folder: Path
    advertised_port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class ApacheKafka:
    """Apache Kafka (KRaft) on loopback, ``nodes`` nodes; a context manager.

    ``bootstrap`` lists every node. With three or more nodes the defaults are replication
    factor 3 and ``min.insync.replicas=2`` (internal topics too); with one, 1 and 1.
    ``properties`` adds or overrides server properties on every node. ``ports`` fixes a
    node's client port (node id -> port; default a free one). ``advertised_ports`` maps a
    node id to the port it tells clients to use (a TCP proxy in front of it).
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        properties: Mapping[str, str] | None = None,
        ports: Mapping[int, int] | None = None,
        advertised_ports: Mapping[int, int] | None = None,
        heap_mb: int = 512,
        startup_timeout: float = 120.0,
        log_level: str = "WARN",
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        self.size = nodes
        self.properties = dict(properties or {})
        self.ports = dict(ports or {})
        self.advertised_ports = dict(advertised_ports or {})
        self.heap_mb = heap_mb
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self._progress = progress
        self.nodes: list[KafkaNode] = []
        self.folder: Path | None = None
        self._java = ""
        self._libs: Path | None = None

    # -- addresses ------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        if not self.nodes:
            raise BrokerError("the Apache Kafka cluster is not started")
        return ",".join(f"127.0.0.1:{n.advertised_port}" for n in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(node_id)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> str:
        """Start every node and wait until the cluster answers metadata with all brokers."""
        if self.nodes:
            return self.bootstrap
        self._java = java_command()
        self._libs = kafka_libs(progress=self._progress)
        self.folder = Path(tempfile.mkdtemp(prefix="stream-infer-kafka-"))
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def _start_all(self) -> None:
        assert self.folder is not None
        for i in range(1, self.size + 1):
            port, ctl = self.ports.get(i) or free_port(), free_port()
            while ctl == port:
                ctl = free_port()
            folder = self.folder / f"node-{i}"
            folder.mkdir()
            self.nodes.append(KafkaNode(i, port, ctl, folder, self.advertised_ports.get(i, port)))
        cluster_id = _cluster_id()
        for n in self.nodes:
            (n.folder / "server.properties").write_text(self._server_properties(n))
            (n.folder / "log4j2.properties").write_text(
                _LOG4J2.format(path=n.folder / "server.log", level=self.log_level)
            )
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: self._format(n, cluster_id), self.nodes))
        for n in self.nodes:
            self._launch(n)
        self.wait_ready(self.startup_timeout)

    def _server_properties(self, n: KafkaNode) -> str:
        voters = ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in self.nodes)
        rf = 3 if self.size >= 3 else 1
        isr = 2 if self.size >= 3 else 1
        props = {
            "process.roles": "broker,controller",
            "node.id": str(n.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{n.port},CONTROLLER://127.0.0.1:{n.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{n.advertised_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(n.folder / "data"),
            "num.partitions": "1",
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(isr),
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(isr),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(isr),
            # A group's first member joins at once instead of after 3 s (tests, benchmarks).
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
        }
        props.update(self.properties)
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _classpath(self) -> str:
        assert self._libs is not None
        return str(self._libs / "*")

    def _format(self, n: KafkaNode, cluster_id: str) -> None:
        cmd = [
            self._java,
            # A short-lived tool: the quick JIT tier and a small heap start it faster.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Xmx128m",
            f"-Dlog4j2.configurationFile={n.folder / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(n.folder / "server.properties"),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerError(f"formatting Kafka storage failed: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise BrokerError(f"formatting Kafka storage failed: {tail[0]}")

    def _launch(self, n: KafkaNode) -> None:
        cmd = [
            self._java,
            f"-Xms{min(256, self.heap_mb)}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={n.folder / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(n.folder / "server.properties"),
        ]
        out = open(n.folder / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            n.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in a terminal goes to us; we stop it
                preexec_fn=die_with_parent,
            )
        finally:
            out.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every running node answers and metadata lists all of them as brokers."""
        deadline = time.monotonic() + timeout
        running = [n for n in self.nodes if n.proc is not None]
        for n in running:
            while True:
                if n.proc is not None and n.proc.poll() is not None:
                    raise BrokerError(
                        f"Kafka node {n.node_id} exited with code {n.proc.returncode} at start: "
                        f"{self._last_error(n)}"
                    )
                try:
                    wait_for_broker(n.address, timeout=1.0)
                    break
                except BrokerError:
                    if time.monotonic() > deadline:
                        raise BrokerError(
                            f"Kafka node {n.node_id} did not answer on {n.address} within "
                            f"{timeout:g} s: {self._last_error(n)}"
                        ) from None
        want = {n.node_id for n in running}
        while True:
            seen = _run(_broker_ids(",".join(n.address for n in running)))
            if want <= seen:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the Kafka cluster lists brokers {sorted(seen)}, not {sorted(want)}, "
                    f"after {timeout:g} s"
                )
            time.sleep(0.2)

    def _last_error(self, n: KafkaNode) -> str:
        lines: list[str] = []
        for name in ("server.log", "stdout.log"):
            with contextlib.suppress(OSError):
                lines += [
                    ln
                    for ln in (n.folder / name).read_text(errors="replace").splitlines()
                    if "ERROR" in ln or "Exception" in ln
                ]
        return lines[0].strip()[:300] if lines else "no error in its log"

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Signal one node (SIGKILL by default) and wait for it to exit."""
        n = self.node(node_id)
        if n.proc is None:
            return
        _stop(n.proc, sig)
        n.proc = None

    def restart(self, node_id: int, *, wait: bool = True) -> None:
        """Start a node that was killed, on its old ports and storage."""
        n = self.node(node_id)
        if n.running():
            return
        self._launch(n)
        if wait:
            self.wait_ready(self.startup_timeout)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove the storage."""
        for n in self.nodes:
            if n.proc is not None:
                _stop(n.proc, signal.SIGTERM)
                n.proc = None
        self.nodes = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None]

    def __enter__(self) -> ApacheKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        up = sum(n.running() for n in self.nodes)
        return f"ApacheKafka({self.size} nodes, {up} running)"


def _stop(proc: subprocess.Popen[bytes], sig: int, grace: float = 15.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=grace if sig != signal.SIGKILL else 10)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=10)


async def _broker_ids(bootstrap: str) -> set[int]:
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await client.bootstrap()
        return {b.nodeId for b in client.cluster.brokers()}
    except Exception:
        return set()
    finally:
        await client.close()


def _run(coro: Coroutine[Any, Any, set[int]]) -> set[int]:
    """Run a coroutine from sync code, also when called inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()

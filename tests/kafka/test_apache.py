"""The Apache Kafka launcher: real JVMs on loopback, every one of them stopped afterwards.

The bad-environment cases run a fake ``java`` or hide Maven, so they need neither.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_infer import BrokerError
from stream_infer.kafka import KAFKA_VERSION, ApacheKafka, create_topics, make_producer
from stream_infer.kafka._apache import java_command, kafka_libs
from tests.fixtures_kafka import KafkaBroker

CLI = [sys.executable, "-m", "stream_infer.cli"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; /proc says which.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kafka_jvms() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "kafka.Kafka"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def _fake_java(tmp_path: Path, version: str) -> Path:
    home = tmp_path / f"jdk-{version}"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2020-01-01' >&2\n")
    java.chmod(0o755)
    return home


# -- bad environments ---------------------------------------------------------------------


def test_java_older_than_17_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, "11.0.2")))
    with pytest.raises(BrokerError, match=r"needs Java 17 or newer; .* is Java 11"):
        java_command()
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, "1.8.0_292")))
    with pytest.raises(BrokerError, match="is Java 8"):
        java_command()
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, "21.0.1")))
    assert java_command().endswith("bin/java")


def test_no_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="no `java` on PATH"):
        java_command()


def test_no_maven_and_no_kafka_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_HOME", raising=False)
    monkeypatch.setenv("STREAM_INFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match=r"set KAFKA_HOME .* or install Maven"):
        kafka_libs()


def test_kafka_home_that_is_no_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
    with pytest.raises(BrokerError, match="is not a Kafka distribution"):
        kafka_libs()


def test_a_failed_download_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Maven that fails (here: offline with an empty local repository) is reported, and
    leaves no half-filled cache behind."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(
        "#!/bin/sh\necho '[ERROR] Failed to execute goal: Could not resolve dependencies'\nexit 1\n"
    )
    mvn.chmod(0o755)
    monkeypatch.delenv("KAFKA_HOME", raising=False)
    monkeypatch.setenv("STREAM_INFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(BrokerError, match=r"with Maven failed: .*Could not resolve dependencies"):
        kafka_libs(progress=lambda _: None)
    assert not (tmp_path / "cache" / f"kafka-{KAFKA_VERSION}" / "libs").exists()


def test_cli_bad_environment_is_one_error_line(tmp_path: Path) -> None:
    env = {**os.environ, "JAVA_HOME": str(_fake_java(tmp_path, "11.0.2"))}
    done = subprocess.run(
        [*CLI, "broker", "--kafka", "apache"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Java 17" in lines[0], lines


# -- real clusters ------------------------------------------------------------------------


@pytest.fixture
def no_new_jvms() -> Iterator[None]:
    before = _kafka_jvms()
    yield
    deadline = time.monotonic() + 20
    while _kafka_jvms() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _kafka_jvms() - before == set(), "a Kafka JVM was left running"


async def _round_trip(bootstrap: str, topic: str, acks: int | str = "all") -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    value = os.urandom(8)
    producer = make_producer(bootstrap, acks=acks)
    await producer.start()
    try:
        md = await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, md.partition)
        consumer.assign([tp])
        consumer.seek(tp, md.offset)
        rec = await consumer.getone()
    finally:
        await consumer.stop()
    assert (rec.offset, rec.value) == (md.offset, value)


@pytest.mark.services
async def test_session_broker_is_apache_kafka(apache_kafka: KafkaBroker) -> None:
    """The suite's Apache Kafka answers produce and fetch (the fixture started it)."""
    await create_topics(apache_kafka.bootstrap, {"apache.smoke": 1})
    await _round_trip(apache_kafka.bootstrap, "apache.smoke")


@pytest.mark.services
def test_launcher_stops_what_it_started_and_ports_differ(
    apache_kafka: KafkaBroker, no_new_jvms: None
) -> None:
    """A second launcher beside the session's gets other ports; stop() leaves no JVM and no
    storage behind."""
    kafka = ApacheKafka(1)
    try:
        kafka.start()
        ports = {n.port for n in kafka.nodes} | {n.controller_port for n in kafka.nodes}
        session_port = int(apache_kafka.bootstrap.rsplit(":", 1)[1])
        assert session_port not in ports
        pids, folder = kafka.pids(), kafka.folder
        assert pids and all(_alive(p) for p in pids)
    finally:
        kafka.stop()
    assert not any(_alive(p) for p in pids)
    assert folder is not None and not folder.exists()


@pytest.mark.services
def test_cli_broker_apache_ctrl_c_and_kill(apache_kafka: KafkaBroker, no_new_jvms: None) -> None:
    """`stream-infer broker --kafka apache` prints the bootstrap; Ctrl-C stops its JVM, and so
    does a SIGKILL of the launcher itself (the JVM dies with its parent)."""
    for how in (signal.SIGINT, signal.SIGKILL):
        before = _kafka_jvms()
        proc = subprocess.Popen(
            [*CLI, "broker", "--kafka", "apache"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
            jvms = _kafka_jvms() - before
            assert len(jvms) == 1
            proc.send_signal(how)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in jvms) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in jvms), f"JVM left after {signal.Signals(how).name}"


@pytest.mark.services
async def test_three_nodes_replicate_and_survive_one_down(
    apache_kafka: KafkaBroker, no_new_jvms: None
) -> None:
    """Three nodes: topics default to replication 3 and min.insync.replicas 2, so with one
    node killed acks=all still succeeds, and the node comes back on its old storage."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    kafka = ApacheKafka(3)
    kafka.start()
    try:
        bootstrap = kafka.bootstrap
        assert len(bootstrap.split(",")) == 3
        await create_topics(bootstrap, {"three": 2}, replication=3)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (desc,) = await admin.describe_topics(["three"])
            assert all(len(p["replicas"]) == 3 for p in desc["partitions"])
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, "three")]
            )
        finally:
            await admin.close()
        entries = {e[0]: e[1] for e in configs[0].resources[0][4]}
        assert entries["min.insync.replicas"] == "2"
        await _round_trip(bootstrap, "three")
        kafka.kill(2)
        alive = ",".join(n.address for n in kafka.nodes if n.node_id != 2)
        await _round_trip(alive, "three")
        kafka.restart(2)
        assert sum(n.running() for n in kafka.nodes) == 3
    finally:
        kafka.stop()

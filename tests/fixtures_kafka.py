"""Kafka fixtures (owned by the service work; see tests/kafka).

Which broker (DESIGN.md, local stack): KAFKA_BOOTSTRAP_SERVERS when set; else a Kafka
container when Docker runs and testcontainers is installed; else the embedded Tansu broker
on a free loopback port. One broker per test session; every test gets its own topics and
consumer group (``kafka_topics``), so tests never see each other's messages.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from stream_infer.config import KafkaSettings


@dataclass(frozen=True)
class KafkaBroker:
    """The session's broker: its address and what it is (``env``, ``container`` or ``embedded``)."""

    bootstrap: str
    kind: str

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"


def _docker_running() -> bool:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return os.path.exists(host[len("unix://") :])
    return bool(host) or os.path.exists("/var/run/docker.sock")


def _container() -> tuple[Any, str] | None:
    """A started Kafka container and its bootstrap, or None where Docker or testcontainers is missing."""
    if not _docker_running():
        return None
    try:
        from testcontainers.kafka import KafkaContainer  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        container = KafkaContainer().with_kraft()
        container.start()
    except Exception:  # Docker answered but cannot run it: fall back to the embedded broker
        return None
    return container, container.get_bootstrap_server()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    from stream_infer import BrokerError
    from stream_infer.kafka import EmbeddedBroker, wait_for_broker

    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        wait_for_broker(env, timeout=30)
        yield KafkaBroker(env, "env")
        return
    found = _container()
    if found is not None:
        container, bootstrap = found
        try:
            yield KafkaBroker(bootstrap, "container")
        finally:
            container.stop()
        return
    broker = EmbeddedBroker()
    try:
        broker.start()
    except BrokerError as exc:
        pytest.skip(f"no Kafka broker could be started: {exc}")
    try:
        yield KafkaBroker(broker.bootstrap, "embedded")
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_container() -> Iterator[KafkaBroker]:
    """A real Kafka (container), for the few tests that compare semantics; skips without Docker.

    Tests using it must not carry the ``services`` marker: no Docker is a normal setup here.
    """
    found = _container()
    if found is None:
        pytest.skip(
            "no Docker engine (or testcontainers) here: the Kafka container path is skipped"
        )
    container, bootstrap = found
    try:
        yield KafkaBroker(bootstrap, "container")
    finally:
        container.stop()


def unique_name(request: pytest.FixtureRequest, prefix: str) -> str:
    """A topic or group name unique to this test run and legal in Kafka."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60]
    return f"{prefix}.{test}.{uuid.uuid4().hex[:8]}"


TopicsFactory = Callable[..., KafkaSettings]


@pytest.fixture
def kafka_topics(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> TopicsFactory:
    """``make(partitions=1) -> KafkaSettings`` with fresh candles/predictions/dlq topics and group.

    The topics are created (``partitions`` each for candles, 1 for the outputs unless
    ``out_partitions`` is given); the settings point at the session's broker.
    """
    from stream_infer.kafka import create_topics

    def make(partitions: int = 1, out_partitions: int = 1, **overrides: Any) -> KafkaSettings:
        base = unique_name(request, "t")
        settings = KafkaSettings(
            kafka_bootstrap_servers=kafka_broker.bootstrap,
            kafka_candles_topic=f"{base}.candles",
            kafka_predictions_topic=f"{base}.predictions",
            kafka_dlq_topic=f"{base}.candles.dlq",
            kafka_group_id=f"{base}.group",
            **overrides,
        )
        topics = {
            settings.kafka_candles_topic: partitions,
            settings.kafka_predictions_topic: out_partitions,
            settings.kafka_dlq_topic: out_partitions,
        }
        _run(create_topics(kafka_broker.bootstrap, topics))
        return settings

    return make


def _run(coro: Any) -> Any:
    """Run a coroutine from a sync fixture, also when the test's loop is running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()

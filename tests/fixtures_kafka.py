"""Kafka fixtures (owned by the service work; see tests/kafka).

Which broker serves ``kafka_broker`` (one per test session):

* KAFKA_BOOTSTRAP_SERVERS when set (a Kafka of yours);
* else Apache Kafka in KRaft mode, started by the test setup (``ApacheKafka``: Java 17+,
  the jars from KAFKA_HOME or fetched once with Maven), the broker that proves the product;
* STREAM_INFER_TEST_BROKER=tansu runs the suite on the embedded Tansu broker instead.

``tansu_broker`` is always the embedded broker (the zero-setup path's smoke set), and
``apache_kafka`` always Apache Kafka (the session's own when ``kafka_broker`` is one). Every
test gets its own topics and consumer group (``kafka_topics``), so tests never see each
other's messages.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from stream_infer.config import KafkaSettings
from tests.kafka_helpers import run_sync

#: ``STREAM_INFER_TEST_BROKER``: the broker the suite starts when none is configured.
TEST_BROKER = os.environ.get("STREAM_INFER_TEST_BROKER", "apache")


@dataclass(frozen=True)
class KafkaBroker:
    """A broker tests use: its address and what it is (``env``, ``apache`` or ``embedded``)."""

    bootstrap: str
    kind: str

    @property
    def embedded(self) -> bool:
        return self.kind == "embedded"


class _Started:
    """The brokers this session started, shared by the fixtures (each at most once)."""

    apache: Any = None
    apache_error: str | None = None


def _apache() -> KafkaBroker:
    """The session's Apache Kafka (started on first use, stopped at session end); skips
    (a failure in CI) where it cannot start."""
    from stream_infer import BrokerError
    from stream_infer.kafka import ApacheKafka

    if _Started.apache is None and _Started.apache_error is None:
        kafka = ApacheKafka(1)
        try:
            kafka.start()
        except BrokerError as exc:
            _Started.apache_error = f"Apache Kafka could not be started: {exc}"
        else:
            _Started.apache = kafka
    if _Started.apache_error is not None:
        pytest.skip(_Started.apache_error)
    return KafkaBroker(_Started.apache.bootstrap, "apache")


@pytest.fixture(scope="session", autouse=True)
def _stop_started_brokers() -> Iterator[None]:
    yield
    if _Started.apache is not None:
        _Started.apache.stop()
        _Started.apache = None


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    from stream_infer.kafka import wait_for_broker

    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        wait_for_broker(env, timeout=30)
        yield KafkaBroker(env, "env")
        return
    if TEST_BROKER == "tansu":
        yield from _tansu()
        return
    yield _apache()


@pytest.fixture(scope="session")
def apache_kafka() -> KafkaBroker:
    """Apache Kafka itself, for the tests that compare the brokers' semantics."""
    return _apache()


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[KafkaBroker]:
    """The embedded Tansu broker (the demo's zero-setup default)."""
    yield from _tansu()


def _tansu() -> Iterator[KafkaBroker]:
    from stream_infer import BrokerError
    from stream_infer.kafka import EmbeddedBroker

    broker = EmbeddedBroker()
    try:
        broker.start()
    except BrokerError as exc:
        pytest.skip(f"the embedded broker could not be started: {exc}")
    try:
        yield KafkaBroker(broker.bootstrap, "embedded")
    finally:
        broker.stop()


def unique_name(request: pytest.FixtureRequest, prefix: str) -> str:
    """A topic or group name unique to this test run and legal in Kafka."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:60]
    return f"{prefix}.{test}.{uuid.uuid4().hex[:8]}"


TopicsFactory = Callable[..., KafkaSettings]


@pytest.fixture
def kafka_topics(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> TopicsFactory:
    """``make(partitions=1) -> KafkaSettings`` with fresh candles/predictions/dlq topics and group.

    The topics are created (``partitions`` each for candles, 1 for the outputs unless
    ``out_partitions`` is given; ``candles_max_bytes`` raises the candles topic's
    ``max.message.bytes``); the settings point at the session's broker.
    """
    from stream_infer.kafka import create_topics

    def make(
        partitions: int = 1,
        out_partitions: int = 1,
        candles_max_bytes: int | None = None,
        **overrides: Any,
    ) -> KafkaSettings:
        base = unique_name(request, "t")
        settings = KafkaSettings(
            kafka_bootstrap_servers=kafka_broker.bootstrap,
            kafka_candles_topic=f"{base}.candles",
            kafka_predictions_topic=f"{base}.predictions",
            kafka_dlq_topic=f"{base}.candles.dlq",
            kafka_group_id=f"{base}.group",
            **overrides,
        )
        outputs = {
            settings.kafka_predictions_topic: out_partitions,
            settings.kafka_dlq_topic: out_partitions,
        }
        # Kafka refuses records over the topic's max.message.bytes (~1 MiB by default) at
        # produce time: a test of the service's own bound raises the broker's.
        big = {"max.message.bytes": str(candles_max_bytes)} if candles_max_bytes else None
        run_sync(
            create_topics(
                kafka_broker.bootstrap, {settings.kafka_candles_topic: partitions}, configs=big
            )
        )
        run_sync(create_topics(kafka_broker.bootstrap, outputs))
        return settings

    return make

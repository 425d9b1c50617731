"""``start_producer``: idempotent where the broker serves it (Apache Kafka), a plain producer
with a warning where it cannot (Tansu), a clear error where idempotence was insisted on."""

from __future__ import annotations

import logging

import pytest

from stream_infer import BrokerError
from stream_infer.kafka._produce import start_producer
from tests.fixtures_kafka import KafkaBroker

pytestmark = pytest.mark.services


async def test_apache_kafka_gets_an_idempotent_producer(apache_kafka: KafkaBroker) -> None:
    producer, idempotent = await start_producer(apache_kafka.bootstrap)
    try:
        assert idempotent
        md = await producer.send_and_wait("idem.smoke", b"v")
        assert md.offset >= 0
    finally:
        await producer.stop()


async def test_tansu_falls_back_with_a_warning(
    tansu_broker: KafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "stream_infer.service"):
        producer, idempotent = await start_producer(tansu_broker.bootstrap)
    try:
        assert not idempotent
        assert "cannot serve an idempotent producer" in caplog.text
        await producer.send_and_wait("idem.smoke", b"v")
    finally:
        await producer.stop()
    with pytest.raises(BrokerError, match="refused an idempotent producer"):
        await start_producer(tansu_broker.bootstrap, idempotence="true")
    producer, idempotent = await start_producer(tansu_broker.bootstrap, idempotence="false")
    await producer.stop()
    assert not idempotent

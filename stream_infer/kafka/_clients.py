"""The service's Kafka clients: a consumer group member and a producer, started together.

Also the two places where aiokafka needs help: leaving a group in generation 0, and the
rebalance listener (built lazily, as aiokafka is imported only when a service starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stream_infer._errors import BrokerError
from stream_infer.config import KafkaSettings
from stream_infer.kafka._health import BrokerHealth
from stream_infer.kafka._observer import Observer
from stream_infer.kafka._produce import start_producer

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

__all__ = ["connect", "leave_generation_zero", "open_clients", "rebalance_listener"]

log = logging.getLogger("stream_infer.service")

OnPartitions = Callable[[list["TopicPartition"]], Awaitable[None]]

# Pause between connection attempts: doubled each time up to the cap.
_MAX_RETRY_S = 5.0


async def connect(
    open_once: Callable[[], Awaitable[None]],
    health: BrokerHealth,
    observer: Observer,
    stop: asyncio.Event,
    *,
    timeout_s: float | None,
    retry_s: float,
) -> None:
    """``open_once()`` until it does not raise BrokerError, for up to ``timeout_s`` (None:
    until ``stop`` is set; 0: one attempt); then the BrokerError is raised."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    delay = retry_s
    while True:
        try:
            await open_once()
            health.mark(True)
            return
        except BrokerError as exc:
            health.mark(False)
            observer.connect_failed()
            if stop.is_set() or (deadline is not None and loop.time() + delay > deadline):
                raise
            log.warning("%s; not ready, retrying in %.1f s", exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            raise BrokerError(f"stopped before Kafka at {health.bootstrap} could be reached")
        delay = min(delay * 2, _MAX_RETRY_S)


async def open_clients(
    settings: KafkaSettings,
    client: Mapping[str, Any],
    *,
    client_id: str,
    linger_ms: int,
    session_timeout_ms: int,
) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    """Start a consumer (group ``kafka_group_id``, no auto-commit) and a producer with the
    connection options ``client`` (``client_kwargs``); BrokerError when the broker does not
    answer (neither is left running)."""
    from aiokafka import AIOKafkaConsumer

    s = settings
    bootstrap = client["bootstrap_servers"]
    consumer = AIOKafkaConsumer(
        **client,
        group_id=s.kafka_group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
        max_poll_records=s.kafka_max_poll_records,
        # how soon the group notices a dead member and hands its partitions over
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(100, session_timeout_ms // 3),
        max_partition_fetch_bytes=max(s.kafka_max_message_bytes, 1 << 20),
    )
    producer, idempotent = await start_producer(
        bootstrap,
        idempotence=s.kafka_enable_idempotence,
        client={k: v for k, v in client.items() if k != "bootstrap_servers"},
        linger_ms=linger_ms,
        client_id=client_id,
        max_request_size=max(s.kafka_max_message_bytes * 2, 1 << 20),
    )
    try:
        await consumer.start()
    except Exception as exc:
        await consumer.stop()
        await producer.stop()
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    log.info("producer: %s", "idempotent" if idempotent else "not idempotent")
    return consumer, producer


async def leave_generation_zero(consumer: AIOKafkaConsumer) -> None:
    """Leave the group when it is in generation 0, which aiokafka does not do itself.

    The embedded broker numbers a group's first generation 0 (Kafka starts at 1), and
    aiokafka only sends LeaveGroup for a generation > 0: without this, the next member
    would wait out the session timeout before it gets the partitions.
    """
    coordinator: Any = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "generation", None) != 0:
        return
    try:
        from aiokafka.errors import KafkaError
        from aiokafka.protocol.group import LeaveGroupRequest

        await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, coordinator.member_id))
    except (KafkaError, AttributeError, TypeError) as exc:
        log.debug("LeaveGroup in generation 0 failed: %r", exc)


def rebalance_listener(revoked: OnPartitions, assigned: OnPartitions) -> Any:
    """aiokafka's ConsumerRebalanceListener calling ``revoked`` and ``assigned``."""
    from aiokafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, tps: Iterable[TopicPartition]) -> None:
            await revoked(list(tps))

        async def on_partitions_assigned(self, tps: Iterable[TopicPartition]) -> None:
            await assigned(list(tps))

    return Listener()

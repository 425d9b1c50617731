"""Publishing a batch: predictions and dead letters, sent until the broker acknowledges each one.

``outgoing`` turns a batch's results into records (pure: a dead letter too large for the
topic has its original value cut to fit); ``Publisher.send`` sends them and retries the
failed ones until ``send_timeout_s`` (then ``BrokerError``). At-least-once: resending is
safe, keys identify the events downstream.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from stream_infer._errors import BrokerError
from stream_infer.config import KafkaSettings
from stream_infer.events import DeadLetter, encode_dead_letter, encode_prediction
from stream_infer.kafka._health import BrokerHealth
from stream_infer.kafka._observer import Observer
from stream_infer.pipeline import BatchResult

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

__all__ = ["Outgoing", "Publisher", "outgoing", "shrunk"]

log = logging.getLogger("stream_infer.service")

# Retry pause after failed sends: doubled each time up to the cap.
_FIRST_DELAY_S = 0.1
_MAX_DELAY_S = 5.0


class Outgoing(NamedTuple):
    """One record to send."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


def outgoing(
    results: Sequence[BatchResult],
    keys: Mapping[tuple[int, int], bytes | None],
    settings: KafkaSettings,
) -> list[Outgoing]:
    """The records a batch publishes: its predictions (key = symbol), then its dead letters
    (key = the original record's, from ``keys`` by (partition, offset)), result by result."""
    s = settings
    out: list[Outgoing] = []
    for r in results:
        for p in r.predictions:
            out.append(Outgoing(s.kafka_predictions_topic, p.message_key, encode_prediction(p)))
        for d in r.dead_letters:
            value = encode_dead_letter(d)
            if len(value) > s.kafka_max_message_bytes:
                value = encode_dead_letter(shrunk(d, s.kafka_max_message_bytes))
            out.append(
                Outgoing(s.kafka_dlq_topic, keys.get((d.partition, d.offset)), value, d.headers())
            )
    return out


def shrunk(d: DeadLetter, limit: int) -> DeadLetter:
    """The dead letter with the original value cut so the record fits under ``limit`` bytes."""
    # base64 inflates 4/3 and the record holds the value twice (field and header room).
    keep = max(0, (limit // 2) * 3 // 4 - 1024)
    raw = base64.b64decode(d.value)[:keep]
    return d.model_copy(
        update={
            "value": base64.b64encode(raw).decode(),
            "error": f"{d.error} [value truncated to {len(raw)} bytes]"[:500],
        }
    )


class Publisher:
    """Sends records with ``producer`` (set by the service once connected)."""

    def __init__(
        self,
        settings: KafkaSettings,
        health: BrokerHealth,
        observer: Observer,
        *,
        send_timeout_s: float = 120.0,
    ) -> None:
        self.settings = settings
        self.send_timeout_s = send_timeout_s
        self.producer: AIOKafkaProducer | None = None
        self._health = health
        self._observer = observer

    async def publish(
        self, results: Sequence[BatchResult], keys: Mapping[tuple[int, int], bytes | None]
    ) -> None:
        """Send every prediction and dead letter of ``results``; return once all are acknowledged."""
        out = outgoing(results, keys, self.settings)
        if out:
            await self.send(out)

    async def send(self, records: Sequence[Outgoing]) -> None:
        """Send ``records`` and wait for every acknowledgement, sending the failed ones again
        until ``send_timeout_s`` has passed (then BrokerError)."""
        from aiokafka.errors import KafkaError

        producer = self.producer
        if producer is None:
            raise BrokerError("the publisher has no producer: the service is not started")
        deadline = time.monotonic() + self.send_timeout_s
        pending = list(records)
        delay = _FIRST_DELAY_S
        while True:
            futs: list[asyncio.Future[Any]] = []
            for topic, key, value, headers in pending:
                try:
                    futs.append(await producer.send(topic, value, key=key, headers=headers))
                except KafkaError as exc:
                    log.warning("send to %s failed: %r", topic, exc)
                    # counted with the failed results below
                    fut = asyncio.get_running_loop().create_future()
                    fut.set_exception(exc)
                    futs.append(fut)
            async with self._health.stall_watch("send", f"{len(futs)} sends"):
                results = await asyncio.gather(*futs, return_exceptions=True)
            failed = [i for i, res in enumerate(results) if isinstance(res, BaseException)]
            if not failed:
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{len(failed)} of {len(pending)} messages not acknowledged within "
                    f"{self.send_timeout_s:g} s: {results[failed[0]]!r}"
                )
            self._observer.send_retried(len(failed))
            log.warning("%d sends failed (%r); retrying", len(failed), results[failed[0]])
            pending = [pending[i] for i in failed]
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)

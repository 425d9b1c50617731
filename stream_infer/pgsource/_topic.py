"""Sending the Postgres source's predictions to the predictions topic too, when a broker is
configured: the Kafka path's producer (``acks=all``), keyed by symbol, acknowledged before
the round commits (at-least-once on the topic, like the Kafka service)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from stream_infer._errors import BrokerError
from stream_infer.config import KafkaSettings
from stream_infer.events import Prediction, encode_prediction

__all__ = ["TopicPublisher"]


class TopicPublisher:
    """``await publisher(predictions)`` returns once the broker acknowledged every one;
    BrokerError (the round is then redone) when it cannot. ``start``/``stop`` around use."""

    def __init__(self, settings: KafkaSettings, bootstrap: str, *, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = settings.kafka_predictions_topic
        self.timeout_s = timeout_s
        self._producer: Any = None

    async def start(self) -> None:
        from stream_infer.kafka import client_kwargs, make_producer

        client = {
            k: v
            for k, v in client_kwargs(self.settings, self.bootstrap).items()
            if k != "bootstrap_servers"
        }
        producer = make_producer(self.bootstrap, client=client)
        try:
            await producer.start()
        except Exception as exc:  # aiokafka's own errors, socket errors
            await producer.stop()
            raise BrokerError(f"cannot reach the broker at {self.bootstrap}: {exc}") from exc
        self._producer = producer

    async def __call__(self, predictions: Sequence[Prediction]) -> None:
        if self._producer is None:
            raise BrokerError("the predictions publisher is not started")
        try:
            async with asyncio.timeout(self.timeout_s):
                futures = [
                    await self._producer.send(self.topic, encode_prediction(p), key=p.message_key)
                    for p in predictions
                ]
                await asyncio.gather(*futures)
        except Exception as exc:
            raise BrokerError(
                f"publishing {len(predictions)} predictions to {self.topic} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

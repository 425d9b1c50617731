"""The publisher without a broker: which records a batch sends, retries, oversized dead letters."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from stream_infer import BrokerError
from stream_infer.config import KafkaSettings
from stream_infer.events import decode_dead_letter, decode_prediction, encode_candle
from stream_infer.kafka import BrokerHealth, Observer, Outgoing, Publisher, outgoing
from stream_infer.pipeline import BatchResult, Inbound, Pipeline, first_prediction_index
from tests.pipeline.fakes import FakeEnsemble, candle, fake_factory


def batch(n: int, *, bad: bytes = b"not json") -> BatchResult:
    """``n`` candles of one stream (fake features: warm-up 3, seq_len 2) and one bad message."""
    pipeline = Pipeline(FakeEnsemble(seq_len=2), features=fake_factory(3), now_ms=lambda: 0)
    msgs = [Inbound(encode_candle(candle(i, "AAA")), 0, i, 0.0, "candles") for i in range(n)]
    msgs.append(Inbound(bad, 1, 40, 0.0, "candles", None, b"the key"))
    return pipeline.process(msgs)


class FakeProducer:
    """``send`` fails the first ``fail`` futures of each topic it is asked to, once."""

    def __init__(self, fail: int = 0, *, hang: bool = False) -> None:
        self.fail = fail
        self.hang = hang
        self.sent: list[Outgoing] = []

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: Any
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail > 0:
            self.fail -= 1
            fut.set_exception(KafkaTimeoutError())
        elif not self.hang:
            self.sent.append(Outgoing(topic, key, value, headers))
            fut.set_result(None)
        return fut


def publisher(
    settings: KafkaSettings, producer: Any, **kw: Any
) -> tuple[Publisher, Observer, BrokerHealth]:
    obs = Observer()
    health = BrokerHealth("nowhere:9092", obs, probe_interval_s=kw.pop("probe_interval_s", 1.0))
    pub = Publisher(settings, health, obs, **kw)
    pub.producer = producer
    return pub, obs, health


def test_outgoing_predictions_by_symbol_then_dead_letters_by_original_key() -> None:
    s = KafkaSettings()
    r = batch(8)
    n = 8 - first_prediction_index(2, warmup=3)
    assert len(r.predictions) == n and len(r.dead_letters) == 1
    out = outgoing([r], {(1, 40): b"the key"}, s)
    assert [o.topic for o in out] == [s.kafka_predictions_topic] * n + [s.kafka_dlq_topic]
    assert all(o.key == b"AAA" and o.headers is None for o in out[:n])
    assert [decode_prediction(o.value).open_time for o in out[:n]] == [
        p.open_time for p in r.predictions
    ]
    dl = out[-1]
    assert dl.key == b"the key"
    assert dict(dl.headers or [])["source"] == b"candles/1/40"
    assert decode_dead_letter(dl.value).reason == r.dead_letters[0].reason


def test_an_oversized_dead_letter_is_cut_to_fit() -> None:
    s = KafkaSettings(kafka_max_message_bytes=4096)
    r = batch(0, bad=b"x" * 20_000)
    (dl,) = outgoing([r], {}, s)
    assert len(dl.value) <= s.kafka_max_message_bytes
    got = decode_dead_letter(dl.value)
    kept = base64.b64decode(got.value)
    assert 0 < len(kept) < 20_000 and kept == b"x" * len(kept)
    assert f"[value truncated to {len(kept)} bytes]" in got.error
    small = outgoing([batch(0, bad=b"y" * 100)], {}, s)[0]
    assert base64.b64decode(decode_dead_letter(small.value).value) == b"y" * 100


async def test_send_retries_the_failed_records_until_acknowledged() -> None:
    s = KafkaSettings()
    producer = FakeProducer(fail=2)
    pub, obs, _ = publisher(s, producer)
    await pub.publish([batch(8)], {})
    assert len(producer.sent) == 8 - first_prediction_index(2, warmup=3) + 1, "each acked once"
    assert obs.stats.send_retries == 2


async def test_send_gives_up_after_the_timeout_with_a_broker_error() -> None:
    pub, _, _ = publisher(KafkaSettings(), FakeProducer(fail=1_000), send_timeout_s=0.0)
    with pytest.raises(BrokerError, match="not acknowledged within 0 s"):
        await pub.send([Outgoing("t", None, b"v")])


async def test_a_send_that_hangs_counts_a_stall_and_marks_the_broker_down() -> None:
    producer = FakeProducer(hang=True)
    pub, obs, health = publisher(KafkaSettings(), producer, probe_interval_s=0.01)
    health.mark(True)
    task = asyncio.create_task(pub.send([Outgoing("t", None, b"v")]))
    await asyncio.sleep(0.1)
    assert obs.stats.stalls == 1 and not health.reachable
    task.cancel()


async def test_publish_without_a_producer_is_a_clear_error() -> None:
    pub, _, _ = publisher(KafkaSettings(), None)
    with pytest.raises(BrokerError, match="not started"):
        await pub.publish([batch(8)], {})
    await pub.publish([], {})  # nothing to send: nothing asked of the producer

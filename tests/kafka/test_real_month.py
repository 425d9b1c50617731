"""A real month through the service on the session's broker (Apache Kafka in CI).

February 2023 of three symbols, ~121k candles, one symbol as the exchange's own kline
payload, poison mixed in: exactly one prediction per ready candle, equal to the replay
twin within 1e-6, and every poison message in the DLQ with its reason.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import orjson
import pytest

from stream_infer.candles import Candle, read_klines
from stream_infer.events import decode_dead_letter, decode_prediction, encode_candle
from stream_infer.kafka import Service, frame_candles
from stream_infer.pipeline import Pipeline
from tests.conftest import DATA
from tests.fixtures_kafka import KafkaBroker, TopicsFactory
from tests.kafka._util import assert_same_prediction, interleave, offline
from tests.kafka.test_service import ensemble, produce, running  # noqa: F401  (fixture)
from tests.kafka_helpers import Collector

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

MONTH = [DATA / "klines" / f"{s}-1m-2023-02.csv.gz" for s in ("NEARUSDT", "FILUSDT", "AVAXUSDT")]
NATIVE = "AVAXUSDT"  # this one arrives as the exchange's kline event


def native_kline(c: Candle) -> bytes:
    """The exchange's own websocket kline event for a closed candle."""
    k = {
        "t": c.open_time,
        "T": c.close_time,
        "s": c.symbol,
        "i": c.interval,
        "o": repr(c.open),
        "c": repr(c.close),
        "h": repr(c.high),
        "l": repr(c.low),
        "v": repr(c.volume),
        "n": c.trades,
        "x": True,
        "q": repr(c.quote_volume),
        "V": repr(c.taker_buy_base),
        "Q": repr(c.taker_buy_quote),
    }
    return orjson.dumps({"e": "kline", "E": c.close_time + 1, "s": c.symbol, "k": k})


POISON: list[tuple[bytes, str]] = [
    (b"\x00\xff not json", "not_json"),
    (b"", "empty"),
    (b"[1, 2]", "not_object"),
    (b'{"e": "kline", "E": 1, "s": "AVAXUSDT"}', "schema:k"),
    (b'{"e": "trade", "s": "AVAXUSDT"}', "event_type"),
]


def month_events() -> tuple[list[tuple[bytes | None, bytes]], Counter[str]]:
    feed = interleave([frame_candles(read_klines(f)) for f in MONTH])
    bad = [
        (
            b"FILUSDT",
            json.dumps({**json.loads(encode_candle(feed[1])), "high": 0.0001}).encode(),
        ),
        *[(b"NEARUSDT", v) for v, _ in POISON],
    ]
    reasons = Counter(["rule:high_bound", *(r for _, r in POISON)])
    out: list[tuple[bytes | None, bytes]] = []
    step = len(feed) // (len(bad) + 1)
    for i, c in enumerate(feed):
        value = native_kline(c) if c.symbol == NATIVE else encode_candle(c)
        out.append((c.symbol.encode(), value))
        if i % step == step // 2 and bad:
            out.append(bad.pop())
    assert not bad
    return out, reasons


async def test_a_real_month_of_three_symbols_with_poison(
    kafka_broker: KafkaBroker,
    kafka_topics: TopicsFactory,
    ensemble: Any,  # noqa: F811
) -> None:
    s = kafka_topics(partitions=3)
    events, reasons = month_events()
    want, counts = offline(ensemble, [v for _, v in events], batch=256)
    assert Counter(counts.dead_letters) == reasons
    assert {sym for sym, _ in want} == {"NEARUSDT", "FILUSDT", NATIVE}
    service = Service(Pipeline(ensemble), s)
    async with (
        Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds,
        Collector(kafka_broker.bootstrap, s.kafka_dlq_topic) as dlq,
        running(service),
    ):
        await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events)
        await preds.wait_for(len(want), timeout=600)
        await dlq.wait_for(sum(reasons.values()), timeout=60)
        await preds.settle(1.0)
    got = Counter(
        (p.symbol, p.open_time) for p in map(decode_prediction, (r.value for r in preds.records))
    )
    assert set(got) == set(want), "a ready candle without a prediction, or an extra one"
    assert max(got.values()) == 1, "a candle predicted twice without any fault"
    for r in preds.records:
        p = decode_prediction(r.value)
        assert_same_prediction(p, want[(p.symbol, p.open_time)])
    letters = [decode_dead_letter(r.value) for r in dlq.records]
    assert Counter(d.reason for d in letters) == reasons
    assert service.stats.dead_letters == sum(reasons.values())

"""The service against a real broker: end to end, poison messages, two instances in one group."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from stream_infer.candles import Candle, read_klines
from stream_infer.config import KafkaSettings
from stream_infer.events import decode_dead_letter, decode_prediction, encode_candle
from stream_infer.kafka import (
    KafkaHistory,
    Service,
    frame_candles,
    history_need,
    make_producer,
    produce_events,
)
from stream_infer.pipeline import Pipeline, first_prediction_index
from tests.conftest import DATA
from tests.fixtures_kafka import KafkaBroker, TopicsFactory
from tests.kafka._util import BTC, NEAR, assert_same_prediction, interleave, offline, real_candles
from tests.kafka_helpers import Collector

pytestmark = pytest.mark.services

models = pytest.importorskip("stream_infer.models")


@pytest.fixture(scope="module")
def ensemble(ensemble_dir: Path) -> Any:
    return models.load_ensemble(ensemble_dir, ensemble_id="kafka-test")


def feed3(n: int) -> list[Candle]:
    """Three symbols with different real data, interleaved by open_time."""
    return interleave(
        [
            real_candles("NEARUSDT", n, source=NEAR),
            real_candles("BTCUSDT", n, source=BTC),
            real_candles("XYZUSDT", n, source=NEAR, skip=20_000),
        ]
    )


async def produce(bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        await produce_events(producer, topic, values)
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def running(service: Service) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(service.run())
    try:
        await service.wait_assigned()
        yield task
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 30)


def keyed(candles: list[Candle]) -> list[tuple[bytes | None, bytes]]:
    return [(c.symbol.encode(), encode_candle(c)) for c in candles]


async def _end_to_end(
    broker: KafkaBroker,
    settings: KafkaSettings,
    ensemble: Any,
    feed: list[Candle],
    timeout: float = 60,
) -> dict[tuple[str, int], Any]:
    """Produce ``feed``, serve it, and check every prediction against the offline twin."""
    events = keyed(feed)
    want, _ = offline(ensemble, [v for _, v in events])
    service = Service(Pipeline(ensemble), settings)
    async with (
        Collector(broker.bootstrap, settings.kafka_predictions_topic) as preds,
        running(service),
    ):
        await produce(broker.bootstrap, settings.kafka_candles_topic, events)
        await preds.wait_for(len(want), timeout=timeout)
        await preds.settle(0.5)
    got = [decode_prediction(r.value) for r in preds.records]
    keys = Counter((p.symbol, p.open_time) for p in got)
    assert set(keys) == set(want), "a ready candle without a prediction, or one too many"
    assert max(keys.values()) == 1, "a prediction twice without any restart"
    for p in got:
        assert_same_prediction(p, want[(p.symbol, p.open_time)])
    for r in preds.records:
        assert r.key == json.loads(r.value)["symbol"].encode()
    st = service.stats
    assert (st.candles, st.predictions, st.dead_letters) == (len(feed), len(want), 0)
    assert st.latency.count == len(want)
    assert st.commits >= 1
    return want


async def test_end_to_end_one_prediction_per_ready_candle_equal_to_replay(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory, ensemble: Any
) -> None:
    want = await _end_to_end(kafka_broker, kafka_topics(partitions=2), ensemble, feed3(600))
    assert len(want) == 3 * (600 - first_prediction_index(ensemble.seq_len))


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_end_to_end_three_real_months(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory, ensemble: Any
) -> None:
    """The whole of February 2023 for three symbols (~121k candles), as a live feed."""
    files = [
        DATA / "klines" / f"{sym}-1m-2023-02.csv.gz" for sym in ("NEARUSDT", "FILUSDT", "AVAXUSDT")
    ]
    feed = interleave([frame_candles(read_klines(f)) for f in files])
    want = await _end_to_end(kafka_broker, kafka_topics(partitions=3), ensemble, feed, timeout=900)
    assert len(want) > 3 * 39_000


def poisoned(feed: list[Candle]) -> list[tuple[bytes | None, bytes]]:
    """The feed with bad messages mixed in, plus duplicates, late candles and two gaps."""
    near = [c for c in feed if c.symbol == "NEARUSDT"]
    btc = [c for c in feed if c.symbol == "BTCUSDT"]
    template = json.loads(encode_candle(near[10]))

    def bad(**change: Any) -> bytes:
        d = dict(template)
        for k, v in change.items():
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v
        return json.dumps(d).encode()

    junk: list[bytes] = [
        b"\x00\xff garbage",
        b"",
        b"[1, 2, 3]",
        bad(close=None),  # missing field
        bad(symbol=None),
        b'{"symbol": "NEARUSDT", "interval": "1m", "close": NaN}',  # not JSON
        bad(close="NaN"),  # a NaN price the exchange way (a string)
        bad(open=-1.0),  # negative price
        bad(high=template["low"] * 0.5),  # high < low
        bad(interval="7m"),
        bad(trades=2.5),
    ]
    out: list[tuple[bytes | None, bytes]] = []
    dropped = {(c.symbol, c.open_time) for c in [near[560], *btc[570:575]]}  # gaps: 1 and 5
    for i, c in enumerate(feed):
        if (c.symbol, c.open_time) in dropped:
            continue
        out.append((c.symbol.encode(), encode_candle(c)))
        if i % 97 == 5 and junk:
            out.append((b"NEARUSDT", junk.pop()))
        if c.symbol == "NEARUSDT" and c.open_time == near[500].open_time:
            out.append((b"NEARUSDT", encode_candle(near[500])))  # duplicate
            out.append((b"NEARUSDT", encode_candle(near[480])))  # late
    assert not junk
    return out


async def test_poison_messages_go_to_the_dlq_and_every_valid_candle_gets_its_prediction(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory, ensemble: Any
) -> None:
    s = kafka_topics(partitions=1)
    feed = feed3(600)
    clean, _ = offline(ensemble, [v for _, v in keyed(feed)])
    events = poisoned(feed)
    want, counts = offline(ensemble, [v for _, v in events])
    n_dead = sum(counts.dead_letters.values())
    assert n_dead == 11
    # The bad messages cost no prediction: only the gaps change what is predicted (a filled
    # gap still predicts the candles after it; the missing candles themselves have none).
    missing = set(clean) - set(want)
    assert Counter(k[0] for k in missing) == {"NEARUSDT": 1, "BTCUSDT": 5}
    assert all(k in clean for k in want)

    service = Service(Pipeline(ensemble), s)
    async with (
        Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds,
        Collector(kafka_broker.bootstrap, s.kafka_dlq_topic) as dlq,
        running(service),
    ):
        await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events)
        await preds.wait_for(len(want), timeout=60)
        await dlq.wait_for(n_dead, timeout=30)
        await preds.settle(0.5)
    got = {
        (p.symbol, p.open_time): p for p in map(decode_prediction, (r.value for r in preds.records))
    }
    assert len(got) == len(preds.records) == len(want)
    for k, p in got.items():
        assert_same_prediction(p, want[k])
    letters = [decode_dead_letter(r.value) for r in dlq.records]
    assert Counter(d.reason for d in letters) == Counter(counts.dead_letters)
    by_offset = dict(enumerate(v for _, v in events))
    for d, r in zip(letters, dlq.records, strict=True):
        assert base64.b64decode(d.value) == by_offset[d.offset], "not the original bytes"
        assert (d.topic, d.partition) == (s.kafka_candles_topic, 0)
        assert dict(r.headers)["reason"] == d.reason.encode()
    assert Counter(d.reason for d in letters) == {
        "not_json": 2,  # garbage bytes, a bare NaN
        "empty": 1,
        "not_object": 1,
        "schema:close": 1,  # missing field
        "schema:symbol": 1,
        "rule:finite": 1,  # "NaN" price
        "rule:price_positive": 1,
        "rule:high_bound": 1,  # high < low
        "interval": 1,
        "rule:trades_integer": 1,
    }
    st = service.stats
    assert st.dead_letters == n_dead
    assert st.duplicates == 2


async def test_two_instances_split_the_partitions_and_predict_each_candle_once(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory, ensemble: Any
) -> None:
    s = kafka_topics(partitions=4)
    # partitions by the default partitioner: AAA 0, EEE 0, NEAR 1, XYZ 1, BTC 2, FFF 3
    sources = {
        "AAAUSDT": (NEAR, 5_000),
        "EEEUSDT": (NEAR, 10_000),
        "NEARUSDT": (NEAR, 0),
        "XYZUSDT": (NEAR, 20_000),
        "BTCUSDT": (BTC, 0),
        "FFFUSDT": (NEAR, 30_000),
    }
    n = 700
    feed = interleave(
        [real_candles(sym, n, source=src, skip=skip) for sym, (src, skip) in sources.items()]
    )
    events = keyed(feed)
    want, _ = offline(ensemble, [v for _, v in events])
    half = len(events) // 2
    first_half = sum(1 for k in want if k[1] <= feed[half - 1].open_time)

    a = Service(Pipeline(ensemble), s, client_id="instance-a")
    b = Service(Pipeline(ensemble), s, client_id="instance-b")
    async with (
        Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds,
        running(a),
    ):
        assert len(a.assignment) == 4
        await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events[:half])
        await preds.wait_for(first_half, timeout=60)
        async with running(b):
            # both members hold partitions, and every partition is warm
            for _ in range(200):
                if a.assignment and b.assignment and a.ready and b.ready:
                    break
                await asyncio.sleep(0.1)
            assert a.assignment and b.assignment, "the group did not split the partitions"
            assert len(a.assignment | b.assignment) == 4
            assert not a.assignment & b.assignment
            assert a.ready and b.ready
            await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events[half:])
            await preds.wait_for(len(want), timeout=60)
            await preds.settle(0.5)
    got = [decode_prediction(r.value) for r in preds.records]
    keys = Counter((p.symbol, p.open_time) for p in got)
    assert set(keys) == set(want)
    assert max(keys.values()) == 1, "a candle predicted twice outside a rebalance window"
    for p in got:
        assert_same_prediction(p, want[(p.symbol, p.open_time)])
    # the partitions that moved were rebuilt from the topic before their first prediction
    assert b.stats.history_candles > 0 and b.stats.predictions > 0
    assert a.stats.predictions + b.stats.predictions == len(want)


class _FailsOn:
    """The real ensemble, except that a window ending in one given candle raises (a model bug)."""

    def __init__(self, inner: Any, candle: Candle) -> None:
        import math

        self._inner = inner
        self._range = math.log(candle.high / candle.low)
        self._body = math.log(candle.close / candle.open)
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def predict(self, windows: Any) -> Any:
        self.calls += 1
        last = windows[:, -1, :]
        hit = (abs(last[:, 6] - self._range) < 1e-15) & (abs(last[:, 8] - self._body) < 1e-15)
        if hit.any():
            raise RuntimeError("injected model failure")
        return self._inner.predict(windows)


async def test_an_unexpected_error_becomes_a_dead_letter_and_the_stream_goes_on(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory, ensemble: Any
) -> None:
    s = kafka_topics(partitions=1, kafka_max_poll_records=50)
    feed = feed3(600)
    events = keyed(feed)
    want, _ = offline(ensemble, [v for _, v in events])
    target = [c for c in feed if c.symbol == "BTCUSDT"][520]
    target_offset = feed.index(target)
    assert ("BTCUSDT", target.open_time) in want
    failing = _FailsOn(ensemble, target)

    service = Service(Pipeline(failing), s)
    async with (
        Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds,
        Collector(kafka_broker.bootstrap, s.kafka_dlq_topic) as dlq,
        running(service),
    ):
        await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events)
        await preds.wait_for(len(want) - 1, timeout=60)
        await dlq.wait_for(1, timeout=30)
        await preds.settle(0.5)
    got = {
        (p.symbol, p.open_time): p for p in map(decode_prediction, (r.value for r in preds.records))
    }
    assert len(got) == len(preds.records) == len(want) - 1
    assert set(want) - set(got) == {("BTCUSDT", target.open_time)}
    for k, p in got.items():
        assert_same_prediction(p, want[k])  # the batch was rebuilt and redone: same numbers
    [letter] = [decode_dead_letter(r.value) for r in dlq.records]
    assert letter.reason == "internal:RuntimeError"
    assert (letter.partition, letter.offset) == (0, target_offset)
    assert base64.b64decode(letter.value) == events[target_offset][1]
    assert service.stats.history_candles > 0


class _FailsOnce(KafkaHistory):
    """History whose first read fails (a broker hiccup during the rebalance)."""

    failures = 0

    async def load(self, tp: Any, committed: int, need: int) -> Any:
        if self.failures == 0:
            self.failures += 1
            raise ConnectionError("injected history failure")
        return await super().load(tp, committed, need)


async def test_a_restarted_member_predicts_at_once_even_if_its_first_history_read_fails(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory, ensemble: Any
) -> None:
    s = kafka_topics(partitions=1)
    feed = feed3(600)
    events = keyed(feed)
    want, _ = offline(ensemble, [v for _, v in events])
    cut = 3 * 500  # the first run ends with every stream ready
    first = Service(Pipeline(ensemble), s)
    async with (
        Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds,
    ):
        async with running(first):
            await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events[:cut])
            n_first = sum(1 for k in want if k[1] <= feed[cut - 1].open_time)
            await preds.wait_for(n_first, timeout=60)
        history = _FailsOnce(kafka_broker.bootstrap)
        second = Service(Pipeline(ensemble), s, history=history)
        try:
            async with running(second):
                await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events[cut:])
                await preds.wait_for(len(want), timeout=60)
                await preds.settle(0.5)
        finally:
            await history.stop()
    got = [decode_prediction(r.value) for r in preds.records]
    keys = Counter((p.symbol, p.open_time) for p in got)
    assert set(keys) == set(want) and max(keys.values()) == 1
    for p in got:
        assert_same_prediction(p, want[(p.symbol, p.open_time)])
    assert history.failures == 1
    assert second.stats.history_candles == 3 * history_need(Pipeline(ensemble))
    assert second.stats.predictions == len(want) - n_first


async def test_inference_disabled_still_validates_dead_letters_and_commits(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory
) -> None:
    s = kafka_topics(partitions=1)
    feed = real_candles("NEARUSDT", 500, source=NEAR)
    events = [*keyed(feed[:250]), (b"NEARUSDT", b"{not json"), *keyed(feed[250:])]
    service = Service(Pipeline(None), s)
    async with (
        Collector(kafka_broker.bootstrap, s.kafka_dlq_topic) as dlq,
        running(service),
    ):
        await produce(kafka_broker.bootstrap, s.kafka_candles_topic, events)
        await dlq.wait_for(1, timeout=30)
        for _ in range(100):
            if service.stats.messages == len(events):
                break
            await asyncio.sleep(0.05)
    assert [decode_dead_letter(r.value).offset for r in dlq.records] == [250]
    st = service.stats
    assert (st.messages, st.candles, st.predictions, st.dead_letters) == (501, 500, 0, 1)
    assert st.commits >= 1 and st.commit_failures == 0
    assert await read_topic_count(kafka_broker.bootstrap, s.kafka_predictions_topic) == 0


async def read_topic_count(bootstrap: str, topic: str) -> int:
    from tests.kafka_helpers import read_topic

    return len(await read_topic(bootstrap, topic, idle_s=0.5))

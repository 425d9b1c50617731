"""Fuzzing the candle decoder, the validator and the pipeline with hostile messages.

For every input: the decoder returns a valid candle, ``None`` (not closed) or raises a
``CandleError`` with a documented reason, nothing else; through the pipeline the message
ends as a valid candle or as one dead letter carrying its bytes and reason, and a dead
letter leaves every stream exactly as it was. The Kafka test sends a corpus of such
messages through the running service between real candles.

Examples per category: 300 by default; ``RELIABILITY_FUZZ_EXAMPLES=N`` sets it (the
figures in RELIABILITY.md come from ``RELIABILITY_FUZZ_EXAMPLES=3000``).
"""

from __future__ import annotations

import base64
import os
from collections import Counter
from collections.abc import Iterator
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_infer.candles import read_klines
from stream_infer.events import decode_dead_letter
from stream_infer.kafka import frame_candles
from stream_infer.pipeline import Inbound, Pipeline
from tests.conftest import DATA
from tests.kafka._util import assert_same_prediction
from tests.pipeline.fakes import FakeEnsemble
from tests.reliability._fuzz import categories, corpus, known_reason, outcome
from tests.reliability._harness import record

EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "300"))
WARM, LIVE = 410, 30

TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()
FINDINGS: Counter[str] = Counter()  # valid candles the features raised on


@cache
def real_values() -> tuple[bytes, ...]:
    from stream_infer.events import encode_candle

    df = read_klines(DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz").iloc[: WARM + LIVE]
    return tuple(encode_candle(c) for c in frame_candles(df))


BASE: dict[str, Any] = orjson.loads(real_values()[WARM])
CATEGORIES = categories(BASE)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if TRIED:
        record(
            "fuzz: decoder, validator, pipeline (hypothesis)",
            inputs=sum(TRIED.values()),
            per_category=dict(TRIED),
            outcomes=dict(OUTCOMES.most_common(12)),
            crashes=0,
            state_changed_by_a_dead_letter=0,
            features_raised_on_valid_candles=dict(FINDINGS),
        )


class _Warm:
    """One pipeline warmed on real candles, shared by the examples (rebuilt if a fuzz
    input turns out to be a valid candle that moves the stream)."""

    def __init__(self) -> None:
        self.p = Pipeline(FakeEnsemble(seq_len=4))
        self.p.process([Inbound(v, 0, -1, 0.0) for v in real_values()[:WARM]])


_warm: _Warm | None = None


def _pipeline() -> Pipeline:
    global _warm
    if _warm is None:
        _warm = _Warm()
    return _warm.p


def _snapshot(p: Pipeline) -> Any:
    states = p.stream_states()
    windows = []
    for s in states:
        stream = p._streams[(s.symbol, s.interval)].features  # the numbers, not just the view
        windows.append(stream.window(4).tobytes() if s.ready and s.rows_available >= 4 else b"")
    return states, windows


def _through_pipeline(category: str, value: bytes) -> None:
    global _warm
    verdict, _ = outcome(value)
    TRIED[category] += 1
    OUTCOMES[verdict.split(":", 1)[0] if verdict.startswith("dead:rule") else verdict] += 1
    p = _pipeline()
    before = _snapshot(p)
    try:
        res = p.process([Inbound(value, 3, 77, 0.0, "candles", 123, b"k")])
    except ArithmeticError as exc:
        # Only a candle the decoder and the rules accepted may get this far: the features'
        # arithmetic overflowed (e.g. spread_bps = 1e308). The service turns it into an
        # internal dead letter and rebuilds the stream without it (the Kafka test below).
        assert verdict == "candle", (verdict, exc)
        FINDINGS[f"internal:{type(exc).__name__}"] += 1
        _warm = None
        return
    c = res.counts
    assert c.messages == 1
    if verdict.startswith("dead:"):
        # one dead letter, with the original bytes and the decoder's reason; nothing moved
        [d] = res.dead_letters
        assert d.reason == verdict[len("dead:") :] and known_reason(d.reason)
        assert base64.b64decode(d.value) == value
        assert (d.partition, d.offset, d.timestamp_ms) == (3, 77, 123)
        assert c.candles == 0 and not res.predictions
        assert _snapshot(p) == before, "a refused message changed a stream"
    elif verdict == "not_closed":
        assert c.not_closed == 1 and not res.dead_letters
        assert _snapshot(p) == before
    else:
        # a valid candle: it reached a stream, or the stream rules refused it (dead letter)
        assert c.candles + sum(c.dead_letters.values()) == 1, c
        for d in res.dead_letters:
            assert known_reason(d.reason)
        if c.candles:
            _warm = None  # it may have moved the stream: start the next example fresh


def _fuzz(category: str) -> Any:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(CATEGORIES[category])
    def run(value: bytes) -> None:
        _through_pipeline(category, value)

    return run


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_every_message_ends_as_a_candle_or_a_dead_letter_and_moves_no_stream(
    category: str,
) -> None:
    _fuzz(category)()


@settings(max_examples=max(20, EXAMPLES // 10), deadline=None, database=None)
@given(st.lists(st.sampled_from(sorted(CATEGORIES)), min_size=1, max_size=6), st.data())
def test_junk_between_real_candles_changes_no_prediction(cats: list[str], data: Any) -> None:
    """Junk of several categories mixed into a live stream: the predictions are exactly the
    clean stream's (the hidden state, not only the view, is untouched)."""
    junk = [data.draw(CATEGORIES[c]) for c in cats]
    junk = [j for j in junk if outcome(j)[0].startswith("dead:")]
    live = list(real_values()[WARM:])
    mixed: list[bytes] = []
    for i, v in enumerate(live):
        if i % 5 == 0 and junk:
            mixed.append(junk.pop())
        mixed.append(v)
    TRIED["mixed into a live stream"] += len(mixed) - len(live)
    a, b = _Warm().p, _Warm().p
    ra = a.process([Inbound(v, 0, i, 0.0) for i, v in enumerate(mixed)])
    rb = b.process([Inbound(v, 0, i, 0.0) for i, v in enumerate(live)])
    key = [(p.open_time, p.predictions, p.components) for p in ra.predictions]
    assert key == [(p.open_time, p.predictions, p.components) for p in rb.predictions]
    assert len(ra.dead_letters) == len(mixed) - len(live)
    assert a.stream_states() == b.stream_states()


def test_the_seeded_corpus_is_refused_with_documented_reasons() -> None:
    """The corpus the Kafka test sends: every message refused, every category present."""
    items = corpus(BASE, 200, seed=1)
    assert len({c for c, _ in items}) >= 8
    for cat, v in items:
        verdict, _ = outcome(v)
        assert verdict.startswith("dead:"), (cat, verdict)
    too_large = [v for c, v in items if c == "about 1 MB"]
    assert too_large and all(outcome(v)[0] == "dead:too_large" for v in too_large)


@pytest.mark.services
async def test_a_fuzz_corpus_through_the_running_service(
    kafka_topics: Any, file_ensemble: Any
) -> None:
    """Hostile messages (1 MB ones included) between real candles through Kafka and the
    service: every one a dead letter with the decoder's reason, predictions unchanged."""
    import asyncio

    from stream_infer.kafka import Service, make_producer
    from tests.kafka._util import offline
    from tests.kafka_helpers import Collector

    s = kafka_topics(partitions=1, candles_max_bytes=8 << 20)  # the 1 MB ones reach the service
    junk = corpus(BASE, 120, seed=2)
    live = list(real_values()) + [
        v for v in (real_values_more())
    ]  # 410 warm + 30 + 90 more: predictions from candle ready_candles(seq_len) on
    values: list[bytes] = []
    for i, v in enumerate(live):
        if i % 4 == 0 and i // 4 < len(junk):
            values.append(junk[i // 4][1])
        values.append(v)
    want, counts = offline(file_ensemble, values)
    clean, _ = offline(file_ensemble, live)
    assert set(want) == set(clean) and want
    service = Service(Pipeline(file_ensemble), s)
    producer = make_producer(s.kafka_bootstrap_servers, max_request_size=4 << 20)
    await producer.start()
    task = asyncio.create_task(service.run())
    try:
        await service.wait_assigned()
        async with (
            Collector(s.kafka_bootstrap_servers, s.kafka_predictions_topic) as preds,
            Collector(s.kafka_bootstrap_servers, s.kafka_dlq_topic) as dlq,
        ):
            sent = [await producer.send(s.kafka_candles_topic, v, key=b"NEARUSDT") for v in values]
            await asyncio.gather(*sent)  # a record the broker refused fails here
            await preds.wait_for(len(want), 60)
            await dlq.wait_for(len(junk), 60)
            await preds.settle(1.0)
    finally:
        await producer.stop()
        service.request_stop()
        await asyncio.wait_for(task, 30)
    from stream_infer.events import decode_prediction

    got = {
        (p.symbol, p.open_time): p for p in map(decode_prediction, (r.value for r in preds.records))
    }
    assert len(got) == len(preds.records) == len(want)
    for k, p in got.items():
        assert_same_prediction(p, want[k])
    letters = [decode_dead_letter(r.value) for r in dlq.records]
    assert Counter(d.reason for d in letters) == Counter(counts.dead_letters)
    assert len(letters) == len(junk)
    assert service.stats.dead_letters == len(junk)
    record(
        "fuzz corpus through the running service (Kafka)",
        messages=len(values),
        hostile=len(junk),
        megabyte_messages=sum(1 for c, _ in junk if c == "about 1 MB"),
        dead_letters=len(letters),
        reasons=dict(Counter(d.reason for d in letters)),
        predictions=len(got),
        lost=0,
        duplicates=0,
    )


@cache
def real_values_more() -> tuple[bytes, ...]:
    from stream_infer.events import encode_candle

    df = read_klines(DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz").iloc[WARM + LIVE : 530]
    return tuple(encode_candle(c) for c in frame_candles(df))


@pytest.mark.services
async def test_a_valid_candle_the_features_cannot_take_neither_crashes_nor_wedges(
    kafka_topics: Any, file_ensemble: Any
) -> None:
    """Found by the fuzzer: ``spread_bps = 1e308`` passes the input rules (finite, >= 0) but
    overflows the features' exact sums. Live, it becomes one ``internal:OverflowError`` dead
    letter and the stream goes on as if it had never come; after a restart, the history
    that holds it still rebuilds (it is left out again), so the service neither crashes nor
    retries the partition forever."""
    import asyncio

    from stream_infer.events import decode_prediction, encode_candle
    from stream_infer.kafka import Service, make_producer, produce_events
    from tests.kafka._util import offline, real_candles
    from tests.kafka_helpers import Collector

    s = kafka_topics(partitions=1, kafka_max_poll_records=50)
    candles = real_candles("NEARUSDT", 620)
    k = 500
    poison = orjson.loads(encode_candle(candles[k]))
    poison["spread_bps"] = 1e308
    values = [encode_candle(c) for c in candles]
    values[k] = orjson.dumps(poison)
    twin, _ = offline(file_ensemble, values[:k] + values[k + 1 :])  # as if it never came
    bootstrap = s.kafka_bootstrap_servers

    async def produce(vs: list[bytes]) -> None:
        producer = make_producer(bootstrap)
        await producer.start()
        try:
            await produce_events(producer, s.kafka_candles_topic, [(b"NEARUSDT", v) for v in vs])
        finally:
            await producer.stop()

    async with (
        Collector(bootstrap, s.kafka_predictions_topic) as preds,
        Collector(bootstrap, s.kafka_dlq_topic) as dlq,
    ):
        stats = []
        for part in (values[:560], values[560:]):  # a restart after the poison candle
            service = Service(Pipeline(file_ensemble), s)
            task = asyncio.create_task(service.run())
            await service.wait_assigned()
            await produce(part)
            n = sum(1 for key in twin if key[1] <= orjson.loads(part[-1])["open_time"])
            await preds.wait_for(n, 30)
            service.request_stop()
            stats.append(await asyncio.wait_for(task, 30))
        await dlq.wait_for(1, 10)
        await preds.settle(0.5)
    got = [decode_prediction(r.value) for r in preds.records]
    assert Counter((p.symbol, p.open_time) for p in got) == Counter(list(twin))
    for p in got:
        assert_same_prediction(p, twin[(p.symbol, p.open_time)])
    [letter] = [decode_dead_letter(r.value) for r in dlq.records]
    assert (letter.reason, letter.offset) == ("internal:OverflowError", k)
    assert stats[1].history_failures == 1  # left out of the rebuild after the restart
    record(
        "valid candle the features cannot take (spread_bps=1e308), live + after restart",
        messages=len(values),
        dead_letters=1,
        predictions=len(got),
        lost=0,
        duplicates=0,
        restarts=1,
    )

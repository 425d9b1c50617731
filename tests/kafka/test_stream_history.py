"""State rebuild per stream from Postgres ``candles`` (``HISTORY_SOURCE=postgres``).

Unit tests drive the selection logic (which streams, which bound, covered or not) with an
in-memory store and topic; the rest run the service on the real broker and the real
Postgres server and compare its predictions with the offline twin's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stream_infer import ConfigError, DatabaseError
from stream_infer.candles import CANDLE_COLUMNS, Candle
from stream_infer.config import DatabaseSettings, KafkaSettings
from stream_infer.db import Database, PostgresHistory, load_candles
from stream_infer.events import decode_prediction, encode_candle
from stream_infer.kafka import (
    HistoryResult,
    LazyHistory,
    Service,
    collect_history,
    free_port,
    history_need,
    make_producer,
    not_covered_reason,
)
from stream_infer.pipeline import HeldStream, Inbound, Pipeline, ready_candles
from tests.fixtures_kafka import KafkaBroker, TopicsFactory
from tests.kafka._util import BTC, NEAR, assert_same_prediction, interleave, offline, real_candles
from tests.kafka_helpers import Collector, commit, produce_paced
from tests.pipeline.fakes import FakeEnsemble, FakeResult, candle, fake_factory
from tests.tcp_proxy import TcpProxy

NEED = ready_candles(64)  # what the selection logic is asked for in the unit tests
MINUTE = 60_000

StreamKey = tuple[str, str]


# -- fakes: an in-memory candles table and an in-memory topic -------------------------------


class FakeStore:
    """The candles table in memory; ``down`` makes it fail like an unreachable server."""

    def __init__(self, candles: Sequence[Candle]) -> None:
        self.rows: dict[StreamKey, list[Candle]] = {}
        for c in sorted(candles, key=lambda c: c.open_time):
            self.rows.setdefault((c.symbol, c.interval), []).append(c)
        self.calls: list[dict[StreamKey, int]] = []
        self.down = False

    def __str__(self) -> str:
        return "the fake store"

    async def ping(self) -> None:
        if self.down:
            raise DatabaseError("the fake store is down")

    async def fetch_many(
        self, bounds: Mapping[StreamKey, int], n: int
    ) -> dict[StreamKey, list[Candle]]:
        self.calls.append(dict(bounds))
        if self.down:
            raise DatabaseError("the fake store is down")
        out = {}
        for k, bound in bounds.items():
            got = [c for c in self.rows.get(k, []) if c.open_time < bound][-n:]
            if got:
                out[k] = got
        return out


class FakeTopic:
    """Partition logs in memory, read back with the real ``collect_history``."""

    def __init__(self, parts: Mapping[int, Sequence[Candle]]) -> None:
        self.parts = {p: [encode_candle(c) for c in cs] for p, cs in parts.items()}
        self.calls: list[tuple[int, int]] = []

    async def load(self, tp: Any, committed: int, need: int) -> HistoryResult:
        self.calls.append((tp.partition, committed))
        values = self.parts.get(tp.partition, [])

        async def read(start: int, stop: int) -> list[tuple[int, bytes | None]]:
            return [(i, values[i]) for i in range(start, min(stop, len(values)))]

        return await collect_history(read, begin=0, end=committed, need=need)


def stream(symbol: str, lo: int, hi: int) -> list[Candle]:
    return [candle(i, symbol) for i in range(lo, hi)]


def messages(log: Sequence[Candle], partition: int, start: int) -> list[Inbound]:
    return [
        Inbound(encode_candle(c), partition, off, 0.0, "candles")
        for off, c in enumerate(log)
        if off >= start
    ]


@dataclass
class WindowEnsemble(FakeEnsemble):
    """P(up) is a fingerprint of the whole window: its open times, closes and gap-filled rows
    (the fake features' columns 0, 1, 2), so a stream warmed from the wrong candles shows."""

    def predict(self, windows: np.ndarray) -> FakeResult:
        super().predict(windows)  # the shape checks, and ``calls``
        w = windows
        f = ((w[:, :, 0].sum(axis=1) / MINUTE) % 97 + w[:, :, 1].sum(axis=1) % 1) / 200
        f = f + w[:, :, 2].sum(axis=1) / 10
        p = np.repeat(f[:, None], len(self.horizons), axis=1)
        return FakeResult(p, np.abs(2 * p - 1), p, p)


def fake_pipeline() -> Pipeline:
    return Pipeline(WindowEnsemble(seq_len=4), features=fake_factory(3), now_ms=lambda: 0)


def uninterrupted(logs: Mapping[int, Sequence[Candle]], starts: Mapping[int, int]) -> list[Any]:
    """What one run that never stopped predicts for the records from ``starts`` on."""
    p = fake_pipeline()
    out = []
    for part, log in logs.items():
        msgs = messages(log, part, 0)
        p.process(msgs[: starts[part]])
        out += p.process(msgs[starts[part] :]).predictions
    return out


def keyed(preds: Sequence[Any]) -> dict[tuple[str, int], list[float]]:
    return {(p.symbol, p.open_time): list(p.predictions) for p in preds}


# -- unit tests ------------------------------------------------------------------------------


def test_covered_means_need_consecutive_intervals_right_before_the_bound() -> None:
    rows = stream("AAA", 0, 500)
    bound = candle(500).open_time
    assert not_covered_reason(rows, bound, "1m", NEED) is None
    assert not_covered_reason(rows[-NEED:], bound, "1m", NEED) is None
    assert not_covered_reason([], bound, "1m", NEED) == "no rows before it"
    lagging = not_covered_reason(rows[:-30], bound, "1m", NEED)
    assert lagging is not None and "30 intervals short" in lagging
    assert not_covered_reason(rows[-100:], bound, "1m", NEED) == f"100 of {NEED} rows"
    holed = rows[:200] + rows[201:]
    why = not_covered_reason(holed, bound, "1m", NEED)
    assert why == f"a hole after {candle(199).open_time}"
    # a hole older than the window does not matter
    assert not_covered_reason(rows[:10] + rows[20:], bound, "1m", NEED) is None
    assert not_covered_reason([], bound, "1m", 0) is None


async def test_lazy_history_reads_the_held_streams_in_one_query_and_settles_them() -> None:
    store = FakeStore([*stream("AAA", 0, 600), *stream("BBB", 0, 520), *stream("CCC", 0, 600)])
    topic = FakeTopic({0: interleave([stream("AAA", 0, 560), stream("BBB", 0, 560)])})
    lazy = LazyHistory(store, topic)
    lazy.begin(0)
    lazy.begin(1)
    assert lazy.hold(0, "AAA", "1m") and lazy.hold(1, "ANY", "5m")
    assert not lazy.hold(2, "AAA", "1m"), "a partition rebuilt from the topic is never held"
    warmed: dict[StreamKey, list[int]] = {}

    def warm(candles: list[Candle], partition: int) -> None:
        for c in candles:
            warmed.setdefault((c.symbol, c.interval), []).append(c.open_time)

    held = [
        HeldStream(0, 1121, candle(560, "AAA")),
        HeldStream(0, 1120, candle(560, "BBB")),  # the store lags 40 minutes: the topic
        HeldStream(1, 7, candle(580, "CCC")),
        HeldStream(0, 1122, candle(560, "NEW")),  # nowhere: warms up live
    ]
    out = await lazy.resolve(held, topic="candles", need=NEED, warm=warm)
    assert store.calls == [{(h.candle.symbol, "1m"): h.candle.open_time for h in held}]
    assert topic.calls == [(0, 1120)], "one topic read for the partition, before BBB's record"
    assert out.from_source == [("AAA", "1m"), ("CCC", "1m")]
    assert out.from_topic == [("BBB", "1m")] and out.cold == [("NEW", "1m")]
    assert warmed[("AAA", "1m")] == [candle(i).open_time for i in range(560 - NEED, 560)]
    assert warmed[("CCC", "1m")] == [candle(i).open_time for i in range(580 - NEED, 580)]
    assert warmed[("BBB", "1m")] == [candle(i).open_time for i in range(560 - NEED, 560)]
    assert out.candles == 3 * NEED
    assert lazy.stats.history_postgres_streams == 2 and lazy.stats.history_not_covered == 2
    for h in held:
        assert not lazy.hold(h.partition, h.candle.symbol, "1m"), "settled: never asked again"
    assert lazy.hold(0, "AAA", "5m")
    again = await lazy.resolve(held, topic="candles", need=NEED, warm=warm)
    assert again.from_source == [] and len(store.calls) == 1
    lazy.end(1)
    assert lazy.partitions == {0}


async def test_store_down_means_the_topic_and_never_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore(stream("AAA", 0, 600))
    topic = FakeTopic({0: stream("AAA", 0, 600)})
    lazy = LazyHistory(store, topic)
    caplog.set_level(logging.INFO, "stream_infer")
    store.down = True
    assert not await lazy.usable()
    assert not await lazy.usable()
    warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert warnings == [
        "history: the fake store cannot be read (the fake store is down); rebuilding state "
        "from the Kafka topic instead"
    ], "said once, not at every assignment"
    lazy.begin(0)
    warmed: list[Candle] = []
    out = await lazy.resolve(
        [HeldStream(0, 550, candle(550, "AAA"))],
        topic="candles",
        need=NEED,
        warm=lambda cs, _: warmed.extend(cs),
    )
    assert out.from_topic == [("AAA", "1m")] and len(warmed) == NEED
    assert lazy.stats.history_failures == 1
    store.down = False
    assert await lazy.usable()
    assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_service_rebuilds_each_stream_before_its_own_first_record() -> None:
    """The bound is per stream: the record at the committed offset bounds one symbol only."""
    logs = {
        0: interleave([stream("AAA", 0, 600), stream("BBB", 0, 600)]),
        1: stream("CCC", 0, 600),
    }
    # partition 0 resumes between AAA's and BBB's candle of minute 550
    starts = {0: 2 * 550 + 1, 1: 560}
    assert (logs[0][starts[0]].symbol, logs[0][starts[0] + 1].symbol) == ("BBB", "AAA")
    store = FakeStore([*stream("AAA", 0, 600), *stream("BBB", 0, 600), *stream("CCC", 0, 600)])
    topic = FakeTopic(logs)
    service = Service(fake_pipeline(), KafkaSettings(), history=topic, stream_history=store)
    assert service.rebuilder.lazy is not None
    service.rebuilder.lazy.begin(0)
    service.rebuilder.lazy.begin(1)
    inbound = [*messages(logs[0], 0, starts[0]), *messages(logs[1], 1, starts[1])]
    results = await service.processor.process(inbound, {})
    got = [p for r in results for p in r.predictions]
    want = uninterrupted(logs, starts)
    assert keyed(got) == keyed(want) and len(got) == len(want) == len(inbound)
    assert store.calls == [
        {
            ("BBB", "1m"): candle(550).open_time,
            ("AAA", "1m"): candle(551).open_time,
            ("CCC", "1m"): candle(560).open_time,
        }
    ]
    assert topic.calls == []
    assert sum(len(r.offsets) for r in results) >= 2
    assert max(r.offsets.get(0, -1) for r in results) == len(logs[0]) - 1
    assert service.stats.history_postgres_streams == 3
    assert service.stats.history_candles == 3 * history_need(service.pipeline)


async def test_service_a_stream_the_store_does_not_cover_comes_from_the_topic() -> None:
    logs = {0: interleave([stream("AAA", 0, 600), stream("BBB", 0, 600)])}
    starts = {0: 1100}
    # BBB's rows stop 30 minutes early (the table lags); a new stream shows up later
    store = FakeStore([*stream("AAA", 0, 600), *stream("BBB", 0, 520)])
    topic = FakeTopic(logs)
    service = Service(fake_pipeline(), KafkaSettings(), history=topic, stream_history=store)
    assert service.rebuilder.lazy is not None
    service.rebuilder.lazy.begin(0)
    results = await service.processor.process(messages(logs[0], 0, starts[0]), {})
    want = uninterrupted(logs, starts)
    assert keyed([p for r in results for p in r.predictions]) == keyed(want)
    assert topic.calls == [(0, 1101)]  # BBB's first record
    assert (service.stats.history_postgres_streams, service.stats.history_not_covered) == (1, 1)
    late = [candle(600 + i, "NEW") for i in range(8)]
    later = [Inbound(encode_candle(c), 0, 1200 + i, 0.0, "candles") for i, c in enumerate(late)]
    results = await service.processor.process(later, {})
    assert topic.calls[-1] == (0, 1200) and service.stats.history_not_covered == 2
    # cold, like an uninterrupted run: predicts once warm (3 + 4 - 1 candles with the fakes)
    assert [p.open_time for r in results for p in r.predictions] == [c.open_time for c in late[5:]]


# -- against the real broker and Postgres ---------------------------------------------------

models = pytest.importorskip("stream_infer.models")


@pytest.fixture(scope="module")
def ensemble(ensemble_dir: Path) -> Any:
    return models.load_ensemble(ensemble_dir, ensemble_id="kafka-test")


def candles_frame(candles: Sequence[Candle]) -> pd.DataFrame:
    return pd.DataFrame([c.model_dump() for c in candles])[list(CANDLE_COLUMNS)]


async def load_rows(db: Database, candles: Sequence[Candle]) -> None:
    async with db.acquire() as conn:
        assert await load_candles(conn, candles_frame(candles)) == len(candles)


async def produce_all(bootstrap: str, topic: str, feed: Sequence[Candle]) -> list[Any]:
    producer = make_producer(bootstrap)
    await producer.start()
    try:
        futs = [await producer.send(topic, encode_candle(c), key=c.symbol.encode()) for c in feed]
        return [await f for f in futs]
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def running(service: Service) -> AsyncIterator[None]:
    task = asyncio.create_task(service.run())
    try:
        await service.wait_assigned()
        yield
    finally:
        service.request_stop()
        await asyncio.wait_for(task, 30)


@pytest.mark.services
async def test_streams_postgres_does_not_cover_come_from_the_topic_and_are_counted(
    kafka_broker: KafkaBroker,
    kafka_topics: TopicsFactory,
    pg_db: Database,
    ensemble: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """AAA is in Postgres; BBB's rows stop 40 minutes early (the table lags) and CCC has none:
    both come from the topic. DDD is listed after the restart: it warms up live. Every
    prediction equals the uninterrupted run's."""
    s = kafka_topics(partitions=1)
    n = 600
    aaa = real_candles("AAAUSDT", n, source=NEAR)
    bbb = real_candles("BBBUSDT", n, source=BTC)
    ccc = real_candles("CCCUSDT", n, source=NEAR, skip=20_000)
    ddd = real_candles("DDDUSDT", 30, source=BTC, skip=3000, start_ms=aaa[-30].open_time)
    feed = interleave([aaa, bbb, ccc, ddd])
    await produce_all(kafka_broker.bootstrap, s.kafka_candles_topic, feed)
    cut = next(i for i, c in enumerate(feed) if c.open_time == aaa[520].open_time)
    await commit(s, {0: cut})
    await load_rows(pg_db, [*aaa, *bbb[:480]])
    want, _ = offline(ensemble, [encode_candle(c) for c in feed])
    expect = {(c.symbol, c.open_time) for c in feed[cut:]} & set(want)

    caplog.set_level(logging.INFO, "stream_infer")
    service = Service(Pipeline(ensemble), s, stream_history=PostgresHistory(pg_db))
    async with (
        Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds,
        running(service),
    ):
        await preds.wait_for(len(expect), timeout=60)
        await preds.settle(0.5)
    got = [decode_prediction(r.value) for r in preds.records]
    assert Counter((p.symbol, p.open_time) for p in got) == Counter(expect)
    for p in got:
        assert_same_prediction(p, want[(p.symbol, p.open_time)])
    st = service.stats
    assert (st.history_postgres_streams, st.history_not_covered) == (1, 3)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "does not cover" in text and "reading them from the topic" in text, text[-3000:]
    assert f"BBBUSDT 1m before {bbb[520].open_time}: newest row opens at" in text
    assert "40 intervals short of it" in text
    assert f"CCCUSDT 1m before {ccc[520].open_time}: no rows before it" in text
    assert f"DDDUSDT 1m before {ddd[0].open_time}: no rows before it" in text
    assert "1 warm up live" in text


@pytest.mark.services
async def test_postgres_down_falls_back_to_the_topic_at_start_and_mid_run(
    kafka_broker: KafkaBroker,
    kafka_topics: TopicsFactory,
    pg_db: Database,
    pg_settings: DatabaseSettings,
    pg_proxy: TcpProxy,
    ensemble: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = interleave(
        [real_candles("AAAUSDT", 560, source=NEAR), real_candles("BBBUSDT", 560, source=BTC)]
    )
    await load_rows(pg_db, feed)
    want, _ = offline(ensemble, [encode_candle(c) for c in feed])
    caplog.set_level(logging.INFO, "stream_infer")

    async def serve(start: int, history: PostgresHistory) -> Service:
        s = kafka_topics(partitions=1)
        await produce_all(kafka_broker.bootstrap, s.kafka_candles_topic, feed)
        await commit(s, {0: start})
        expect = {(c.symbol, c.open_time) for c in feed[start:]} & set(want)
        service = Service(Pipeline(ensemble), s, stream_history=history)
        async with (
            Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds,
            running(service),
        ):
            await preds.wait_for(len(expect), timeout=60)
            await preds.settle(0.5)
        got = [decode_prediction(r.value) for r in preds.records]
        assert Counter((p.symbol, p.open_time) for p in got) == Counter(expect)
        for p in got:
            assert_same_prediction(p, want[(p.symbol, p.open_time)])
        return service

    # down at start: nothing answers on the port; the topic rebuilds the partition
    down = Database(pg_settings.model_copy(update={"port": free_port()}), connect_timeout=1.0)
    try:
        first = await serve(1000, PostgresHistory(down))
    finally:
        await down.close()
    need = history_need(first.pipeline)
    assert first.stats.history_postgres_streams == 0 and first.stats.history_candles == 2 * need
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot be read" in text and "rebuilding state from the Kafka topic instead" in text
    assert "from offsets" in text and f"{2 * need} candles of 2 streams" in text

    # lost after the assignment (the ping passed), before the first record: the topic
    via = Database(pg_settings.model_copy(update={"port": pg_proxy.port}), connect_timeout=1.0)
    history = PostgresHistory(via)

    class CutAfterPing(PostgresHistory):
        async def ping(self) -> None:
            await history.ping()
            pg_proxy.cut()

    caplog.clear()
    try:
        second = await serve(1040, CutAfterPing(via))
    finally:
        pg_proxy.restore()
        await via.close()
    st = second.stats
    assert (st.history_postgres_streams, st.history_not_covered) == (0, 2)
    assert st.history_failures >= 1
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "failed" in text and "the topic instead" in text


@pytest.mark.services
async def test_sigkill_and_restart_with_history_in_postgres_and_a_short_topic(
    kafka_broker: KafkaBroker,
    kafka_topics: TopicsFactory,
    pg_db: Database,
    pg_settings: DatabaseSettings,
    ensemble_dir: Path,
    tmp_path: Path,
) -> None:
    """``stream-infer run`` with HISTORY_SOURCE=postgres on a topic that holds only the last
    150 candles of each stream (fewer than the ready_candles(64) a stream needs: the topic alone could
    not warm it). Its first predictions, and the first after a SIGKILL and restart, equal
    the uninterrupted offline run's over the whole history."""
    from tests.kafka.test_restart import start_service
    from tests.kafka_helpers import committed_offsets

    s = kafka_topics(partitions=2)
    n, recent = 700, 150
    streams = [
        real_candles("NEARUSDT", n, source=NEAR),
        real_candles("BTCUSDT", n, source=BTC),
    ]
    await load_rows(pg_db, [c for st in streams for c in st])  # Postgres also holds the newest
    full = interleave(streams)
    feed = interleave([st[-recent:] for st in streams])
    ens = models.load_ensemble(ensemble_dir, ensemble_id="file:" + _version(ensemble_dir))
    assert recent < history_need(Pipeline(ens)), "the topic alone could warm the streams"
    want, _ = offline(ens, [encode_candle(c) for c in full])
    topic_keys = {(c.symbol, c.open_time) for c in feed}
    assert topic_keys <= set(want)
    log = tmp_path / "service.log"
    env = {
        "HISTORY_SOURCE": "postgres",
        "DB_HOST": pg_settings.host or "",
        "DB_PORT": str(pg_settings.port),
        "DB_NAME": pg_settings.name,
        "DB_USER": pg_settings.user,
        "DB_SSLMODE": "disable",
    }
    where: dict[tuple[str, int], tuple[int, int]] = {}

    def produce(rate: float) -> Any:
        return produce_paced(kafka_broker.bootstrap, s.kafka_candles_topic, feed, rate, where)

    first = start_service(s, ensemble_dir, log, extra_env=env)
    second = None
    try:
        async with Collector(kafka_broker.bootstrap, s.kafka_predictions_topic) as preds:
            deadline = time.monotonic() + 60
            while "assigned [" not in log.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # the kill must land while candles still arrive
            producing = asyncio.create_task(produce(rate=60))
            await preds.wait_for(60, timeout=60)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_ms = time.time_ns() // 1_000_000
            at_kill = await committed_offsets(s, 2)
            second = start_service(s, ensemble_dir, log, extra_env=env)
            await producing
            await preds.wait_for(len(topic_keys), timeout=60)
            await preds.settle(1.0)
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
    text = log.read_text()
    got = [decode_prediction(r.value) for r in preds.records]
    keys = Counter((p.symbol, p.open_time) for p in got)
    assert set(keys) == topic_keys, "a candle of the topic without its prediction"
    for p in got:
        assert_same_prediction(p, want[(p.symbol, p.open_time)])
    for k in (k for k, c in keys.items() if c > 1):
        part, off = where[k]
        assert off >= at_kill[part], f"{k} at {part}/{off} was committed ({at_kill}) yet redone"
    assert max(keys.values()) <= 2
    # The first run predicts from the topic's first candle of each stream on ...
    before = sorted((p for p in got if p.produced_at <= killed_ms), key=lambda p: p.produced_at)
    firsts: dict[str, Any] = {}
    for p in before:
        firsts.setdefault(p.symbol, p)
    assert {sym: p.open_time for sym, p in firsts.items()} == {
        st[0].symbol: st[-recent].open_time for st in streams
    }
    # ... and the restarted one from the first candle it had not committed, with the
    # uninterrupted run's numbers: each stream rebuilt from Postgres, bounded by that candle.
    after = sorted((p for p in got if p.produced_at > killed_ms), key=lambda p: p.open_time)
    firsts = {}
    for p in after:
        firsts.setdefault(p.symbol, p)
    for st in streams:
        sym = st[0].symbol
        unread = sorted(
            (k for k in where if k[0] == sym and where[k][1] >= at_kill[where[k][0]]),
            key=lambda k: where[k][1],
        )
        assert unread, f"{sym}: the first run had committed everything; nothing to restart on"
        assert (sym, firsts[sym].open_time) == unread[0]
        assert_same_prediction(firsts[sym], want[unread[0]])
    assert text.count("streams from Postgres candles at") >= 2, text[-3000:]
    assert "0 not covered" in text and not re.search(r"does not cover \d+ streams", text)
    assert "stream by stream from Postgres candles at" in text
    assert "stream-infer run stopped: candles=" in text


def _version(path: Path) -> str:
    import json

    return str(json.loads((path / "manifest.json").read_text())["version"])


def test_history_source_postgres_without_a_database_is_a_configuration_error() -> None:
    from stream_infer.cli import app

    run = ["run", "--no-models"]
    res = CliRunner().invoke(app, run, env={"HISTORY_SOURCE": "postgres", "DB_HOST": ""})
    assert isinstance(res.exception, ConfigError)
    assert str(res.exception) == (
        "HISTORY_SOURCE=postgres needs a database: set DB_HOST (and DB_NAME, ...)"
    )
    res = CliRunner().invoke(app, [*run, "--history-source", "redis"])
    assert isinstance(res.exception, ConfigError)
    assert "--history-source must be kafka or postgres" in str(res.exception)
    res = CliRunner().invoke(app, run, env={"HISTORY_SOURCE": "redis"})
    assert isinstance(res.exception, ConfigError)
    assert "bad setting: HISTORY_SOURCE: Input should be 'kafka' or 'postgres'" in str(
        res.exception
    )

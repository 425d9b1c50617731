"""The embedded broker (Python API and ``stream-infer broker``) and ``stream-infer produce``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from stream_infer import BrokerError
from stream_infer.candles import read_klines
from stream_infer.cli import app
from stream_infer.kafka import EmbeddedBroker, free_port, tansu_binary, wait_for_broker
from stream_infer.kafka._broker import _api_versions_ok
from tests.conftest import REPO
from tests.fixtures_kafka import KafkaBroker, TopicsFactory
from tests.kafka._util import BTC, NEAR
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.services


def test_binary_is_found_and_executable() -> None:
    path = tansu_binary()
    assert path.is_file() and os.access(path, os.X_OK)


def test_embedded_broker_starts_answers_and_stops() -> None:
    with EmbeddedBroker() as broker:
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1"
        assert broker.running()
        wait_for_broker(broker.bootstrap, timeout=1)
        assert _api_versions_ok(host, int(port), timeout=1)
    assert not broker.running()
    assert not _api_versions_ok(host, int(port), timeout=0.5)
    with pytest.raises(BrokerError):
        wait_for_broker(broker.bootstrap, timeout=0.2)


async def test_embedded_broker_as_an_async_context_manager() -> None:
    port = free_port()
    async with EmbeddedBroker(port) as broker:
        assert broker.bootstrap == f"127.0.0.1:{port}"
        assert broker.running()
        # the port is taken now: a second broker on it fails with a BrokerError, not a hang
        with pytest.raises(BrokerError):
            EmbeddedBroker(port, startup_timeout=3).start()
    assert not broker.running()


def test_broker_command_prints_the_address_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from stream_infer.cli import main; main()", "broker"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("127.0.0.1:")
        wait_for_broker(line, timeout=2)
        note = proc.stderr.readline()
        while "(pid " not in note and note:
            note = proc.stderr.readline()
        pid = int(note.split("(pid ")[1].split(")")[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the Tansu process {pid} outlived the command")


def test_produce_command_interleaves_files_keyed_by_symbol(
    kafka_broker: KafkaBroker, kafka_topics: TopicsFactory
) -> None:
    s = kafka_topics(partitions=1)
    result = CliRunner().invoke(
        app,
        [
            "produce",
            "--bootstrap",
            kafka_broker.bootstrap,
            "--topic",
            s.kafka_candles_topic,
            "--limit",
            "40",
            "--no-progress",
            str(NEAR),
            str(BTC),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "produced 80 candles" in result.output
    records = asyncio.run(read_topic(kafka_broker.bootstrap, s.kafka_candles_topic, expect=80))
    assert len(records) == 80
    values = [json.loads(r.value) for r in records]
    assert [r.key.decode() for r in records] == [v["symbol"] for v in values]
    # merged by open_time: BTC (January) before NEAR (February), each in its own order
    assert [v["open_time"] for v in values] == sorted(v["open_time"] for v in values)
    near = read_klines(NEAR).head(40)
    got_near = [v for v in values if v["symbol"] == "NEARUSDT"]
    assert [v["close"] for v in got_near] == near["close"].tolist()
    assert all(v["spread_bps"] is None and v["is_closed"] for v in values)


def test_produce_command_refuses_a_bad_rate() -> None:
    result = CliRunner().invoke(app, ["produce", "--rate", "0", str(NEAR)])
    assert result.exit_code != 0

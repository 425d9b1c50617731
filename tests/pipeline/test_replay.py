"""Replay (klines files -> the same Pipeline.process path) with fake features and ensemble."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pandas as pd

from stream_infer.events import decode_candle
from stream_infer.pipeline import Pipeline, merged_candle_messages, replay_klines
from tests.conftest import DATA
from tests.pipeline.fakes import FakeEnsemble, fake_factory

NEAR = DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz"


def two_streams(tmp_path: Path, n: int = 300, shift: int = 40) -> list[Path]:
    """NEARUSDT rows [0, n) and, as XYZUSDT, rows [shift, n + shift): overlapping in time."""
    df = pd.read_csv(NEAR)
    a = tmp_path / "NEARUSDT-1m-2023-02.csv"
    b = tmp_path / "XYZUSDT-1m-2023-02.csv"
    df.iloc[:n].to_csv(a, index=False)
    df.iloc[shift : n + shift].to_csv(b, index=False)
    return [a, b]


def test_messages_are_merged_in_open_time_order(tmp_path: Path) -> None:
    paths = two_streams(tmp_path)
    total, values = merged_candle_messages(paths)
    candles = [decode_candle(v) for v in values]
    assert total == len(candles) == 600
    times = [c.open_time for c in candles if c is not None]
    assert times == sorted(times)
    # ties keep the files' order: NEARUSDT (first file) before XYZUSDT
    symbols = [c.symbol for c in candles if c is not None]
    assert symbols[:40] == ["NEARUSDT"] * 40 and symbols[40:42] == ["NEARUSDT", "XYZUSDT"]


def test_replay_writes_one_prediction_per_ready_candle(tmp_path: Path) -> None:
    paths = two_streams(tmp_path)
    ens = FakeEnsemble(seq_len=5)
    p = Pipeline(ens, features=fake_factory(10))
    out, dead = io.BytesIO(), io.BytesIO()
    stats = replay_klines(paths, p, out, batch_size=16, dead_letters=dead)
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    per_stream = 300 - (10 - 1 + 5 - 1)
    assert len(lines) == stats.counts.predictions == 2 * per_stream
    assert stats.batches == -(-600 // 16) and stats.files == 2
    assert dead.getvalue() == b""
    by_symbol = {
        s: [x["open_time"] for x in lines if x["symbol"] == s] for s in ("NEARUSDT", "XYZUSDT")
    }
    near = pd.read_csv(NEAR)["open_time"].tolist()
    assert by_symbol["NEARUSDT"] == near[13:300]
    assert by_symbol["XYZUSDT"] == near[40 + 13 : 340]


def test_replay_is_deterministic_apart_from_timing(tmp_path: Path) -> None:
    paths = two_streams(tmp_path, n=120)

    def run(batch: int) -> list[dict[str, object]]:
        out = io.BytesIO()
        replay_klines(
            paths,
            Pipeline(FakeEnsemble(seq_len=3), features=fake_factory(5)),
            out,
            batch_size=batch,
        )
        rows = [orjson.loads(x) for x in out.getvalue().splitlines()]
        for r in rows:
            del r["latency_ms"], r["produced_at"]
        return rows

    first = run(32)
    assert first == run(32) and first == run(7) and len(first) > 200


def test_bad_rows_become_dead_letters(tmp_path: Path) -> None:
    df = pd.read_csv(NEAR).iloc[:50]
    df.loc[20, "high"] = df.loc[20, "low"] / 2
    path = tmp_path / "NEARUSDT-1m-2023-02.csv"
    df.to_csv(path, index=False)
    out, dead = io.BytesIO(), io.BytesIO()
    p = Pipeline(FakeEnsemble(seq_len=2), features=fake_factory(5))
    stats = replay_klines([path], p, out, dead_letters=dead)
    (dl,) = [orjson.loads(x) for x in dead.getvalue().splitlines()]
    assert dl["reason"] == "rule:high_bound" and dl["offset"] == 20 and dl["topic"] == "replay"
    assert stats.counts.dead_letters == {"rule:high_bound": 1}
    # the bad candle is not part of the stream: it is a gap of one, filled
    assert stats.counts.gap_filled == 1 and stats.counts.candles == 49

"""``run_inference_pipeline`` and ``stream-infer predict`` against a real Postgres, on the
real months of three symbols: the newest candle's prediction is replay's, a repeat with
``--write`` stores nothing twice, bad rows never reach a stream, and a stream that cannot
predict says why."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_infer import StreamNotReady
from stream_infer.candles import read_klines
from stream_infer.config import DatabaseSettings
from stream_infer.db import Database, load_candles
from stream_infer.events import decode_prediction
from stream_infer.features import MAX_GAP
from stream_infer.pgsource import DUPLICATE, INCREMENTAL_MAX, run_inference_pipeline
from stream_infer.pipeline import READY_INDEX
from tests.pgsource._util import assert_same, cli, count_rows, cut, replay
from tests.pgsource.conftest import MONTHS

pytestmark = pytest.mark.services

NEAR = MONTHS[0]
MIN = 60_000
# replay reads this many candles before a month's last one: more than readiness, so its
# streams start elsewhere than the library call's and agree only if warm-up is enough
TAIL = 1500


def need_of(ensemble: Any) -> int:
    """Readiness from its source of truth: the 400th candle is the first with features
    (index READY_INDEX), then seq_len feature rows."""
    return READY_INDEX + int(ensemble.seq_len)


async def load_rows(db: Database, src: Path, rows: range | list[int]) -> list[int]:
    """Insert the given rows of a klines file; their open_times."""
    frame = read_klines(src).iloc[list(rows)]
    async with db.acquire() as conn:
        await load_candles(conn, frame)
    return [int(t) for t in frame["open_time"]]


async def _newest_equals_replay(
    db: Database,
    settings: DatabaseSettings,
    manager: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tail: int | None,
) -> None:
    """Load the three months with ``db load-candles``; the call's prediction for each
    month's last candle equals replay's over the last ``tail`` candles (None: the month)."""
    loaded = await cli(monkeypatch, settings, "db", "load-candles", *map(str, MONTHS))
    assert loaded.exit_code == 0, loaded.output
    for m in MONTHS:
        assert f"{m}: {count_rows(m)} new candles" in loaded.stdout
    result = await run_inference_pipeline(db, manager)
    assert result.skipped == [] and result.rejected == []
    assert result.latency_ms > 0
    n = {m: count_rows(m) for m in MONTHS}
    files = [
        m if tail is None else cut(m, tmp_path, range(n[m] - tail, n[m]), "tail") for m in MONTHS
    ]
    want = replay(files, manager.current)
    got = {p.symbol: p for p in result.predictions}
    assert sorted(got) == ["AVAXUSDT", "FILUSDT", "NEARUSDT"]
    for m in MONTHS:
        symbol = m.name.split("-")[0]
        last = int(read_klines(m)["open_time"].iloc[-1])
        p = got[symbol]
        assert p.open_time == last
        assert_same(p, want[(symbol, last)])
        assert p.latency_ms <= result.latency_ms
    # one symbol alone: the same numbers
    one = await run_inference_pipeline(db, manager, symbol="FILUSDT")
    (p,) = one.predictions
    assert_same(p, got["FILUSDT"], tol=1e-12)


async def test_newest_candle_equals_replay_for_three_real_months(
    pg_db: Database,
    pg_settings: DatabaseSettings,
    manager: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _newest_equals_replay(pg_db, pg_settings, manager, tmp_path, monkeypatch, TAIL)


@pytest.mark.slow  # replay of three whole months: minutes on 2 cores
@pytest.mark.timeout(3600)
async def test_newest_candle_equals_replay_of_the_whole_months(
    pg_db: Database,
    pg_settings: DatabaseSettings,
    manager: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _newest_equals_replay(pg_db, pg_settings, manager, tmp_path, monkeypatch, None)


async def test_predict_write_twice_leaves_one_row_per_prediction(
    pg_db: Database,
    pg_settings: DatabaseSettings,
    models_dir: Path,
    manager: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = [cut(m, tmp_path, range(2000), "head") for m in MONTHS]
    loaded = await cli(monkeypatch, pg_settings, "db", "load-candles", *map(str, files))
    assert loaded.exit_code == 0, loaded.output
    want = replay(files, manager.current)
    runs = []
    for _ in range(2):
        r = await cli(monkeypatch, pg_settings, "predict", "--write", "--models", str(models_dir))
        assert r.exit_code == 0, (r.stdout, r.stderr)
        runs.append(r)
    first = [decode_prediction(line) for line in runs[0].stdout_bytes.splitlines()]
    assert len(first) == 3
    for p in first:
        assert_same(p, want[(p.symbol, p.open_time)])
    assert "3 new rows in predictions" in runs[0].stderr
    assert "0 new rows in predictions" in runs[1].stderr
    async with pg_db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT symbol, open_time, count(*) AS n FROM predictions GROUP BY 1, 2"
        )
        stored = await conn.fetch("SELECT symbol, open_time, predictions FROM predictions")
    assert sorted((r["symbol"], r["open_time"], r["n"]) for r in rows) == sorted(
        (p.symbol, p.open_time, 1) for p in first
    )
    for r in stored:
        p = want[(r["symbol"], r["open_time"])]
        assert all(abs(a - b) <= 1e-6 for a, b in zip(r["predictions"], p.predictions, strict=True))
    # --symbol: one line
    one = await cli(
        monkeypatch, pg_settings, "predict", "--symbol", "FILUSDT", "--models", str(models_dir)
    )
    assert one.exit_code == 0, one.stderr
    (line,) = one.stdout_bytes.splitlines()
    assert orjson.loads(line)["symbol"] == "FILUSDT"


async def test_bad_rows_are_reported_and_never_reach_a_stream(
    pg_db: Database, manager: Any, tmp_path: Path
) -> None:
    n = 700
    times = await load_rows(pg_db, NEAR, range(n))
    # inside the model's window of the newest candle, so that each one matters
    nan_at, inverted_at, conflict_at, copy_at = n - 30, n - 25, n - 20, n - 15
    async with pg_db.acquire() as conn:
        # a table a feeder made without the primary key can hold two rows of one open_time
        await conn.execute("ALTER TABLE candles DROP CONSTRAINT candles_pkey")
        await conn.execute("UPDATE candles SET close = 'NaN' WHERE open_time = $1", times[nan_at])
        await conn.execute(
            "UPDATE candles SET high = low * 0.99 WHERE open_time = $1", times[inverted_at]
        )
        await conn.execute(
            "INSERT INTO candles SELECT symbol, interval, open_time, close_time, open, high, "
            "low, close * 1.001, volume, quote_volume, trades, taker_buy_base, "
            "taker_buy_quote, spread_bps FROM candles WHERE open_time = $1",
            times[conflict_at],
        )
        await conn.execute(
            "INSERT INTO candles SELECT * FROM candles WHERE open_time = $1", times[copy_at]
        )
    result = await run_inference_pipeline(pg_db, manager, symbol="NEARUSDT")
    got = sorted((r.open_time, r.reason) for r in result.rejected)
    assert got == sorted(
        [
            (times[nan_at], "rule:finite"),
            (times[inverted_at], "rule:high_bound"),
            (times[conflict_at], DUPLICATE),
            (times[conflict_at], DUPLICATE),
            (times[copy_at], DUPLICATE),
        ]
    )
    # What the stream saw: every valid candle once, the refused ones as gaps (filled by
    # the spec like any missing candle); replay of exactly that is the reference.
    kept = [i for i in range(n) if i not in (nan_at, inverted_at, conflict_at)]
    want = replay([cut(NEAR, tmp_path, kept, "clean")], manager.current)
    (p,) = result.predictions
    assert p.open_time == times[-1]
    assert_same(p, want[("NEARUSDT", times[-1])])
    # The table's rows before they were spoilt give another answer: the refused rows are
    # not a no-op that any reference would pass.
    before = replay([cut(NEAR, tmp_path, range(n), "before")], manager.current)
    assert before[("NEARUSDT", times[-1])].predictions != p.predictions
    # A bad newest row: no prediction from it, the reason instead.
    async with pg_db.acquire() as conn:
        await conn.execute("UPDATE candles SET volume = 'NaN' WHERE open_time = $1", times[-1])
    with pytest.raises(StreamNotReady, match=r"newest candle.*rule:finite") as info:
        await run_inference_pipeline(pg_db, manager, symbol="NEARUSDT")
    assert (info.value.reason, info.value.symbol, info.value.interval) == (
        "newest_invalid",
        "NEARUSDT",
        "1m",
    )


async def test_too_few_candles_or_an_unbridgeable_gap_is_a_clear_error(
    pg_db: Database, manager: Any, tmp_path: Path
) -> None:
    need = need_of(manager.current)
    await load_rows(pg_db, NEAR, range(need - 1))
    with pytest.raises(StreamNotReady) as info:
        await run_inference_pipeline(pg_db, manager, symbol="NEARUSDT")
    e = info.value
    assert (e.reason, e.need, e.have, e.symbol) == ("too_few", need, need - 1, "NEARUSDT")
    assert f"{need} needed (1 more)" in str(e)
    with pytest.raises(StreamNotReady, match="no candles of BTCUSDT") as nothing:
        await run_inference_pipeline(pg_db, manager, symbol="BTCUSDT")
    assert nothing.value.reason == "no_candles"
    # one more candle: ready, and replay agrees
    times = await load_rows(pg_db, NEAR, [need - 1])
    (p,) = (await run_inference_pipeline(pg_db, manager, symbol="NEARUSDT")).predictions
    want = replay([cut(NEAR, tmp_path, range(need), "need")], manager.current)
    assert set(want) == {("NEARUSDT", times[0])}  # replay too predicts exactly this one
    assert_same(p, want[("NEARUSDT", times[0])])

    # FIL: a gap one longer than the spec fills, 100 candles before the newest
    fil = MONTHS[1]
    cut_at = 800
    skip = MAX_GAP + 1
    await load_rows(pg_db, fil, [*range(cut_at), *range(cut_at + skip, cut_at + skip + 100)])
    result = await run_inference_pipeline(pg_db, manager)  # all streams: FIL is skipped
    assert [p.symbol for p in result.predictions] == ["NEARUSDT"]
    (skipped,) = result.skipped
    assert isinstance(skipped, StreamNotReady)
    assert (skipped.symbol, skipped.reason, skipped.have, skipped.need) == (
        "FILUSDT",
        "gap",
        100,
        need,
    )
    assert f"a gap of {skip} missing candles" in str(skipped)
    # the largest gap the spec fills: predicted, equal to replay
    await load_rows(pg_db, MONTHS[2], [*range(500), *range(500 + MAX_GAP, 560 + MAX_GAP)])
    avax = {p.symbol: p for p in (await run_inference_pipeline(pg_db, manager)).predictions}
    rows = [*range(500), *range(500 + MAX_GAP, 560 + MAX_GAP)]
    want = replay([cut(MONTHS[2], tmp_path, rows, "gap")], manager.current)
    last = max(t for s, t in want if s == "AVAXUSDT")
    assert_same(avax["AVAXUSDT"], want[("AVAXUSDT", last)])


async def test_later_calls_read_only_new_rows_and_equal_a_fresh_read(
    pg_db: Database, manager: Any, ensemble: Any, models_dir: Path
) -> None:
    from stream_infer.config import resolve_ensemble
    from stream_infer.reload import ModelManager

    def fresh() -> Any:
        config = resolve_ensemble(None, env={"ML_LGBM_MODELS_DIR": str(models_dir)})
        return ModelManager(config, ensemble)  # a new manager holds no stream: reads afresh

    start = 600
    times = await load_rows(pg_db, NEAR, range(start))
    await run_inference_pipeline(pg_db, manager, symbol="NEARUSDT")
    steps = [1, 1, 0, 3, INCREMENTAL_MAX + 5, 1]
    at = start
    for k in steps:
        if k:
            times += await load_rows(pg_db, NEAR, range(at, at + k))
            at += k
        (held,) = (await run_inference_pipeline(pg_db, manager, symbol="NEARUSDT")).predictions
        (cold,) = (await run_inference_pipeline(pg_db, fresh(), symbol="NEARUSDT")).predictions
        assert held.open_time == cold.open_time == times[-1]
        assert_same(held, cold, tol=1e-9)
    # a row deleted, backfilled, or updated in place, behind the newest one read: the
    # held stream sees it (the change count, then the fingerprint) and is read afresh
    gone = at - 20
    changes = [
        ("DELETE", "DELETE FROM candles WHERE open_time = $1", times[-20]),
        ("INSERT", "", gone),  # the deleted row comes back: a backfill
        (
            "UPDATE",
            "UPDATE candles SET close = close * 1.01, high = high * 1.01 WHERE open_time = $1",
            times[-5],
        ),
    ]
    for what, sql, arg in changes:
        (before,) = (await run_inference_pipeline(pg_db, manager, symbol="NEARUSDT")).predictions
        if what == "INSERT":
            await load_rows(pg_db, NEAR, [arg])
        else:
            async with pg_db.acquire() as conn:
                assert await conn.execute(sql, arg) == f"{what} 1"
        for symbol in ("NEARUSDT", None):  # the one-symbol path and the all-streams path
            (held,) = (await run_inference_pipeline(pg_db, manager, symbol=symbol)).predictions
            (cold,) = (await run_inference_pipeline(pg_db, fresh(), symbol=symbol)).predictions
            assert_same(held, cold, tol=1e-9)
            assert held.predictions != before.predictions, what  # it mattered, and was seen
    assert not math.isclose(held.predictions[0], 0.5, abs_tol=0.0)  # a real number, not a stub


async def test_no_model_and_a_bad_interval_are_clear_errors(pg_db: Database, manager: Any) -> None:
    from stream_infer import ConfigError, ModelError
    from stream_infer.reload import ModelManager

    idle = ModelManager(manager.config)
    assert not idle.is_ready() and manager.is_ready()
    with pytest.raises(ModelError, match="no model is serving"):
        await run_inference_pipeline(pg_db, idle)
    with pytest.raises(ConfigError, match="unknown interval"):
        await run_inference_pipeline(pg_db, manager, interval="7m")
    assert (await run_inference_pipeline(pg_db, manager)).predictions == []  # empty table


async def test_the_readme_library_example_runs(
    pg_db: Database,
    pg_settings: DatabaseSettings,
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.conftest import REPO
    from tests.pgsource._util import db_env

    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text.split("The library call (the feeder's loop, translated):", 1)[1]
    block = after.split("```python", 1)[1].split("```", 1)[0]
    times = await load_rows(pg_db, NEAR, range(500))
    for k, v in db_env(pg_settings).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ML_LGBM_MODELS_DIR", str(models_dir))
    # the snippet as the body of a coroutine; the "..." line is the feeder's own work
    lines = [line for line in block.splitlines() if line and not line.startswith("...")]
    imports = [line for line in lines if line.startswith(("from ", "import "))]
    body = [line for line in lines if line not in imports]
    src = "\n".join(
        [*imports, "async def example():", *("    " + b for b in body), "    return result, db"]
    )
    namespace: dict[str, Any] = {}
    exec(compile(src, "README.md", "exec"), namespace)
    result, db = await namespace["example"]()
    await db.close()
    (p,) = result.predictions
    assert (p.symbol, p.open_time) == ("NEARUSDT", times[-1])
    assert f"NEARUSDT {times[-1]}" in capsys.readouterr().out


async def test_the_fingerprint_is_read_only_when_the_change_count_moved(pg_db: Database) -> None:
    from stream_infer.pgsource import _read

    times = await load_rows(pg_db, NEAR, range(60))
    key = ("NEARUSDT", "1m")
    plan = {key: (times[0], times[40], times[-1])}
    async with pg_db.acquire() as conn:
        assert await _read.counted(conn)
        now = int(await conn.fetchval("SELECT n FROM candle_changes"))
        want = _read.fingerprint(
            await conn.fetch(
                "SELECT xmin::text::bigint AS xmin FROM candles WHERE open_time <= $1", times[40]
            )
        )
        assert want.rows == 41
        same = (await _read.after(conn, plan, 8, known={key: now}))[key]
        assert (same.behind, same.changes, same.more) == (None, now, True)
        # the limit cut the read: the last open_time read waits for the next (copies stay together)
        assert [r["open_time"] for r in same.rows] == times[41:48]
        for stale in (None, now - 1):
            got = (await _read.after(conn, plan, 8, known={key: stale}))[key]
            assert (got.behind, got.changes) == (want, now)
        plain = (await _read.after(conn, plan, 8))[key]  # without the count: always read
        assert (plain.behind, plain.changes) == (want, None)

"""The pipeline and replay with the real StreamingFeatures (a recording fake ensemble).

Checks the readiness rule and the window alignment end to end: the window sent to the
model for the candle at open_time t holds the batch features of the seq_len stream rows
ending at t (docs/feature-spec.md tolerance), counting gap-filled rows, restarting after long gaps.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from stream_infer.candles import read_klines
from stream_infer.events import encode_candle
from stream_infer.features import WARMUP, batch_features, prepare_stream
from stream_infer.pipeline import Inbound, Pipeline, replay_klines
from tests.conftest import DATA
from tests.pipeline.fakes import FakeEnsemble

BTC = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"
NEAR = DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz"
SEQ_LEN = 16


def holed(path: Path, n: int, drop: list[range]) -> pd.DataFrame:
    """The first n candles of a file with some ranges removed (gaps)."""
    df = read_klines(path).iloc[:n]
    keep = np.ones(len(df), dtype=bool)
    for r in drop:
        keep[list(r)] = False
    return df[keep].reset_index(drop=True)


def expected(df: pd.DataFrame) -> tuple[list[int], pd.DataFrame]:
    """open_times that must get a prediction, and the stream's batch feature rows."""
    stream = prepare_stream(df)
    pos = stream.groupby("segment").cumcount().to_numpy()
    real = ~stream["synthetic"].to_numpy()
    first = WARMUP - 1 + SEQ_LEN - 1  # the readiness rule
    times = stream["open_time"].to_numpy()[real & (pos >= first)]
    return [int(t) for t in times], batch_features(df)


def messages(frames: list[pd.DataFrame]) -> list[bytes]:
    df = pd.concat(frames, ignore_index=True)
    df = df.iloc[np.lexsort((np.arange(len(df)), df["open_time"].to_numpy()))]
    out = []
    for r in df.to_dict("records"):
        r["spread_bps"] = None
        out.append(orjson.dumps(r))
    return out


def test_predictions_and_windows_with_real_features() -> None:
    # gaps of 5 (filled) and 70 (a restart) in one stream, none in the other
    near = holed(NEAR, 1700, [range(500, 505), range(900, 970)])
    btc = read_klines(BTC).iloc[:900].reset_index(drop=True)
    ens = FakeEnsemble(seq_len=SEQ_LEN)
    pipe = Pipeline(ens)
    values = messages([near, btc])
    made = []
    for k in range(0, len(values), 37):
        batch = [Inbound(v, 0, k + i, 0.0) for i, v in enumerate(values[k : k + 37])]
        made.extend(pipe.process(batch).predictions)
    windows = np.concatenate(ens.calls)
    assert len(windows) == len(made)
    for symbol, df in (("NEARUSDT", near), ("BTCUSDT", btc)):
        want, feats = expected(df)
        idx = [i for i, p in enumerate(made) if p.symbol == symbol]
        assert [made[i].open_time for i in idx] == want
        rows = feats.to_numpy()
        at = {int(t): j for j, t in enumerate(feats.index)}
        for i in idx:
            j = at[made[i].open_time]
            ref = rows[j - SEQ_LEN + 1 : j + 1]
            assert np.all(np.abs(windows[i] - ref) <= 1e-9 * np.maximum(1.0, np.abs(ref)))
    st = pipe.stream_state("NEARUSDT", "1m")
    assert st is not None and st.rows_available == st.keep_rows == 64  # the default headroom


def test_bad_and_refused_candles_leave_real_state_untouched() -> None:
    df = read_klines(NEAR).iloc[:460].reset_index(drop=True)
    values = messages([df])
    a, b = Pipeline(FakeEnsemble(seq_len=4)), Pipeline(FakeEnsemble(seq_len=4))
    for p in (a, b):
        p.process([Inbound(v, 0, i, 0.0) for i, v in enumerate(values[:450])])
    good = orjson.loads(values[450])
    bad = [
        orjson.dumps({**good, "high": good["low"] / 2}),  # a rule
        orjson.dumps({**good, "open_time": good["open_time"] + 7}),  # off the interval grid
        b"\x00garbage",
    ]
    out = a.process([Inbound(v, 1, 900 + i, 0.0) for i, v in enumerate(bad)])
    assert [d.reason for d in out.dead_letters] == [
        "rule:high_bound",
        "rule:open_time_grid",
        "not_json",
    ]
    assert [(d.symbol, d.interval) for d in out.dead_letters[:2]] == [("NEARUSDT", "1m")] * 2
    rest = [Inbound(v, 0, 450 + i, 0.0) for i, v in enumerate(values[450:])]
    pa, pb = a.process(rest).predictions, b.process(rest).predictions
    assert len(pa) == 10
    assert [x.predictions for x in pa] == [x.predictions for x in pb]
    assert all(
        np.array_equal(x, y) for x, y in zip(a.ensemble.calls, b.ensemble.calls, strict=True)
    )  # type: ignore[union-attr]


def test_warm_from_history_then_live_matches_an_unbroken_stream() -> None:
    df = read_klines(NEAR).iloc[:700].reset_index(drop=True)
    values = messages([df])
    whole = Pipeline(FakeEnsemble(seq_len=SEQ_LEN))
    ref = whole.process([Inbound(v, 0, i, 0.0) for i, v in enumerate(values)]).predictions
    from stream_infer.events import decode_candle

    history = [decode_candle(v) for v in values[:600]]
    warmed = Pipeline(FakeEnsemble(seq_len=SEQ_LEN))
    warmed.warm([c for c in history if c is not None], partition=0)
    live = warmed.process([Inbound(v, 0, 600 + i, 0.0) for i, v in enumerate(values[600:])])
    assert [p.open_time for p in live.predictions] == [p.open_time for p in ref][-100:]
    assert [p.predictions for p in live.predictions] == [p.predictions for p in ref][-100:]


def test_replay_real_files_one_prediction_per_ready_candle(tmp_path: Path) -> None:
    near = holed(NEAR, 1200, [range(700, 703)])
    # a second symbol overlapping in time, so the merge interleaves them
    other = read_klines(NEAR).iloc[300:1000].reset_index(drop=True)
    paths = [tmp_path / "NEARUSDT-1m-2023-02.csv", tmp_path / "ZZZUSDT-1m-2023-02.csv"]
    cols = [
        "open_time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "close_time",
        "quote_volume",
        "trades",
        "taker_buy_base",
        "taker_buy_quote",
    ]
    for df, p in zip((near, other), paths, strict=True):
        df[cols].to_csv(p, index=False, header=False)
    out = io.BytesIO()
    stats = replay_klines(paths, Pipeline(FakeEnsemble(seq_len=SEQ_LEN)), out, batch_size=64)
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    for symbol, df in (("NEARUSDT", near), ("ZZZUSDT", other)):
        want, _ = expected(df)
        assert [x["open_time"] for x in lines if x["symbol"] == symbol] == want
    assert stats.counts.gap_filled == 3 and stats.counts.dead_letters == {}
    assert len(lines) == stats.counts.predictions


@pytest.mark.parametrize("seq_len", [1, 64])
def test_first_prediction_index_is_warmup_plus_seq_len_minus_two(seq_len: int) -> None:
    df = read_klines(BTC).iloc[: WARMUP + seq_len + 5]
    pipe = Pipeline(FakeEnsemble(seq_len=seq_len))
    got = pipe.process([Inbound(v, 0, i, 0.0) for i, v in enumerate(messages([df]))])
    first = WARMUP - 1 + seq_len - 1
    assert got.predictions[0].open_time == int(df["open_time"].iloc[first])
    assert len(got.predictions) == len(df) - first


def test_encode_candle_is_what_replay_sends() -> None:
    df = read_klines(BTC).iloc[:3]
    from stream_infer.candles import Candle

    for r, v in zip(df.to_dict("records"), messages([df]), strict=True):
        c = Candle(**{**r, "spread_bps": None})
        assert orjson.loads(encode_candle(c)) == {**orjson.loads(v), "is_closed": True}

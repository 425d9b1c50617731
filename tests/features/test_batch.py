"""batch_features / prepare_stream / compute_extended_features: input handling and errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stream_infer import DecodeError, InvalidCandle
from stream_infer.features import (
    FEATURE_NAMES,
    WARMUP,
    batch_features,
    compute_extended_features,
    prepare_stream,
)

MINUTE = 60_000


@pytest.fixture(scope="module")
def head(near_month: pd.DataFrame) -> pd.DataFrame:
    return near_month.iloc[:600].reset_index(drop=True)


def test_shape_index_and_columns(head: pd.DataFrame) -> None:
    out = batch_features(head)
    assert list(out.columns) == list(FEATURE_NAMES)
    assert out.index.name == "open_time"
    np.testing.assert_array_equal(out.index.to_numpy(), head["open_time"].to_numpy())
    assert out.dtypes.eq(np.float64).all()
    assert out.iloc[: WARMUP - 1].isna().all().all() and out.iloc[WARMUP - 1 :].notna().all().all()


def test_order_and_duplicates_do_not_matter(head: pd.DataFrame) -> None:
    want = batch_features(head)
    shuffled = head.sample(frac=1.0, random_state=3)
    dup = head.iloc[[10, 400, 599]].copy()
    dup["close"] = dup["high"]  # a duplicate that arrives later loses
    messy = pd.concat([shuffled, dup])
    got = batch_features(messy)
    pd.testing.assert_frame_equal(got, want)


def test_prepare_stream_marks_synthetic_rows_and_segments(near_month: pd.DataFrame) -> None:
    full = near_month.iloc[:1000].reset_index(drop=True)
    df = full.drop(index=[100, 101, 102]).drop(index=range(500, 570))
    prep = prepare_stream(df)
    assert len(prep) == len(full) - 70  # 3 filled; 70 > 60 missing: a restart
    assert prep["synthetic"].sum() == 3
    syn = prep[prep["synthetic"]]
    np.testing.assert_array_equal(syn["open_time"], full["open_time"].iloc[100:103])
    assert (syn["close"] == full["close"].iloc[99]).all()
    assert (syn["open"] == syn["close"]).all() and (syn["trades"] == 0).all()
    assert prep["segment"].tolist() == [0] * 500 + [1] * 430
    out = batch_features(df)
    np.testing.assert_array_equal(out.index.to_numpy(), prep["open_time"].to_numpy())
    not_ready = out.isna().all(axis=1).to_numpy()
    assert not_ready.sum() == 2 * (WARMUP - 1)  # each segment warms up
    assert not not_ready[WARMUP - 1 : 500].any() and not_ready[500 : 500 + WARMUP - 1].all()


def test_errors_name_the_row(head: pd.DataFrame) -> None:
    bad = head.copy()
    bad.loc[17, "close"] = np.nan
    with pytest.raises(InvalidCandle) as err:
        batch_features(bad)
    assert (err.value.rule, err.value.row) == ("finite", 17)
    bad = head.copy()
    bad.loc[42, "taker_buy_base"] = bad.loc[42, "volume"] + 1
    with pytest.raises(InvalidCandle) as err:
        batch_features(bad)
    assert (err.value.rule, err.value.row) == ("taker_buy_bounds", 42)
    bad = head.copy()
    bad.loc[250, "open_time"] += 1_000
    with pytest.raises(InvalidCandle) as err:
        batch_features(bad.iloc[::-1])
    assert (err.value.rule, err.value.row) == ("open_time_grid", 349)
    assert "row 349" in str(err.value)
    bad = head.copy().astype({"open_time": np.float64})
    bad.loc[5, "open_time"] += 0.5
    with pytest.raises(InvalidCandle) as err:
        batch_features(bad)
    assert (err.value.rule, err.value.row) == ("open_time_integer", 5)
    with pytest.raises(DecodeError):
        batch_features(head.drop(columns=["trades"]))
    mixed = head.copy()
    mixed.loc[3, "symbol"] = "BTCUSDT"
    with pytest.raises(DecodeError):
        batch_features(mixed)


def test_empty_and_short(head: pd.DataFrame) -> None:
    empty = batch_features(head.iloc[:0])
    assert empty.shape == (0, 27)
    short = batch_features(head.iloc[:50])
    assert short.shape == (50, 27) and short.isna().all().all()


def test_other_intervals(head: pd.DataFrame) -> None:
    five = head.copy()
    five["open_time"] = five["open_time"].iloc[0] + np.arange(len(five)) * 5 * MINUTE
    np.testing.assert_array_equal(
        batch_features(five, interval_ms=5 * MINUTE).to_numpy(), batch_features(head).to_numpy()
    )
    with pytest.raises(InvalidCandle):  # 1m candles read as 5m are off the grid
        batch_features(head, interval_ms=5 * MINUTE)


def test_extended_checks_taker_buy_ratio_and_spread(head: pd.DataFrame) -> None:
    args = [
        head[k].to_numpy()
        for k in (
            "open",
            "high",
            "low",
            "close",
            "volume",
            "quote_volume",
            "taker_buy_base",
            "taker_buy_quote",
            "trades",
        )
    ]
    tbr = head["taker_buy_base"].to_numpy() / head["volume"].to_numpy()
    bad = tbr.copy()
    bad[33] += 0.01
    with pytest.raises(InvalidCandle) as err:
        compute_extended_features(*args, None, bad)
    assert err.value.row == 33
    spread = np.where(np.arange(len(head)) % 3 == 0, 4.5, np.nan)
    ext = compute_extended_features(*args, spread, tbr)
    df = head.assign(spread_bps=spread)
    np.testing.assert_array_equal(ext, batch_features(df).to_numpy())
    assert np.nanmax(np.abs(ext[:, FEATURE_NAMES.index("spread_bps")][::3] - 4.5)) == 0.0

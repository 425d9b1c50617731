"""Properties that hold for every stream: both paths agree with each other and with the
definitions (tests/features/_reference.py) on generated streams with flat and near-flat
windows, zero volume and trades, mixed spreads, gaps, duplicates, late candles and prices
from 1e-4 to 1e6."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_infer.features import (
    FEATURE_NAMES,
    MAX_GAP,
    WARMUP,
    Outcome,
    StreamingFeatures,
    batch_features,
    prepare_stream,
)
from tests.features._gen import MINUTE, Spec, arrivals, make_stream
from tests.features._reference import NAMES, reference
from tests.features._tol import assert_close

SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)

specs = st.builds(
    Spec,
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(WARMUP + 20, WARMUP + 140),
    price=st.sampled_from([1e-4, 0.0123, 2.33, 97.5, 16_500.0, 1e6]),
    tick_rel=st.sampled_from([1e-3, 1e-4, 1e-6, 1e-8]),
    p_still=st.sampled_from([0.0, 0.5, 0.95, 1.0]),
    p_flat_candle=st.sampled_from([0.0, 0.1, 0.9]),
    p_zero_volume=st.sampled_from([0.0, 0.1, 0.9]),
    p_zero_trades=st.sampled_from([0.0, 0.3, 1.0]),
    p_spread=st.sampled_from([0.0, 0.5, 1.0]),
)


def _check_stream(df: pd.DataFrame, keep_rows: int = 0) -> tuple[pd.DataFrame, StreamingFeatures]:
    """Stream every arrival; returned vectors and kept rows must equal the batch rows."""
    batch = batch_features(df)
    prep = prepare_stream(df)
    assert len(prep) == len(batch)
    sf = StreamingFeatures(keep_rows=keep_rows)
    seen: set[int] = set()
    last = None
    for rec in df.to_dict("records"):
        ot = int(rec["open_time"])
        vec = sf.update(rec)
        if last is not None and ot <= last:
            assert sf.last_outcome is (Outcome.DUPLICATE if ot == last else Outcome.LATE)
            assert vec is None
            continue
        last = ot
        seen.add(ot)
        want = batch.loc[ot].to_numpy()
        if vec is None:
            assert np.isnan(want).all(), f"batch ready at {ot}, stream not"
            assert sf.last_outcome in (Outcome.WARMING, Outcome.RESTARTED)
        else:
            assert sf.last_outcome is Outcome.READY
            assert_close(vec, want, f"open_time {ot}")
    if keep_rows:
        seg = prep["segment"].to_numpy()
        tail = batch[seg == seg[-1]].dropna().to_numpy()[-keep_rows:]
        assert sf.rows_available == len(tail)
        assert_close(sf.window(), tail, "window")
    return batch, sf


@SETTINGS
@given(spec=specs)
def test_both_paths_agree_with_each_other_and_the_definitions(spec: Spec) -> None:
    df = make_stream(spec)
    batch, _ = _check_stream(df)
    ready = np.flatnonzero(~batch.isna().any(axis=1).to_numpy())
    assert len(ready) == len(df) - WARMUP + 1
    rows = sorted({int(ready[0]), int(ready[-1]), *ready[:: max(1, len(ready) // 6)].tolist()})
    cols = {k: df[k].to_numpy(dtype=np.float64) for k in df.columns}
    ref = reference(
        cols["open"],
        cols["high"],
        cols["low"],
        cols["close"],
        cols["volume"],
        cols["quote_volume"],
        cols["trades"],
        cols["taker_buy_base"],
        cols["spread_bps"],
        rows,
    )
    assert tuple(NAMES) == FEATURE_NAMES
    values = batch.to_numpy()
    for t in rows:
        assert_close(values[t], np.array(ref[t]), f"row {t} vs definitions")


gaps = st.lists(
    st.tuples(st.integers(1, 600), st.one_of(st.integers(1, MAX_GAP), st.integers(61, 200))),
    max_size=4,
)
copies = st.lists(st.tuples(st.integers(0, 600), st.integers(0, 5)), max_size=8)


@SETTINGS
@given(spec=specs, gaps=gaps, copies=copies, keep=st.sampled_from([0, 7, 64]))
def test_gaps_duplicates_and_late_candles(
    spec: Spec, gaps: list[tuple[int, int]], copies: list[tuple[int, int]], keep: int
) -> None:
    spec.gaps = gaps
    spec.n = WARMUP + 250
    df = arrivals(make_stream(spec), copies)
    batch, _ = _check_stream(df, keep_rows=keep)
    prep = prepare_stream(df)
    # one row per minute inside a segment; a gap > MAX_GAP starts a new one that warms again
    for _, seg in prep.groupby("segment"):
        assert (np.diff(seg["open_time"].to_numpy()) == MINUTE).all()
        rows = batch.loc[seg["open_time"].to_numpy()]
        assert rows.iloc[: WARMUP - 1].isna().all().all()
        assert not rows.iloc[WARMUP - 1 :].isna().any().any()
    syn = prep[prep["synthetic"]]
    assert (syn[["open", "high", "low"]].to_numpy() == syn[["close"]].to_numpy()).all()
    assert (syn[["volume", "quote_volume", "trades", "taker_buy_base"]].to_numpy() == 0).all()
    assert syn["spread_bps"].isna().all()
    missing: dict[int, int] = {}
    for pos, k in gaps:
        if 0 < pos < spec.n:
            missing[pos] = missing.get(pos, 0) + k
    assert prep["segment"].iloc[-1] == sum(k > MAX_GAP for k in missing.values())
    assert prep["synthetic"].sum() == sum(k for k in missing.values() if k <= MAX_GAP)


def test_each_gap_size_and_the_restart(near_month: pd.DataFrame) -> None:
    base = near_month.iloc[:1200].reset_index(drop=True)
    for k in (1, 2, 17, MAX_GAP, MAX_GAP + 1, 500):
        df = pd.concat([base.iloc[:600], base.iloc[600 + k :]], ignore_index=True)
        sf = StreamingFeatures(keep_rows=100)
        for rec in df.iloc[:600].to_dict("records"):
            sf.update(rec)
        vec = sf.update(df.iloc[600].to_dict())
        batch = batch_features(df)
        if k <= MAX_GAP:
            assert sf.last_outcome is Outcome.READY and sf.last_filled == k
            assert vec is not None
            assert_close(vec, batch.iloc[600 + k].to_numpy(), f"k={k}")
            # the window holds the synthetic rows, in order, then the real one
            assert_close(sf.window(k + 1), batch.iloc[600 : 601 + k].to_numpy(), f"k={k}")
            assert len(batch) == len(base)
        else:
            assert sf.last_outcome is Outcome.RESTARTED and vec is None
            assert sf.last_filled == 0 and sf.rows_available == 0 and not sf.ready
            assert sf.stream_length == 1 and len(batch) == len(df)
            assert batch.iloc[600 : 600 + WARMUP - 1].isna().all().all()


@settings(max_examples=10, deadline=None, derandomize=True)
@given(start=st.integers(0, 40320 - WARMUP - 60), extra=st.integers(1, 60))
def test_a_stream_started_mid_history_converges(
    near_month: pd.DataFrame, full_batch: pd.DataFrame, start: int, extra: int
) -> None:
    """After its own WARMUP candles, a late-started stream equals the full history's values."""
    part = near_month.iloc[start : start + WARMUP + extra]
    sf = StreamingFeatures()
    sf.warm(part.iloc[:-1].to_dict("records"))
    vec = sf.update(part.iloc[-1].to_dict())
    assert vec is not None
    assert_close(vec, full_batch.iloc[start + WARMUP + extra - 1].to_numpy(), f"start {start}")


@pytest.fixture(scope="module")
def full_batch(near_month: pd.DataFrame) -> pd.DataFrame:
    return batch_features(near_month)


def test_flat_stream() -> None:
    df = make_stream(Spec(n=WARMUP + 30, p_still=1.0, p_flat_candle=1.0, p_spread=0.0))
    df["volume"] = 5.0
    df["taker_buy_base"] = 2.0
    df["quote_volume"] = 5.0 * df["close"]
    df["trades"] = 3
    batch, _ = _check_stream(df)
    last = dict(zip(FEATURE_NAMES, batch.iloc[-1].to_numpy(), strict=True))
    for name in FEATURE_NAMES:
        want = {
            "close_loc": 0.5,
            "rsi_14": 0.5,
            "vol_ratio_15": 1.0,
            "taker_buy_ratio": 0.4,
            "taker_imb_15": -0.2,
        }.get(name, 0.0)
        assert math.isclose(last[name], want, abs_tol=1e-15), (name, last[name])


def test_near_flat_large_prices_keep_exact_z() -> None:
    """One tick in 20 minutes at 1e6 with a 0.01 tick: the z-score needs the shifted mean."""
    spec = Spec(seed=7, n=WARMUP + 60, price=1e6, tick_rel=1e-8, p_still=0.95, p_flat_candle=0.0)
    df = make_stream(spec)
    batch, _ = _check_stream(df)
    cols = {k: df[k].to_numpy(dtype=np.float64) for k in df.columns}
    t = len(df) - 1
    ref = reference(
        *(
            cols[k]
            for k in (
                "open",
                "high",
                "low",
                "close",
                "volume",
                "quote_volume",
                "trades",
                "taker_buy_base",
                "spread_bps",
            )
        ),
        [t],
    )
    assert_close(batch.iloc[t].to_numpy(), np.array(ref[t]), "near-flat row")
    assert batch["bb_z_20"].iloc[WARMUP:].abs().max() > 0.1  # windows that moved, not all zero

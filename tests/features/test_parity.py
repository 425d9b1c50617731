"""Streaming == batch on a real month, every feature, every row (docs/feature-spec.md tolerance)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stream_infer.candles import Candle
from stream_infer.features import (
    FEATURE_NAMES,
    WARMUP,
    Outcome,
    StreamingFeatures,
    batch_features,
    compute_extended_features,
)
from tests.features._tol import TOL, rel_err


def stream_all(df: pd.DataFrame, sf: StreamingFeatures | None = None) -> np.ndarray:
    """Feed every row; row i of the result is update()'s vector (NaN when None)."""
    sf = sf or StreamingFeatures()
    out = np.full((len(df), len(FEATURE_NAMES)), np.nan)
    for i, rec in enumerate(df.to_dict("records")):
        vec = sf.update(rec)
        if vec is not None:
            out[i] = vec
    return out


def test_streaming_equals_batch_on_a_month(
    near_month: pd.DataFrame, record_property: pytest.RecordProperty
) -> None:
    batch = batch_features(near_month)
    assert len(batch) == len(near_month) == 40320  # a whole month, no gaps
    stream = stream_all(near_month)
    assert np.isnan(stream[: WARMUP - 1]).all()
    assert not np.isnan(stream[WARMUP - 1 :]).any()
    err = rel_err(stream, batch.to_numpy())
    worst = err.max(axis=0)
    lines = [f"{name:<18} {e:.3e}" for name, e in zip(FEATURE_NAMES, worst, strict=True)]
    print("\nmax |stream - batch| / max(1, |batch|) over", len(batch) - WARMUP + 1, "rows")
    print("\n".join(lines))
    for name, e in zip(FEATURE_NAMES, worst, strict=True):
        record_property(f"parity_{name}", f"{e:.3e}")
    assert worst.max() <= TOL, lines


def test_candle_objects_and_mappings_agree(near_month: pd.DataFrame) -> None:
    head = near_month.iloc[:450]
    by_map = stream_all(head)
    sf = StreamingFeatures()
    rows = []
    for rec in head.to_dict("records"):
        vec = sf.update(Candle(**{**rec, "spread_bps": None}))
        rows.append(vec if vec is not None else np.full(27, np.nan))
    np.testing.assert_array_equal(np.array(rows), by_map)
    assert sf.last_outcome is Outcome.READY


def test_compute_extended_features_equals_batch(near_month: pd.DataFrame) -> None:
    df = near_month.iloc[:2000]
    v = df["volume"].to_numpy()
    tbr = np.where(v > 0, df["taker_buy_base"].to_numpy() / np.where(v > 0, v, 1), 0.5)
    ext = compute_extended_features(
        df["open"],
        df["high"],
        df["low"],
        df["close"],
        df["volume"],
        df["quote_volume"],
        df["taker_buy_base"],
        df["taker_buy_quote"],
        df["trades"],
        None,
        tbr,
    )
    assert ext.shape == (2000, 27)
    np.testing.assert_array_equal(ext, batch_features(df).to_numpy())

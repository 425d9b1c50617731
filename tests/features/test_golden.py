"""Both paths reproduce an independent implementation's golden file (docs/feature-spec.md v1)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stream_infer.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    WARMUP,
    Outcome,
    StreamingFeatures,
    batch_features,
)
from tests.features._tol import assert_close


def test_spec_constants() -> None:
    assert FEATURE_VERSION == 1
    assert WARMUP == 400
    assert len(FEATURE_NAMES) == 27 and len(set(FEATURE_NAMES)) == 27


def test_batch_reproduces_golden(near_month: pd.DataFrame, golden: pd.DataFrame) -> None:
    assert list(golden.columns) == list(FEATURE_NAMES)
    ours = batch_features(near_month.iloc[:3000])
    assert len(ours) == 3000
    assert ours.iloc[: WARMUP - 1].isna().all().all()
    ready = ours.iloc[WARMUP - 1 :]
    assert not ready.isna().any().any()
    assert len(ready) == len(golden) == 3000 - WARMUP + 1
    np.testing.assert_array_equal(ready.index.to_numpy(), golden.index.to_numpy())
    for name in FEATURE_NAMES:
        assert_close(ready[name].to_numpy(), golden[name].to_numpy(), name)


def test_streaming_reproduces_golden(near_month: pd.DataFrame, golden: pd.DataFrame) -> None:
    sf = StreamingFeatures()
    rows: dict[int, np.ndarray] = {}
    for i, rec in enumerate(near_month.iloc[:3000].to_dict("records")):
        vec = sf.update(rec)
        assert sf.ready == (i >= WARMUP - 1)
        if vec is None:
            assert sf.last_outcome is Outcome.WARMING and i < WARMUP - 1
        else:
            assert sf.last_outcome is Outcome.READY and vec.shape == (27,)
            rows[int(rec["open_time"])] = vec
    assert list(rows) == golden.index.tolist()
    ours = np.array(list(rows.values()))
    for j, name in enumerate(FEATURE_NAMES):
        assert_close(ours[:, j], golden[name].to_numpy(), name)

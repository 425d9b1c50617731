"""Labels, samples and the time split: no label or window crosses a break, a gap or a part."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_infer.candles import read_klines
from stream_infer.features import batch_features, prepare_stream
from stream_infer.models import StreamData, make_samples
from stream_infer.models._dataset import labels, sample_mask, split_parts
from tests.models.conftest import NEAR


def test_labels_by_hand() -> None:
    close = np.array([1.0, 2.0, 2.0, 1.0, 3.0])
    y = labels(close, [1, 2])
    # h=1: 2>1, 2>2 no, 1>2 no, 3>1; last row has no future.
    np.testing.assert_array_equal(y[:, 0], [1, 0, 0, 1, np.nan])
    # h=2: 2>1, 1>2 no, 3>2; two rows without a future.
    np.testing.assert_array_equal(y[:, 1], [1, 0, 1, np.nan, np.nan])


def test_sample_mask_by_hand() -> None:
    # 12 rows, two segments (a break before row 8), row 6 synthetic, row 0 and 8 not ready.
    size = 12
    synthetic = np.zeros(size, dtype=bool)
    synthetic[6] = True
    segment = np.array([0] * 8 + [1] * 4)
    ready = np.ones(size, dtype=bool)
    ready[0] = False
    ready[8] = False  # a new segment warms up again
    got = np.flatnonzero(sample_mask(synthetic, segment, ready, [1, 2], seq_len=3))
    # t=2: row 0 not ready. t=3: rows 1-3 ready, 4 and 5 real -> the one sample.
    # t=4, 5: t+2 / t+1 is the synthetic row 6. t=6: synthetic. t=7: t+1 is in segment 1.
    # t=10: row 8 not ready. t=11: no future.
    assert got.tolist() == [3]


def _stream(frame: pd.DataFrame) -> StreamData:
    feats = batch_features(frame)
    prep = prepare_stream(frame)
    return StreamData(
        symbol="NEARUSDT",
        interval="1m",
        files=(),
        open_time=prep["open_time"].to_numpy(),
        close=prep["close"].to_numpy(),
        synthetic=prep["synthetic"].to_numpy(),
        segment=prep["segment"].to_numpy(),
        features=feats.to_numpy(),
    )


def test_real_stream_with_gaps_and_a_restart() -> None:
    frame = read_klines(NEAR).iloc[:4000].reset_index(drop=True)
    # A 5-candle gap (filled with synthetic rows) and a 100-candle gap (a new stream).
    frame = frame.drop(index=list(range(1500, 1505)) + list(range(2600, 2700)))
    s = _stream(frame)
    assert s.synthetic.sum() == 5 and s.segment.max() == 1
    horizons, seq_len = (1, 5, 15), 64
    parts = make_samples([s], horizons, seq_len)
    allrows = make_samples([s], horizons, seq_len, split=False)["all"]
    ready = np.isfinite(s.features).all(axis=1)
    for name, smp in {**parts, "all": allrows}.items():
        assert len(smp) > 0, name
        for t in smp.rows:
            assert not s.synthetic[t]
            assert ready[t - seq_len + 1 : t + 1].all()
            assert (s.segment[t - seq_len + 1 : t + max(horizons) + 1] == s.segment[t]).all()
            for h in horizons:
                assert not s.synthetic[t + h]
        # Labels are the closes' comparison, row by row.
        for j, h in enumerate(horizons):
            want = (s.close[smp.rows + h] > s.close[smp.rows]).astype(float)
            np.testing.assert_array_equal(smp.y[:, j], want)
        np.testing.assert_array_equal(smp.windows()[:, -1], s.features[smp.rows])
        assert np.isfinite(smp.windows()).all()
    # Time order, no overlap: every train footprint ends before any val footprint starts.
    tr, va, te = (parts[k].rows for k in ("train", "val", "test"))
    assert tr.max() + 15 < va.min() - 63 and va.max() + 15 < te.min() - 63
    assert len(allrows) >= len(tr) + len(va) + len(te)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.booleans(), min_size=1, max_size=300),
    st.integers(1, 20),
    st.integers(1, 20),
)
def test_split_parts_never_overlap(mask_list: list[bool], seq_len: int, max_h: int) -> None:
    mask = np.array(mask_list)
    part = split_parts(mask, seq_len, max_h)
    assert ((part >= 0) <= mask).all()  # only samples get a part
    spans = []
    for k in range(3):
        ts = np.flatnonzero(part == k)
        if ts.size:
            spans.append((k, ts.min() - seq_len + 1, ts.max() + max_h))
    # Footprints of different parts are disjoint and in time order.
    for (k1, _, end1), (k2, start2, _) in itertools.pairwise(spans):
        assert k1 < k2 and end1 < start2

"""LightGBM export: ONNX equals LightGBM on float32 inputs, even exactly at the thresholds."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import pytest

from stream_infer._errors import ExportCheckError
from stream_infer.models._export import check_onnx
from stream_infer.models._lgbm import (
    INPUT_NAME,
    PROBA_NAME,
    as_float32_rows,
    float32_thresholds,
    merge_horizons,
    to_onnx,
    train_lgbm,
)


def _data(seed: int, n: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 27)) * rng.uniform(1e-4, 10, 27)
    y = (x[:, 0] / x[:, 0].std() + rng.standard_normal(n) > 0).astype(float)
    return x, y


def _thresholds(booster: lgb.Booster) -> list[tuple[int, float]]:
    out = []
    for tree in booster.dump_model()["tree_info"]:
        stack = [tree["tree_structure"]]
        while stack:
            node = stack.pop()
            if "split_feature" in node:
                out.append((node["split_feature"], float(node["threshold"])))
                stack += [node["left_child"], node["right_child"]]
    return out


def test_onnx_matches_lightgbm_at_every_threshold(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = _data(0)
    booster, info = train_lgbm(x[:3000], y[:3000], x[3000:], y[3000:], seed=0, num_boost_round=60)
    assert info["num_trees"] == booster.num_trees() >= 1
    # Adversarial rows: each threshold and its float32 neighbours in its own feature.
    base = np.median(x, axis=0).astype(np.float32)
    rows = []
    for f, t in _thresholds(booster):
        assert float(np.float32(t)) == t  # thresholds are float32 values now
        for v in (
            np.nextafter(np.float32(t), -np.inf),
            np.float32(t),
            np.nextafter(np.float32(t), np.inf),
        ):
            r = base.copy()
            r[f] = v
            rows.append(r)
    probe = np.concatenate([np.array(rows), x.astype(np.float32)])
    path = tmp_path / "m.onnx"
    path.write_bytes(to_onnx(booster, 27, "m").SerializeToString())
    diffs = check_onnx([path], [booster], probe.astype(np.float64))
    assert diffs[0] <= 1e-6


def test_rounding_thresholds_keeps_predictions_on_float32_inputs() -> None:
    x, y = _data(1)
    raw = lgb.train(
        {"objective": "binary", "verbose": -1, "num_threads": 1, "deterministic": True},
        lgb.Dataset(x, y),
        num_boost_round=30,
    )
    fixed = float32_thresholds(raw)
    rows = as_float32_rows(_data(2, 20000)[0])
    np.testing.assert_array_equal(raw.predict(rows), fixed.predict(rows))


def test_check_onnx_rejects_a_different_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, y = _data(3)
    b1, _ = train_lgbm(x, y, x[:0], y[:0], seed=0, num_boost_round=20)
    b2, _ = train_lgbm(x, 1 - y, x[:0], y[:0], seed=0, num_boost_round=20)
    path = tmp_path / "m.onnx"
    path.write_bytes(to_onnx(b1, 27, "m").SerializeToString())
    with pytest.raises(ExportCheckError) as err:
        check_onnx([path], [b2], x[:100])
    assert err.value.path == str(path)


def test_merged_graph_equals_the_separate_files() -> None:
    x, y = _data(4)
    models, boosters = [], []
    for k in range(3):
        b, _ = train_lgbm(x, np.roll(y, k), x[:0], y[:0], seed=k, num_boost_round=15)
        boosters.append(b)
        models.append(to_onnx(b, 27, f"h{k}"))
    merged, names = merge_horizons(models)
    sess = ort.InferenceSession(merged.SerializeToString(), providers=["CPUExecutionProvider"])
    x32 = x[:500].astype(np.float32)
    outs = sess.run(names, {INPUT_NAME: x32})
    for m, o in zip(models, outs, strict=True):
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(s.run([PROBA_NAME], {INPUT_NAME: x32})[0], o)

"""Replay with the real ensemble: artifacts/ensemble-v1 when it exists, else a tiny one trained here."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

import stream_infer.models as models
from stream_infer.candles import read_klines
from stream_infer.cli import app
from stream_infer.features import WARMUP, batch_features
from stream_infer.pipeline import Pipeline, replay_klines
from tests.conftest import DATA

BTC = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"
NEAR = DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("klines")
    paths = []
    for src, n in ((BTC, 1100), (NEAR, 900)):
        df = read_klines(src).iloc[:n]
        cols = [
            "open_time", "open", "high", "low", "close", "volume", "close_time",
            "quote_volume", "trades", "taker_buy_base", "taker_buy_quote",
        ]  # fmt: skip
        p = d / src.name.replace(".gz", "")
        df[cols].to_csv(p, index=False, header=False)
        paths.append(p)
    return paths


def run(ens: Any, files: list[Path], batch: int = 64) -> list[dict[str, Any]]:
    out = io.BytesIO()
    replay_klines(files, Pipeline(ens), out, batch_size=batch)
    return [orjson.loads(x) for x in out.getvalue().splitlines()]


def test_replay_with_the_real_ensemble(ensemble_dir: Path, files: list[Path]) -> None:
    ens = models.load_ensemble(ensemble_dir, ensemble_id="test")
    first = WARMUP - 1 + ens.seq_len - 1
    lines = run(ens, files)
    assert len(lines) == (1100 - first) + (900 - first)
    for symbol, src, n in (("BTCUSDT", BTC, 1100), ("NEARUSDT", NEAR, 900)):
        times = read_klines(src)["open_time"].iloc[first:n].tolist()
        assert [x["open_time"] for x in lines if x["symbol"] == symbol] == times
    p = np.array([x["predictions"] for x in lines])
    m = np.array([x["components"]["mamba"] for x in lines])
    g = np.array([x["components"]["lgbm"] for x in lines])
    w = ens.mamba_weight
    assert np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p, w * m + (1 - w) * g, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        np.array([x["confidences"] for x in lines]), np.abs(2 * p - 1), rtol=0, atol=1e-12
    )
    assert {(x["ensemble_id"], x["version"], x["feature_version"]) for x in lines} == {
        ("test", ens.version, 1)
    }
    assert [x["horizons"] for x in lines[:1]] == [list(ens.horizons)]
    # deterministic apart from timing
    again = run(ens, files)
    for a, b in zip(lines, again, strict=True):
        for k in ("latency_ms", "produced_at"):
            del a[k], b[k]
    assert lines == again


def test_replay_prediction_equals_the_model_on_batch_features(
    ensemble_dir: Path, files: list[Path]
) -> None:
    """The window the pipeline feeds is the batch features' window ending at the candle."""
    ens = models.load_ensemble(ensemble_dir, ensemble_id="test")
    lines = [x for x in run(ens, files) if x["symbol"] == "NEARUSDT"]
    feats = batch_features(read_klines(NEAR).iloc[:900]).to_numpy()
    for x in (lines[0], lines[len(lines) // 2], lines[-1]):
        j = int(np.flatnonzero(read_klines(NEAR)["open_time"].to_numpy() == x["open_time"])[0])
        ref = ens.predict(feats[None, j - ens.seq_len + 1 : j + 1])
        # float32 models: a different batch size may change the last bits (measured 6e-8)
        np.testing.assert_allclose(x["predictions"], ref.probabilities[0], rtol=0, atol=1e-6)


def test_replay_command_with_the_real_ensemble(
    ensemble_dir: Path, files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "p.jsonl"
    args = ["replay", "--models", str(ensemble_dir), "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--data", *map(str, files)])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    version = orjson.loads((ensemble_dir / "manifest.json").read_bytes())["version"]
    assert {x["ensemble_id"] for x in lines} == {f"file:{version}"}
    # the same predictions as the library call
    ens = models.load_ensemble(ensemble_dir, ensemble_id=f"file:{version}")
    direct = run(ens, files)
    for a, b in zip(lines, direct, strict=True):
        for k in ("latency_ms", "produced_at"):
            del a[k], b[k]
    assert lines == direct

"""A real ensemble for the reload tests: artifacts/ensemble-v1 when the repository has it,
else a tiny one trained once per session on real candles (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DATA, REPO

SHIPPED = REPO / "artifacts" / "ensemble-v1"
BTC = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"


@pytest.fixture(scope="session")
def real_ensemble_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = pytest.importorskip("stream_infer.models")
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED
    out = tmp_path_factory.mktemp("tiny-ensemble") / "ens"
    models.train_ensemble([BTC], out, models.TrainConfig.tiny(seq_len=16))
    return out

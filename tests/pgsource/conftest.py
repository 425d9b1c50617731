"""The ensemble these tests serve (the shipped one, else a tiny one trained once), a manager
serving it, and the real months of three symbols that tests/data carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA, REPO

SHIPPED = REPO / "artifacts" / "ensemble-v1"
MONTHS = [
    DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz",
    DATA / "klines" / "FILUSDT-1m-2023-02.csv.gz",
    DATA / "klines" / "AVAXUSDT-1m-2023-02.csv.gz",
]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = pytest.importorskip("stream_infer.models")
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED
    out = tmp_path_factory.mktemp("tiny-ensemble") / "ens"
    models.train_ensemble([MONTHS[0]], out, models.TrainConfig.tiny(seq_len=16))
    return out


@pytest.fixture(scope="session")
def ensemble(models_dir: Path) -> Any:
    """Loaded once, named as ``replay`` and ``run --models`` name it (file:<version>)."""
    from stream_infer.cli._replay import _load_ensemble

    return _load_ensemble(models_dir, None, 1)


@pytest.fixture
def manager(ensemble: Any, models_dir: Path) -> Any:
    """A fresh ModelManager serving ``ensemble`` (each test starts with no held streams)."""
    from stream_infer.config import resolve_ensemble
    from stream_infer.reload import ModelManager

    config = resolve_ensemble(None, env={"ML_LGBM_MODELS_DIR": str(models_dir)})
    return ModelManager(config, ensemble)

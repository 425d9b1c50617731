"""The ensemble the Kafka tests serve: the shipped one when committed, else a tiny one trained once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.kafka._util import BTC

SHIPPED = REPO / "artifacts" / "ensemble-v1"


@pytest.fixture(scope="session")
def ensemble_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED
    models = pytest.importorskip("stream_infer.models")
    out = tmp_path_factory.mktemp("tiny-ensemble") / "ens"
    models.train_ensemble([BTC], out, models.TrainConfig.tiny(seq_len=16, version="kafka-test"))
    return out

"""Fixtures of the reliability tests: the ensemble they serve and a broker behind a proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.kafka._util import BTC
from tests.reliability._harness import ProxiedBroker, proxied_broker

SHIPPED = REPO / "artifacts" / "ensemble-v1"


@pytest.fixture(scope="session")
def ensemble_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """artifacts/ensemble-v1 when the repository has it, else a tiny one trained once."""
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED
    models = pytest.importorskip("stream_infer.models")
    out = tmp_path_factory.mktemp("tiny-ensemble") / "ens"
    models.train_ensemble([BTC], out, models.TrainConfig.tiny(seq_len=16, version="rel-test"))
    return out


@pytest.fixture(scope="session")
def file_ensemble(ensemble_dir: Path) -> Any:
    """The ensemble as ``stream-infer run --models DIR`` names it (``file:<version>``)."""
    import json

    models = pytest.importorskip("stream_infer.models")
    version = json.loads((ensemble_dir / "manifest.json").read_text())["version"]
    return models.load_ensemble(ensemble_dir, ensemble_id=f"file:{version}")


@pytest.fixture
def proxied() -> Iterator[ProxiedBroker]:
    """A dedicated embedded broker that every client reaches through a cuttable TCP proxy."""
    from stream_infer import BrokerError

    cm = proxied_broker()
    try:
        pb = cm.__enter__()
    except BrokerError as exc:
        pytest.skip(f"no embedded broker: {exc}")
    try:
        yield pb
    finally:
        cm.__exit__(None, None, None)

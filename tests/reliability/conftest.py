"""Fixtures of the reliability tests: the ensemble they serve and a broker behind a proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.fixtures_kafka import TEST_BROKER
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


@pytest.fixture(scope="session")
def _proxied_apache() -> Iterator[ProxiedBroker | str]:
    """One Apache Kafka node behind a proxy for the session (it takes seconds to start);
    or why it could not start."""
    from stream_infer import BrokerError

    cm = proxied_broker("apache")
    try:
        pb = cm.__enter__()
    except BrokerError as exc:
        yield f"Apache Kafka could not be started: {exc}"
        return
    try:
        yield pb
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def proxied(request: pytest.FixtureRequest) -> Iterator[ProxiedBroker]:
    """A broker that every client reaches through a cuttable TCP proxy: the session's
    Apache Kafka node (its proxy restored after each test), or with
    STREAM_INFER_TEST_BROKER=tansu a dedicated embedded broker."""
    from stream_infer import BrokerError

    if TEST_BROKER != "tansu":
        pb = request.getfixturevalue("_proxied_apache")
        if isinstance(pb, str):
            pytest.skip(pb)
        try:
            yield pb
        finally:
            pb.proxy.restore()
        return
    cm = proxied_broker()
    try:
        pb = cm.__enter__()
    except BrokerError as exc:
        pytest.skip(f"no embedded broker: {exc}")
    try:
        yield pb
    finally:
        cm.__exit__(None, None, None)

"""Shared test setup.

Service-backed tests carry the ``services`` marker. Where no broker or database can be
had they skip locally, but in CI (``CI=true``) or with STREAM_INFER_REQUIRE_SERVICES=1 a
skipped service test is reported as a failure: CI must prove them, not skip them.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
SHIPPED = REPO / "artifacts" / "ensemble-v1"

REQUIRE_SERVICES = os.environ.get("STREAM_INFER_REQUIRE_SERVICES") == "1" or (
    os.environ.get("CI", "").lower() in ("1", "true", "yes")
)

pytest_plugins = [
    "tests.fixtures_kafka",
    "tests.fixtures_pg",
]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SERVICES and report.skipped and item.get_closest_marker("services") is not None:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"service-backed test skipped where services are required: {reason}"


@pytest.fixture(scope="session")
def ensemble_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ensemble the service-level tests serve: artifacts/ensemble-v1 when the repository
    has it, else a tiny one (16-row window) trained once per session on real candles."""
    if (SHIPPED / "manifest.json").is_file():
        return SHIPPED
    models = pytest.importorskip("stream_infer.models")
    out = tmp_path_factory.mktemp("tiny-ensemble") / "ens"
    btc = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"
    models.train_ensemble([btc], out, models.TrainConfig.tiny(seq_len=16, version="tiny-test"))
    return out


@pytest.fixture(scope="session")
def file_ensemble(ensemble_dir: Path) -> Any:
    """The ensemble as ``stream-infer run --models DIR`` names it (``file:<version>``)."""
    from stream_infer.config import file_ensemble_id, manifest_version

    models = pytest.importorskip("stream_infer.models")
    return models.load_ensemble(
        ensemble_dir, ensemble_id=file_ensemble_id(manifest_version(ensemble_dir))
    )

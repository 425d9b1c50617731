"""Shared test setup.

Service-backed tests carry the ``services`` marker. Where no broker or database can be
had they skip locally, but in CI (``CI=true``) or with STREAM_INFER_REQUIRE_SERVICES=1 a
skipped service test is reported as a failure: CI must prove them, not skip them.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"

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

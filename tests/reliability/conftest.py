"""Fixtures of the reliability tests: a broker behind a proxy (the ensemble: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures_kafka import TEST_BROKER
from tests.reliability._harness import ProxiedBroker, proxied_broker


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

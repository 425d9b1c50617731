"""build_service: what run, the demo and the benchmarks get, without a broker."""

from __future__ import annotations

from typing import Any

import pytest

from stream_infer.config import KafkaSettings
from stream_infer.kafka import PrometheusObserver, ServiceOptions, build_service
from stream_infer.ops import Metrics
from stream_infer.reload import BatchGate
from tests.pipeline.fakes import FakeEnsemble


class FakeReload:
    """What ``EnsembleRuntime`` offers the service."""

    def __init__(self, current: Any) -> None:
        self.current = current
        self.required = True
        self.gate = BatchGate()
        self.offered: list[Any] = []

    @property
    def provider(self) -> Any:
        return lambda: self.current

    def on_batch(self, result: Any) -> None:
        self.offered.append(result)

    def model_required(self) -> bool:
        return self.required


def test_a_fixed_ensemble_is_required_and_sized_by_the_settings() -> None:
    s = KafkaSettings(kafka_max_message_bytes=4096)
    ens = FakeEnsemble(seq_len=8)
    svc = build_service(s, ens, options=ServiceOptions(client_id="x", start_timeout_s=None))
    assert svc.pipeline.ensemble is ens and svc.settings is s
    assert not svc.holding and type(svc.observer) is not PrometheusObserver
    svc.pipeline.swap(None)
    assert svc.holding, "a configured model that is gone holds consumption"
    disabled = build_service(s, None)
    assert disabled.pipeline.ensemble is None and not disabled.holding


def test_a_hot_reload_serves_what_it_serves_and_says_when_a_model_is_required() -> None:
    ens = FakeEnsemble(seq_len=8)
    reload = FakeReload(ens)
    metrics = Metrics()
    svc = build_service(KafkaSettings(), reload=reload, metrics=metrics)
    assert svc.pipeline.ensemble is ens and isinstance(svc.observer, PrometheusObserver)
    svc.pipeline.swap(None)
    assert svc.holding
    reload.required = False
    assert not svc.holding


def test_an_ensemble_and_a_reload_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        build_service(KafkaSettings(), FakeEnsemble(), reload=FakeReload(None))

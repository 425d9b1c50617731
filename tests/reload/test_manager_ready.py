"""``ModelManager.is_ready()``: the seed's readiness question, true while a model serves."""

from __future__ import annotations

from stream_infer.config import resolve_ensemble
from stream_infer.reload import ModelManager


def test_is_ready_follows_the_serving_ensemble() -> None:
    config = resolve_ensemble(None, env={})
    manager = ModelManager(config)
    assert manager.current is None and not manager.is_ready()
    ensemble = object()  # the manager only holds the reference
    manager.swap(ensemble, config)
    assert manager.is_ready()
    manager.swap(None, config)  # back to disabled (e.g. the active row was deactivated)
    assert not manager.is_ready()

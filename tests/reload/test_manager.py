"""The model manager's state: starting, serving a row, serving the fallback, holding."""

from __future__ import annotations

import pytest

from stream_infer.config import EnsembleConfig
from stream_infer.reload import ManagerState, ModelManager, Phase

FALLBACK = EnsembleConfig(enabled=True, source="environment", lgbm_models_dir="/m/env")
ROW = EnsembleConfig(enabled=True, source="database", row_id=7, lgbm_models_dir="/m/row")
DISABLED = EnsembleConfig(enabled=False, source="default")


def test_a_new_manager_serves_what_its_config_names() -> None:
    assert ModelManager(FALLBACK).state == ManagerState(Phase.FALLBACK)
    assert ModelManager(ROW, object()).state == ManagerState(Phase.ROW)
    m = ModelManager(DISABLED)
    assert m.started and not m.model_required and m.unloadable_row is None


def test_start_a_bad_row_then_the_fallback_then_holding() -> None:
    m = ModelManager(FALLBACK, fallback=FALLBACK, starting=True)
    assert m.state == ManagerState(Phase.STARTING) and not m.started
    m.row_failed(7)
    assert m.state == ManagerState(Phase.STARTING, 7) and m.failed_ids == {7}
    m.swap(object(), FALLBACK)  # the fallback serves meanwhile
    assert m.state == ManagerState(Phase.STARTING, 7)
    m.finish_start()
    assert m.state == ManagerState(Phase.HOLDING, 7) and m.started
    assert m.unloadable_row == 7 and m.model_required
    m.finish_start()
    assert m.state.phase is Phase.HOLDING, "finishing twice changes nothing"


def test_a_reload_ends_the_hold_a_plain_swap_does_not() -> None:
    m = ModelManager(DISABLED)
    m.hold(7)
    assert m.state == ManagerState(Phase.HOLDING, 7)
    assert m.model_required, "inference disabled, but the active row asks for a model"
    m.swap(None, DISABLED)
    assert m.state == ManagerState(Phase.HOLDING, 7)
    m.swap(object(), ROW, reloaded=True)
    assert m.state == ManagerState(Phase.ROW) and m.unloadable_row is None
    m.swap(object(), FALLBACK, reloaded=True)
    assert m.state == ManagerState(Phase.FALLBACK)


def test_a_vetoed_swap_leaves_the_state() -> None:
    m = ModelManager(FALLBACK, object())
    m.hold(3)

    def veto(ensemble: object, config: EnsembleConfig) -> None:
        raise RuntimeError("no")

    m.on_swap(veto)
    with pytest.raises(RuntimeError):
        m.swap(object(), ROW, reloaded=True)
    assert m.state == ManagerState(Phase.HOLDING, 3) and m.config is FALLBACK


def test_no_caller_toggles_the_state() -> None:
    m = ModelManager(FALLBACK)
    for name in ("state", "started", "unloadable_row", "failed_ids"):
        with pytest.raises(AttributeError):
            setattr(m, name, None)

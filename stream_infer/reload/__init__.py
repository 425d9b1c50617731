"""Choosing the serving ensemble at start and hot-reloading it from Postgres.

See docs/postgres.md ("Hot reload").
"""

from __future__ import annotations

from stream_infer.reload._activate import activate, artifact_paths, check_model_dir
from stream_infer.reload._gate import BatchGate
from stream_infer.reload._manager import (
    EnsembleLike,
    Loader,
    ManagerState,
    ModelManager,
    Phase,
    StepLoader,
    check_hot_reload,
    default_loader,
    default_step_loader,
    initialize,
    load_checked,
    load_checked_steps,
)
from stream_infer.reload._reloader import Reloader
from stream_infer.reload._runtime import EnsembleRuntime

__all__ = [
    "BatchGate",
    "EnsembleLike",
    "EnsembleRuntime",
    "Loader",
    "ManagerState",
    "ModelManager",
    "Phase",
    "Reloader",
    "StepLoader",
    "activate",
    "artifact_paths",
    "check_hot_reload",
    "check_model_dir",
    "default_loader",
    "default_step_loader",
    "initialize",
    "load_checked",
    "load_checked_steps",
]

"""Choosing the serving ensemble at start and hot-reloading it from Postgres.

See docs/postgres.md ("Hot reload").
"""

from __future__ import annotations

from stream_infer.reload._activate import activate, artifact_paths
from stream_infer.reload._manager import (
    EnsembleLike,
    Loader,
    ModelManager,
    check_hot_reload,
    default_loader,
    initialize,
    load_checked,
)
from stream_infer.reload._reloader import Reloader
from stream_infer.reload._runtime import EnsembleRuntime

__all__ = [
    "EnsembleLike",
    "EnsembleRuntime",
    "Loader",
    "ModelManager",
    "Reloader",
    "activate",
    "artifact_paths",
    "check_hot_reload",
    "default_loader",
    "initialize",
    "load_checked",
]

"""Settings of the service (frozen; a reload builds a new object and swaps a reference)."""

from __future__ import annotations

from stream_infer.config._ensemble import (
    ENV_KEYS,
    TOML_KEYS,
    EnsembleConfig,
    check_under_root,
    default_models_root,
    file_ensemble_id,
    log_ensemble_config,
    manifest_version,
    resolve_ensemble,
)
from stream_infer.config._settings import (
    DatabaseSettings,
    KafkaSettings,
    PostgresSourceSettings,
    ServiceSettings,
)

__all__ = [
    "ENV_KEYS",
    "TOML_KEYS",
    "DatabaseSettings",
    "EnsembleConfig",
    "KafkaSettings",
    "PostgresSourceSettings",
    "ServiceSettings",
    "check_under_root",
    "default_models_root",
    "file_ensemble_id",
    "log_ensemble_config",
    "manifest_version",
    "resolve_ensemble",
]

"""``stream-infer activate``: check a model directory (and cache its frozen Mamba), then make
it the active row."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from stream_infer._errors import ConfigError
from stream_infer.config import EnsembleConfig, check_under_root, default_models_root
from stream_infer.config._ensemble import MAMBA_FILE, NORM_FILE, check_dir_under_root
from stream_infer.db import Database, EnsembleRow, activate_row, db_errors
from stream_infer.reload._manager import EnsembleLike, Loader, default_loader, load_checked

__all__ = ["activate", "artifact_paths", "check_model_dir"]

log = logging.getLogger(__name__)


def artifact_paths(ensemble: Any, model_dir: Path) -> tuple[Path, Path, Path]:
    """(mamba_path, lgbm_models_dir, norm_params_path) of a loaded ensemble, absolute."""
    mamba = getattr(ensemble, "mamba_path", None) or model_dir / MAMBA_FILE
    norm = getattr(ensemble, "norm_params_path", None) or model_dir / NORM_FILE
    return Path(mamba).resolve(), model_dir, Path(norm).resolve()


async def check_model_dir(
    model_dir: str | Path,
    *,
    weight: float | None = None,
    version: str | None = None,
    loader: Loader | None = None,
    models_root: str | Path | None = None,
    device: str = "cpu",
) -> tuple[EnsembleLike, Path]:
    """What ``activate`` does before it writes the row: (the checked ensemble, the directory).

    Loads and checks ``model_dir`` as a service would (``load_checked``). Refuses
    (ConfigError) a directory outside the models root, which the service would refuse as
    well: better now, at the operator's prompt, than in a log later. With the real loader it
    also saves the frozen Mamba beside the artifacts (``stream_infer.models.cache_frozen``):
    services that hot-reload the directory load it in one ~5 ms step instead of loading
    and freezing the TorchScript file (~20 ms, holding the GIL beside live traffic).
    """
    root = Path(models_root) if models_root is not None else default_models_root()
    path = Path(model_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"not a model directory: {model_dir}", path=str(model_dir))
    check_under_root(str(path), root, what="--models")
    check_dir_under_root(path, root, what="--models")
    if weight is not None and not 0.0 <= weight <= 1.0:
        raise ConfigError(f"--weight must be in [0, 1], not {weight}")
    probe = EnsembleConfig(
        enabled=True,
        source="default",
        ensemble_id="activate-check",
        version=version,
        lgbm_models_dir=str(path),
        mamba_weight=weight,
        device="cuda" if device == "cuda" else "cpu",
    )
    ensemble = await asyncio.to_thread(load_checked, loader or default_loader(), probe)
    if loader is None:
        await asyncio.to_thread(_write_frozen_cache, path)
    return ensemble, path


def _write_frozen_cache(path: Path) -> None:
    from stream_infer.models import cache_frozen

    try:
        out = cache_frozen(path)
    except Exception as exc:
        # Only an optimisation (e.g. a read-only model directory): services then freeze the
        # module themselves when they load it.
        log.warning("no frozen Mamba cache written under %s: %s", path, exc)
        return
    log.info("frozen Mamba cached at %s", out)


async def activate(
    db: Database,
    model_dir: str | Path,
    *,
    weight: float | None = None,
    version: str | None = None,
    loader: Loader | None = None,
    models_root: str | Path | None = None,
    device: str = "cpu",
) -> EnsembleRow:
    """``check_model_dir``, then insert it as the only active row and NOTIFY. Returns the row."""
    root = Path(models_root) if models_root is not None else default_models_root()
    ensemble, path = await check_model_dir(
        model_dir,
        weight=weight,
        version=version,
        loader=loader,
        models_root=root,
        device=device,
    )
    mamba, lgbm, norm = artifact_paths(ensemble, path)
    for p in (mamba, norm):
        check_under_root(str(p), root, what="model file")
    with db_errors("activate"):
        async with db.acquire() as conn:
            row = await activate_row(
                conn,
                version=version or str(ensemble.version or path.name),
                mamba_path=str(mamba),
                lgbm_models_dir=str(lgbm),
                norm_params_path=str(norm),
                mamba_weight=float(weight if weight is not None else ensemble.mamba_weight),
                horizons=[int(h) for h in ensemble.horizons],
                seq_len=int(ensemble.seq_len),
                feature_version=int(ensemble.feature_version),
            )
    log.info("activated ensemble row %d (version %s) from %s", row.id, row.version, path)
    return row

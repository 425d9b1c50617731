"""Which ensemble to serve: the seed's priority database -> environment -> TOML -> disabled.

The rule (docs/postgres.md, "Configuration priority"):

* An active ``active_ensembles`` row, when there is one, defines the whole ensemble
  (paths, weight, version, horizons, seq_len, feature version). Nothing below it is mixed in.
* Otherwise each field is taken on its own from the environment if set (an empty
  variable counts as unset), else from the ``[ml]`` table of the TOML file, else its default.
* The device is process-level, whatever the source: ML_DEVICE, else TOML ``device``, else cpu.
* Nothing configured means inference disabled: the service validates and forwards nothing.

Resolution is pure: the database row is passed in as data; reading it is the caller's I/O.
"""

from __future__ import annotations

import logging
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from stream_infer._artifacts import MAMBA_FILE, MANIFEST_FILE, NORM_FILE
from stream_infer._errors import ConfigError

__all__ = [
    "ENV_KEYS",
    "MAMBA_FILE",
    "NORM_FILE",
    "TOML_KEYS",
    "ActiveRow",
    "EnsembleConfig",
    "Source",
    "check_dir_under_root",
    "check_under_root",
    "default_models_root",
    "file_ensemble_id",
    "log_ensemble_config",
    "manifest_version",
    "resolve_ensemble",
]

log = logging.getLogger(__name__)

Source = Literal["database", "environment", "toml", "default"]
Device = Literal["cpu", "cuda"]

# Field -> environment variable, and field -> key of the TOML [ml] table (the seed's names).
ENV_KEYS: dict[str, str] = {
    "enabled": "ML_ENABLED",
    "mamba_path": "ML_MAMBA_MODEL_PATH",
    "lgbm_models_dir": "ML_LGBM_MODELS_DIR",
    "norm_params_path": "ML_NORM_PARAMS_PATH",
    "mamba_weight": "ML_MAMBA_WEIGHT",
    "version": "ML_ENSEMBLE_VERSION",
    "device": "ML_DEVICE",
}
TOML_KEYS: dict[str, str] = {
    "enabled": "enabled",
    "mamba_path": "mamba_model_path",
    "lgbm_models_dir": "lgbm_models_dir",
    "norm_params_path": "norm_params_path",
    "mamba_weight": "mamba_weight",
    "version": "ensemble_version",
    "device": "device",
}
_PATHS = ("mamba_path", "lgbm_models_dir", "norm_params_path")

# The runtime loads a model directory with fixed file names (``stream_infer._artifacts``,
# MAMBA_FILE and NORM_FILE). A path naming another file is refused rather than silently
# replaced by the directory's own file.
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ActiveRow(Protocol):
    """What resolution needs of an ``active_ensembles`` row (``stream_infer.db.EnsembleRow``)."""

    @property
    def id(self) -> int: ...
    @property
    def version(self) -> str: ...
    @property
    def mamba_path(self) -> str: ...
    @property
    def lgbm_models_dir(self) -> str: ...
    @property
    def norm_params_path(self) -> str: ...
    @property
    def mamba_weight(self) -> float: ...
    @property
    def horizons(self) -> tuple[int, ...]: ...
    @property
    def seq_len(self) -> int: ...
    @property
    def feature_version(self) -> int: ...


class EnsembleConfig(BaseModel):
    """The resolved ensemble configuration. ``sources`` says where each value came from.

    ``horizons``, ``seq_len`` and ``feature_version`` are only known from a database row;
    from the environment or TOML they are None and the model's manifest decides.
    ``mamba_weight`` None means the manifest's weight.
    """

    model_config = ConfigDict(frozen=True)

    enabled: bool
    source: Source
    ensemble_id: str | None = None
    row_id: int | None = None
    version: str | None = None
    mamba_path: str | None = None
    lgbm_models_dir: str | None = None
    norm_params_path: str | None = None
    mamba_weight: float | None = None
    horizons: tuple[int, ...] | None = None
    seq_len: int | None = None
    feature_version: int | None = None
    device: Device = "cpu"
    sources: dict[str, Source] = {}
    # Epoch seconds the database row was activated (its created_at); None from any other
    # source, which keeps no record of when it was chosen.
    activated_at: float | None = None

    @property
    def model_dir(self) -> Path | None:
        """The one directory the runtime loads (the three paths must agree on it)."""
        return _model_dir(self.mamba_path, self.lgbm_models_dir, self.norm_params_path)


def file_ensemble_id(version: str | None) -> str:
    """What an ensemble configured by file (``--models``, environment, TOML) is called:
    ``file:<version>``, or ``file`` without a version."""
    return f"file:{version}" if version else "file"


def manifest_version(model_dir: Path) -> str | None:
    """The ``version`` a model directory's manifest.json names; None when it cannot be read
    (the loader then names the problem)."""
    import json

    try:
        version = json.loads((Path(model_dir) / MANIFEST_FILE).read_bytes()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(version) if version else None


def default_models_root() -> Path:
    """ML_MODELS_ROOT when unset: ``artifacts/`` under the working directory."""
    return Path.cwd() / "artifacts"


def check_under_root(path: str, root: str | Path, *, what: str = "path") -> Path:
    """``path`` resolved, if it is absolute, has no ``..`` and lies under ``root`` after
    following every symlink; ConfigError otherwise (a database row is not trusted)."""
    p = Path(path)
    if not p.is_absolute():
        raise ConfigError(f"{what} must be an absolute path: {path!r}", path=path)
    if ".." in p.parts:
        raise ConfigError(f"{what} must not contain '..': {path!r}", path=path)
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(p))
    if real != real_root and real_root not in real.parents:
        raise ConfigError(
            f"{what} {path!r} resolves to {str(real)!r}, outside the models root "
            f"{str(real_root)!r} (ML_MODELS_ROOT)",
            path=path,
        )
    return real


def check_dir_under_root(directory: str | Path, root: str | Path, *, what: str = "path") -> None:
    """Every entry of ``directory`` lies under ``root`` after following symlinks; ConfigError
    otherwise. The runtime opens the files of a model directory by their fixed names, so a
    symlink in it (say ``lgbm_h1.onnx`` -> a file elsewhere) would load a file from outside
    the root although the row's own paths lie under it. A directory that cannot be listed
    is left to the loader to report."""
    real_root = Path(os.path.realpath(root))
    try:
        with os.scandir(directory) as it:
            entries = [e.path for e in it]
    except OSError:
        return
    for entry in sorted(entries):
        real = Path(os.path.realpath(entry))
        if real != real_root and real_root not in real.parents:
            raise ConfigError(
                f"{what}: {entry!r} resolves to {str(real)!r}, outside the models root "
                f"{str(real_root)!r} (ML_MODELS_ROOT)",
                path=entry,
            )


def _model_dir(mamba: str | None, lgbm: str | None, norm: str | None) -> Path | None:
    dirs: dict[str, Path] = {}
    if lgbm:
        dirs["lgbm_models_dir"] = Path(lgbm)
    if mamba:
        dirs["mamba_path"] = Path(mamba).parent
    if norm:
        dirs["norm_params_path"] = Path(norm).parent
    if not dirs:
        return None
    for path, want, name in (
        (mamba, MAMBA_FILE, "mamba_path"),
        (norm, NORM_FILE, "norm_params_path"),
    ):
        if path and Path(path).name != want:
            raise ConfigError(
                f"{name} names {Path(path).name!r}, but the runtime loads {want!r} from the "
                "model directory: rename the file or point at the directory's own",
                path=path,
            )
    distinct = {os.path.normpath(d) for d in dirs.values()}
    if len(distinct) > 1:
        where = ", ".join(f"{k} in {v}" for k, v in dirs.items())
        raise ConfigError(
            "the model files must lie in one directory (the runtime loads a model "
            f"directory): {where}"
        )
    return next(iter(dirs.values()))


def _epoch_s(when: Any) -> float | None:
    """A row's timestamp as epoch seconds; None when the row has none (``ActiveRow`` does not
    require it)."""
    return None if when is None else float(when.timestamp())


def _parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def _parse_weight(value: Any, name: str) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number in [0, 1], not {value!r}") from None
    if not (math.isfinite(w) and 0.0 <= w <= 1.0):
        raise ConfigError(f"{name} must be a number in [0, 1], not {value!r}")
    return w


def _parse_device(value: Any, name: str) -> Device:
    text = str(value).strip().lower()
    if text == "cpu":
        return "cpu"
    if text == "cuda":
        return "cuda"
    raise ConfigError(f"{name} must be cpu or cuda, not {value!r}")


def read_toml_ml(path: str | Path) -> dict[str, Any]:
    """The ``[ml]`` table of a TOML file ({} when it has none); ConfigError when unusable."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}", path=str(p)) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file unreadable: {exc}", path=str(p)) from None
    ml = data.get("ml", {})
    if not isinstance(ml, dict):
        raise ConfigError("[ml] must be a table", path=str(p))
    unknown = sorted(set(ml) - set(TOML_KEYS.values()))
    if unknown:
        # A misspelt key would otherwise be ignored without a word.
        raise ConfigError(
            f"unknown keys in [ml]: {unknown}; known: {sorted(TOML_KEYS.values())}", path=str(p)
        )
    return ml


def resolve_ensemble(
    row: ActiveRow | None,
    *,
    env: Mapping[str, str] | None = None,
    toml_path: str | Path | None = None,
    models_root: str | Path | None = None,
) -> EnsembleConfig:
    """Resolve the configuration (module docstring). ConfigError for an unusable value.

    A database row's paths must lie under ``models_root`` (default: ``default_models_root()``).
    Relative paths from TOML are relative to the TOML file; from the environment, to the
    working directory. Every path is stored absolute.
    """
    env = os.environ if env is None else env
    toml: dict[str, Any] = read_toml_ml(toml_path) if toml_path else {}
    toml_dir = Path(toml_path).resolve().parent if toml_path else Path.cwd()

    def pick(field: str) -> tuple[Any, Source] | None:
        value = env.get(ENV_KEYS[field])
        if value is not None and value.strip() != "":
            return value.strip(), "environment"
        if TOML_KEYS[field] in toml:
            return toml[TOML_KEYS[field]], "toml"
        return None

    device: Device = "cpu"
    device_source: Source = "default"
    if (got := pick("device")) is not None:
        device = _parse_device(got[0], ENV_KEYS["device"] if got[1] == "environment" else "device")
        device_source = got[1]

    if row is not None:
        root = Path(models_root) if models_root is not None else default_models_root()
        paths = {
            f: str(check_under_root(getattr(row, f), root, what=f"active_ensembles.{f}"))
            for f in _PATHS
        }
        try:
            _model_dir(*(paths[f] for f in ("mamba_path", "lgbm_models_dir", "norm_params_path")))
        except ConfigError as exc:
            raise ConfigError(f"active_ensembles row {row.id}: {exc.message}") from None
        check_dir_under_root(
            paths["lgbm_models_dir"], root, what=f"active_ensembles row {row.id} model directory"
        )
        fields = (*_PATHS, "version", "mamba_weight", "horizons", "seq_len", "feature_version")
        return EnsembleConfig(
            enabled=True,
            source="database",
            ensemble_id=str(row.id),
            row_id=row.id,
            version=row.version,
            mamba_weight=_parse_weight(row.mamba_weight, "active_ensembles.mamba_weight"),
            horizons=tuple(int(h) for h in row.horizons),
            seq_len=int(row.seq_len),
            feature_version=int(row.feature_version),
            device=device,
            sources={**dict.fromkeys(fields, "database"), "device": device_source},
            activated_at=_epoch_s(getattr(row, "created_at", None)),
            **paths,
        )

    values: dict[str, Any] = {}
    sources: dict[str, Source] = {"device": device_source}
    for field in _PATHS:
        if (got := pick(field)) is not None:
            base = toml_dir if got[1] == "toml" else Path.cwd()
            values[field] = str((base / Path(str(got[0])).expanduser()).resolve())
            sources[field] = got[1]
    if (got := pick("mamba_weight")) is not None:
        name = ENV_KEYS["mamba_weight"] if got[1] == "environment" else "[ml] mamba_weight"
        values["mamba_weight"] = _parse_weight(got[0], name)
        sources["mamba_weight"] = got[1]
    if (got := pick("version")) is not None:
        values["version"] = str(got[0])
        sources["version"] = got[1]
    has_models = any(f in values for f in _PATHS)
    if (got := pick("enabled")) is not None:
        name = ENV_KEYS["enabled"] if got[1] == "environment" else "[ml] enabled"
        enabled = _parse_bool(got[0], name)
        sources["enabled"] = got[1]
    else:
        # Naming a model is asking for inference; naming none is the seed's default: disabled.
        enabled = has_models
        sources["enabled"] = "default"
    if enabled and not has_models:
        log.warning(
            "ML_ENABLED is true but no model path is set (%s): inference stays disabled "
            "until a database row is active",
            ", ".join(ENV_KEYS[f] for f in _PATHS),
        )
        enabled = False
    _model_dir(
        values.get("mamba_path"), values.get("lgbm_models_dir"), values.get("norm_params_path")
    )
    given = [s for f, s in sources.items() if f != "device" and s != "default"]
    source: Source = (
        "environment" if "environment" in given else "toml" if "toml" in given else "default"
    )
    version = values.get("version")
    return EnsembleConfig(
        enabled=enabled,
        source=source,
        ensemble_id=file_ensemble_id(version) if enabled else None,
        device=device,
        sources=sources,
        **values,
    )


def log_ensemble_config(config: EnsembleConfig, logger: logging.Logger | None = None) -> None:
    """One line per value with its source (the configuration holds no secret)."""
    logger = logger or log
    logger.info(
        "ensemble config: enabled=%s source=%s ensemble_id=%s",
        config.enabled,
        config.source,
        config.ensemble_id,
    )
    for field in (
        "version",
        "mamba_path",
        "lgbm_models_dir",
        "norm_params_path",
        "mamba_weight",
        "horizons",
        "seq_len",
        "feature_version",
        "device",
    ):
        source = config.sources.get(field, "default")
        logger.info("ensemble config: %s=%s (from %s)", field, getattr(config, field), source)

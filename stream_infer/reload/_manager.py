"""The serving ensemble, how it is chosen at start and how a new active row replaces it.

Python twins of the seed's API: ``initialize(db, config_path) -> (config, manager)`` and
``check_hot_reload(db, manager) -> bool``. A new ensemble is loaded and checked beside the
old one, in a worker thread, one step per gap between the service's batches (``BatchGate``),
and swapped in only when everything passed; a failure keeps the old one serving and marks
the row so it is not tried again until another is activated.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, cast

import asyncpg

from stream_infer._errors import ConfigError, DatabaseError, ModelError
from stream_infer._steps import run_steps
from stream_infer.config import (
    EnsembleConfig,
    ServiceSettings,
    log_ensemble_config,
    resolve_ensemble,
)
from stream_infer.config._ensemble import ActiveRow
from stream_infer.db import Database, db_errors, fetch_active
from stream_infer.reload._gate import BatchGate

__all__ = [
    "EnsembleLike",
    "Loader",
    "ManagerState",
    "ModelManager",
    "Phase",
    "StepLoader",
    "check_hot_reload",
    "default_loader",
    "default_step_loader",
    "initialize",
    "load_checked",
    "load_checked_steps",
]

log = logging.getLogger(__name__)


class EnsembleLike(Protocol):
    """What the manager needs of ``stream_infer.models.Ensemble``."""

    @property
    def ensemble_id(self) -> str: ...
    @property
    def version(self) -> str | None: ...
    @property
    def horizons(self) -> Sequence[int]: ...
    @property
    def seq_len(self) -> int: ...
    @property
    def feature_version(self) -> int: ...
    @property
    def mamba_weight(self) -> float: ...
    def check(self) -> Any: ...


class Loader(Protocol):
    """``stream_infer.models.load_ensemble``'s signature (the part the manager passes)."""

    def __call__(
        self,
        model_dir: Path,
        *,
        device: str = ...,
        mamba_weight: float | None = ...,
        ensemble_id: str = ...,
        version: str | None = ...,
    ) -> EnsembleLike: ...


class StepLoader(Protocol):
    """``stream_infer.models.load_ensemble_steps``: the loader as a generator that yields
    between its long steps and returns the ensemble."""

    def __call__(
        self,
        model_dir: Path,
        *,
        device: str = ...,
        mamba_weight: float | None = ...,
        ensemble_id: str = ...,
        version: str | None = ...,
    ) -> Generator[str, None, EnsembleLike]: ...


SwapHook = Callable[[Any, EnsembleConfig], None]


def default_loader() -> Loader:
    """``stream_infer.models.load_ensemble``, imported on first use (it pulls in torch)."""
    from stream_infer.models import load_ensemble

    loader: Loader = load_ensemble
    return loader


def default_step_loader() -> StepLoader:
    """``stream_infer.models.load_ensemble_steps``, imported on first use (it pulls in torch)."""
    from stream_infer.models import load_ensemble_steps

    return cast(StepLoader, load_ensemble_steps)


def _one_step(loader: Loader) -> StepLoader:
    """A plain loader (a test's fake, a caller's own) as a StepLoader of one step."""

    def steps(
        model_dir: Path,
        *,
        device: str = "cpu",
        mamba_weight: float | None = None,
        ensemble_id: str = "file",
        version: str | None = None,
    ) -> Generator[str, None, EnsembleLike]:
        ensemble = loader(
            model_dir,
            device=device,
            mamba_weight=mamba_weight,
            ensemble_id=ensemble_id,
            version=version,
        )
        yield "load"
        return ensemble

    return steps


def load_checked(
    loader: Loader, config: EnsembleConfig, *, feature_version: int | None = None
) -> EnsembleLike:
    """Load the ensemble a configuration names and check it; ModelError/ConfigError if unfit.

    Blocking (torch, onnxruntime): call it in a worker thread. Checks: the loader's own
    (manifest, files, shapes), ``check()`` (finite, equal to the reference window), and
    agreement with what the row promises and with the feature spec the service computes.
    """
    return run_steps(load_checked_steps(_one_step(loader), config, feature_version=feature_version))


def load_checked_steps(
    loader: StepLoader, config: EnsembleConfig, *, feature_version: int | None = None
) -> Generator[str, None, EnsembleLike]:
    """``load_checked`` as a generator of steps (for ``BatchGate.run_steps``): the loader's
    steps, then ``check()`` and the comparisons with the row, in the last step."""
    model_dir = config.model_dir
    if model_dir is None:
        raise ConfigError("no model directory configured")
    ensemble = yield from loader(
        model_dir,
        device=config.device,
        mamba_weight=config.mamba_weight,
        ensemble_id=config.ensemble_id or "file",
        version=config.version,
    )
    ensemble.check()
    expected = {
        "feature_version": config.feature_version,
        "horizons": config.horizons,
        "seq_len": config.seq_len,
    }
    for name, want in expected.items():
        got = getattr(ensemble, name)
        if name == "horizons" and got is not None:
            got = tuple(int(h) for h in got)
        if want is not None and got != want:
            raise ModelError(
                f"the model's {name} is {got}, the active_ensembles row says {want}",
                version=config.version,
                path=str(model_dir),
            )
    if feature_version is not None and ensemble.feature_version != feature_version:
        raise ModelError(
            f"the model was trained on feature spec v{ensemble.feature_version}; this service "
            f"computes v{feature_version}",
            version=config.version,
            path=str(model_dir),
        )
    return ensemble


class Phase(Enum):
    """What the manager serves."""

    STARTING = "starting"  # ``initialize`` is making the first choice: a success is no reload
    ROW = "row"  # the active ``active_ensembles`` row's ensemble
    FALLBACK = "fallback"  # the environment/TOML configuration (or inference disabled)
    HOLDING = "holding"  # the active row's ensemble cannot be loaded (``held_row``)


@dataclass(frozen=True, slots=True)
class ManagerState:
    """The manager's state: its phase, and the active row that cannot be loaded (HOLDING, or
    STARTING after the row failed). While holding, a model is required: the service does
    not consume without one (the previous ensemble, if any, keeps serving)."""

    phase: Phase
    held_row: int | None = None


class ModelManager:
    """Holds the serving ensemble (``current``) and its configuration; swaps atomically.

    ``current`` is a plain reference: a reader takes it once per batch and uses that
    object for the whole batch, so a swap lands between two batches. ``on_swap`` hooks
    run before the reference changes; one that raises vetoes the swap (the old one stays).

    ``gate``: give it to the service (``Service(gate=manager.gate)``); a hot reload then
    loads one step per gap between two batches (``BatchGate``). Without a service holding
    it, each step only waits ``gate.quiet_s`` for a batch that never comes.

    ``state`` (``ManagerState``) changes only through its methods: ``finish_start`` (a
    manager made with ``starting=True``), ``hold`` / ``row_failed`` (the active row cannot
    be loaded) and ``swap`` (``reloaded=True`` after a successful hot reload ends a hold).
    """

    def __init__(
        self,
        config: EnsembleConfig,
        ensemble: Any | None = None,
        *,
        fallback: EnsembleConfig | None = None,
        loader: Loader | None = None,
        env: Mapping[str, str] | None = None,
        toml_path: str | Path | None = None,
        models_root: str | Path | None = None,
        feature_version: int | None = None,
        metrics: Any | None = None,
        gate: BatchGate | None = None,
        starting: bool = False,
    ) -> None:
        self._config = config
        self._current = ensemble
        self.fallback = fallback if fallback is not None else config
        self._loader = loader
        self.env = dict(os.environ if env is None else env)
        self.toml_path = toml_path
        self.models_root = models_root
        self.feature_version = feature_version
        self.metrics = metrics
        self._failed_ids: set[int] = set()
        self._state = ManagerState(Phase.STARTING) if starting else self._serving(None)
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_error: str | None = None
        self.swapped_at: float | None = None
        self._hooks: list[SwapHook] = []
        self._lock = threading.Lock()
        # One reload at a time: a NOTIFY and a poll must not load the same row twice.
        self.reload_lock = asyncio.Lock()
        self.gate = gate if gate is not None else BatchGate()

    @property
    def current(self) -> Any | None:
        """The serving ensemble, or None when inference is disabled."""
        return self._current

    # -- the state ------------------------------------------------------------------------

    @property
    def state(self) -> ManagerState:
        return self._state

    @property
    def started(self) -> bool:
        """False while ``initialize`` makes the first choice (a success then is no reload)."""
        return self._state.phase is not Phase.STARTING

    @property
    def unloadable_row(self) -> int | None:
        """The active row when its ensemble could not be loaded (None: it serves, or no row)."""
        return self._state.held_row

    @property
    def failed_ids(self) -> frozenset[int]:
        """Rows whose ensembles failed to load or check: not tried again until reactivated."""
        return frozenset(self._failed_ids)

    def _serving(self, held_row: int | None) -> ManagerState:
        if held_row is not None:
            return ManagerState(Phase.HOLDING, held_row)
        return ManagerState(Phase.ROW if self._config.row_id is not None else Phase.FALLBACK)

    def finish_start(self) -> None:
        """The first choice is made: from now on a swap is a reload."""
        if not self.started:
            self._state = self._serving(self._state.held_row)

    def hold(self, row_id: int) -> None:
        """The active row ``row_id`` cannot be loaded (it failed before): a model is required."""
        self._state = ManagerState(self._state.phase, row_id)
        if self.started:
            self._state = self._serving(row_id)

    def row_failed(self, row_id: int) -> None:
        """Loading the active row ``row_id`` failed: remember it and hold."""
        self._failed_ids.add(row_id)
        self.hold(row_id)

    def is_ready(self) -> bool:
        """True when a model is loaded and serving (the seed's ``manager.is_ready()``)."""
        return self._current is not None

    @property
    def config(self) -> EnsembleConfig:
        return self._config

    @property
    def active_row_id(self) -> int | None:
        """The ``active_ensembles.id`` being served (None: environment/TOML/disabled)."""
        return self._config.row_id

    @property
    def model_required(self) -> bool:
        """Whether a model should be serving: the configuration in force enables inference,
        or the active database row asks for one that could not be loaded. While this is true
        and ``current`` is None the service must not consume (it would commit candles it
        cannot predict)."""
        return self._config.enabled or self.unloadable_row is not None

    @property
    def loader(self) -> Loader:
        """The plain loader: the one given, else ``load_ensemble``."""
        return self._loader if self._loader is not None else default_loader()

    @property
    def step_loader(self) -> StepLoader:
        """The loader in steps: ``load_ensemble_steps``, or a given loader as one step."""
        return _one_step(self._loader) if self._loader is not None else default_step_loader()

    def on_swap(self, hook: SwapHook) -> None:
        """Call ``hook(ensemble, config)`` on every swap (e.g. the service's ``pipeline.swap``)."""
        self._hooks.append(hook)

    def swap(
        self, ensemble: Any | None, config: EnsembleConfig, *, reloaded: bool = False
    ) -> Any | None:
        """Make ``ensemble`` the serving one; returns the previous. Hooks may veto by raising.
        ``reloaded``: it is the active row's (or, with no row, the fallback's) own ensemble,
        which ends any hold."""
        with self._lock:
            for hook in self._hooks:
                hook(ensemble, config)
            old, self._current, self._config = self._current, ensemble, config
            self.swapped_at = time.monotonic()
            held = None if reloaded else self._state.held_row
            if self.started:
                self._state = self._serving(held)
            else:
                self._state = ManagerState(Phase.STARTING, held)
        if self.metrics is not None:
            self.metrics.set_ensemble(
                None if ensemble is None else str(config.ensemble_id),
                config.version,
                activated_at=config.activated_at,
            )
        log.info(
            "serving ensemble %s (version %s, from %s)",
            config.ensemble_id,
            config.version,
            config.source,
        )
        return old

    def resolve(self, row: ActiveRow | None) -> EnsembleConfig:
        return resolve_ensemble(
            row, env=self.env, toml_path=self.toml_path, models_root=self.models_root
        )

    def count(self, ok: bool, error: str | None = None) -> None:
        if ok:
            if not self.started:
                return  # the first load is not a reload
            self.reloads_ok += 1
        else:
            self.reloads_failed += 1
            self.last_error = error
        if self.metrics is not None:
            self.metrics.reloads.labels("ok" if ok else "failed").inc()

    async def load(self, config: EnsembleConfig) -> EnsembleLike:
        """``load_checked`` in a worker thread, so the event loop keeps serving meanwhile.

        Once serving (``started``), one step per gap between the service's batches
        (``gate``): a live batch then waits for at most one step of the load. The first
        load, at start, has no batches to protect and runs its steps back to back.
        """
        steps = load_checked_steps(self.step_loader, config, feature_version=self.feature_version)
        if self.started:
            return await self.gate.run_steps(steps)
        return await asyncio.to_thread(run_steps, steps)


async def _read_active(db: Database | asyncpg.Connection, timeout: float | None) -> Any:
    with db_errors("read the active ensemble"):
        async with asyncio.timeout(timeout):
            if isinstance(db, Database):
                async with db.acquire() as conn:
                    return await fetch_active(conn)
            return await fetch_active(db)


async def check_hot_reload(
    db: Database | asyncpg.Connection, manager: ModelManager, *, read_timeout: float | None = 10.0
) -> bool:
    """Swap in the active row's ensemble if it changed; True when a swap happened.

    DatabaseError when Postgres cannot be read (the caller retries). A row whose models do
    not load or check is logged, counted, remembered and left alone until another row is
    activated; the old ensemble keeps serving. No active row any more: back to the
    environment/TOML configuration resolved at start.
    """
    async with manager.reload_lock:
        row = await _read_active(db, read_timeout)
        target = None if row is None else row.id
        if target is not None and target in manager.failed_ids:
            manager.hold(target)
        if target == manager.active_row_id or (target is not None and target in manager.failed_ids):
            return False
        started = time.monotonic()
        try:
            config = manager.fallback if row is None else manager.resolve(row)
            if row is None:
                log.info("no active ensemble row any more: back to %s config", config.source)
            ensemble = await manager.load(config) if config.enabled else None
            old = manager.swap(ensemble, config, reloaded=True)
        except Exception as exc:
            # Whatever a bad row, file or hook raises (torch and onnxruntime have their own
            # errors): the old ensemble keeps serving and this row is not tried again.
            if target is not None:
                manager.row_failed(target)
            message = f"{type(exc).__name__}: {exc}"
            manager.count(False, message)
            log.error(
                "hot reload to ensemble row %s failed, the current one keeps serving: %s",
                target,
                message,
            )
            return False
        manager.count(True)
        log.info("hot reload to row %s done in %.0f ms", target, 1e3 * (time.monotonic() - started))
        if manager.started and old is not None:
            # The old ensemble goes in a turn between batches: destroying its TorchScript
            # module and ONNX Runtime session holds the GIL for 3-10 ms, and the service
            # would otherwise drop the last reference at the start of a batch.
            holder = [old]
            del old
            await manager.gate.release(holder)
        return True


async def initialize(
    db: Database | None,
    config_path: str | Path | None,
    *,
    settings: ServiceSettings | None = None,
    env: Mapping[str, str] | None = None,
    loader: Loader | None = None,
    feature_version: int | None = None,
    metrics: Any | None = None,
    db_timeout: float = 3.0,
) -> tuple[EnsembleConfig, ModelManager]:
    """Resolve the configuration, load the ensemble it names, return (config, manager).

    The database comes first. When it cannot be reached within ``db_timeout`` s, or its
    active row does not load, the environment/TOML configuration serves (the Reloader
    keeps trying the database in the background). A broken environment/TOML model is
    an error here (ModelError/ConfigError): it is the operator's own configuration.
    """
    settings = settings or ServiceSettings()
    env = os.environ if env is None else env
    models_root = settings.models_root
    fallback = resolve_ensemble(None, env=env, toml_path=config_path, models_root=models_root)
    manager = ModelManager(
        fallback,
        fallback=fallback,
        loader=loader,
        env=env,
        toml_path=config_path,
        models_root=models_root,
        feature_version=feature_version,
        metrics=metrics,
        starting=True,
    )
    if db is not None:
        try:
            await check_hot_reload(db, manager, read_timeout=db_timeout)
        except DatabaseError as exc:
            log.warning(
                "Postgres (%s) unavailable at start (%s); serving the %s configuration and "
                "retrying the database in the background",
                db.dsn,
                exc,
                fallback.source,
            )
    if manager.active_row_id is None and fallback.enabled and manager.current is None:
        manager.swap(await manager.load(fallback), fallback)
    manager.finish_start()
    log_ensemble_config(manager.config)
    return manager.config, manager

"""Everything a service process needs from Postgres, wired once: the ensemble chosen at
start, the background reloader, and the predictions sink."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stream_infer.config import EnsembleConfig, ServiceSettings
from stream_infer.db import Database, PredictionSink
from stream_infer.reload._gate import BatchGate
from stream_infer.reload._manager import Loader, ModelManager, initialize
from stream_infer.reload._reloader import Reloader

__all__ = ["EnsembleRuntime"]

log = logging.getLogger(__name__)


class EnsembleRuntime:
    """``async with EnsembleRuntime(settings) as rt:`` then give the service
    ``ensemble=rt.provider``, ``on_batch=rt.on_batch`` and ``gate=rt.gate``.

    Without ``DB_HOST`` there is no reloader and no sink: the environment/TOML ensemble
    serves (or none). With it: ``initialize`` (database first, falls back when it is down),
    a ``Reloader`` (LISTEN + polling every ``ML_RELOAD_POLL_S``), and, with
    ``DB_WRITE_PREDICTIONS=true``, a ``PredictionSink``.
    """

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        *,
        config_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        loader: Loader | None = None,
        metrics: Any | None = None,
        feature_version: int | None = None,
        listen: bool = True,
    ) -> None:
        self.settings = settings or ServiceSettings()
        self.config_path = config_path if config_path is not None else self.settings.config_path
        self.env = env
        self.loader = loader
        self.metrics = metrics
        self.feature_version = feature_version
        self.listen = listen
        self.db: Database | None = Database(self.settings.db) if self.settings.db.enabled else None
        self.config: EnsembleConfig | None = None
        self.manager: ModelManager | None = None
        self.reloader: Reloader | None = None
        self.sink: PredictionSink | None = None

    async def start(self) -> EnsembleRuntime:
        self.config, self.manager = await initialize(
            self.db,
            self.config_path,
            settings=self.settings,
            env=self.env,
            loader=self.loader,
            feature_version=self.feature_version,
            metrics=self.metrics,
        )
        if self.db is not None:
            self.reloader = Reloader(
                self.db, self.manager, poll_s=self.settings.reload_poll_s, listen=self.listen
            )
            self.reloader.start()
            if self.settings.db.write_predictions:
                self.sink = PredictionSink(self.db, max_queue=self.settings.db.sink_max_queue)
                self.sink.start()
        return self

    @property
    def current(self) -> Any | None:
        return None if self.manager is None else self.manager.current

    def model_required(self) -> bool:
        """Whether a model should serve (``ModelManager.model_required``): for /readyz and for
        the service, which pauses consumption while one is required and none is loaded."""
        return self.manager is not None and self.manager.model_required

    def collect_metrics(self) -> Iterator[Any]:
        """The sink's and the reloader's counters as Prometheus families (``Metrics.add_callback``)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.sink is not None:
            st = self.sink.stats()
            rows = CounterMetricFamily(
                "stream_infer_sink_rows",
                "Predictions the Postgres sink wrote, found already there, dropped or had refused.",
                labels=["result"],
            )
            for result, key in (
                ("written", "written"),
                ("duplicate", "duplicates"),
                ("dropped", "dropped"),
                ("rejected", "rejected"),
            ):
                rows.add_metric([result], st[key])
            yield rows
            yield CounterMetricFamily(
                "stream_infer_sink_failed_batches",
                "Sink write attempts that failed (the batch is retried).",
                value=st["failed_batches"],
            )
            yield GaugeMetricFamily(
                "stream_infer_sink_pending",
                "Predictions held, not yet written.",
                value=st["pending"],
            )
        if self.reloader is not None:
            yield CounterMetricFamily(
                "stream_infer_db_reconnects",
                "Times the reloader re-opened its Postgres connection.",
                value=self.reloader.reconnects,
            )

    @property
    def gate(self) -> BatchGate | None:
        """For ``Service(gate=...)``: a hot reload loads one step per gap between batches
        (``BatchGate``). None before ``start``."""
        return None if self.manager is None else self.manager.gate

    @property
    def provider(self) -> Callable[[], Any | None]:
        """For ``Service(ensemble=...)``: read once per batch, so a swap lands between batches."""
        return lambda: self.current

    def on_batch(self, result: Any) -> None:
        """For ``Service(on_batch=...)``: hands the batch's predictions to the sink (never waits)."""
        if self.sink is not None and result.predictions:
            self.sink.offer(result.predictions)

    async def close(self, timeout: float = 5.0) -> None:
        if self.reloader is not None:
            await self.reloader.stop()
        if self.sink is not None:
            await self.sink.close(timeout)
            log.info("predictions sink: %s", self.sink.stats())
        if self.db is not None:
            await self.db.close()

    async def __aenter__(self) -> EnsembleRuntime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

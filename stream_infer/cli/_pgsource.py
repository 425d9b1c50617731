"""Predictions from the Postgres ``candles`` table: ``stream-infer predict`` (one library
call) and the serving side of ``stream-infer run --source postgres``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from stream_infer._errors import ConfigError, DatabaseError, ModelError
from stream_infer.cli._app import app

log = logging.getLogger("stream_infer.pgsource")


def _models_env(models: Path | None) -> dict[str, str]:
    """``--models DIR`` as the environment level of the configuration, so that an active
    database row still wins (docs/postgres.md, "Start-up")."""
    env = dict(os.environ)
    if models is not None:
        if not models.is_dir():
            raise ConfigError(f"no ensemble directory at {models}", path=str(models))
        env["ML_LGBM_MODELS_DIR"] = str(models.resolve())
        # named as `run --models` and `replay` name it: file:<manifest version>
        try:
            version = orjson.loads((models / "manifest.json").read_bytes()).get("version")
        except (OSError, ValueError, AttributeError):
            version = None  # the loader names the problem
        if version:
            env.setdefault("ML_ENSEMBLE_VERSION", str(version))
    return env


@app.command()
def predict(
    symbol: Annotated[
        str | None, typer.Option("--symbol", help="only this symbol's stream (default: all)")
    ] = None,
    interval: Annotated[str, typer.Option("--interval", help="the streams' interval")] = "1m",
    write: Annotated[
        bool, typer.Option("--write", help="also store the predictions in the predictions table")
    ] = False,
    models: Annotated[
        Path | None,
        typer.Option(
            "--models",
            help="the ensemble directory when no database row is active (the ML_* level); "
            "default: the configuration (active_ensembles row, ML_* variables, TOML file)",
        ),
    ] = None,
) -> None:
    """Predict the newest candle of each stream in the candles table at DB_HOST (or of
    --symbol): one run_inference_pipeline call. JSON lines on stdout, one prediction each;
    streams that cannot predict and refused rows on stderr with their reason."""
    from stream_infer.cli._service import _service_settings
    from stream_infer.db import Database
    from stream_infer.events import encode_prediction
    from stream_infer.pgsource import InferenceResult, run_inference_pipeline
    from stream_infer.reload import initialize

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = _service_settings()
    if not settings.db.enabled:
        raise ConfigError("predict reads the candles table: set DB_HOST (and DB_NAME, ...)")
    env = _models_env(models)

    async def main() -> InferenceResult:
        db = Database(settings.db)
        try:
            _, manager = await initialize(db, settings.config_path, settings=settings, env=env)
            if not manager.is_ready():
                raise ModelError(
                    "no model is configured: activate an ensemble, set ML_* or pass --models DIR"
                )
            return await run_inference_pipeline(db, manager, symbol, interval, write)
        finally:
            await db.close()

    result = asyncio.run(main())
    out = sys.stdout.buffer
    out.write(b"".join(encode_prediction(p) + b"\n" for p in result.predictions))
    out.flush()
    for skipped in result.skipped:
        typer.echo(f"skipped: {skipped}", err=True)
    for row in result.rejected:
        typer.echo(f"rejected: {row}", err=True)
    written = "" if result.written is None else f"; {result.written} new rows in predictions"
    typer.echo(
        f"{len(result.predictions)} predictions in {result.latency_ms:.1f} ms, "
        f"{len(result.skipped)} streams skipped, {len(result.rejected)} rows rejected{written}",
        err=True,
    )


async def serve_postgres(
    settings: Any,
    static: Any,
    *,
    configured: bool,
    bootstrap: str | None,
    metrics_host: str = "0.0.0.0",
) -> None:
    """``run --source postgres``: ``PostgresSource`` with hot reload (``EnsembleRuntime``)
    when the configuration decides the models, a topic publisher when a broker is named,
    and /healthz, /readyz (the source's lock held and a model serving) with a port."""
    import signal

    from stream_infer.config import PostgresSourceSettings
    from stream_infer.db import SCHEMA_VERSION, Database, db_errors, schema_version
    from stream_infer.ops import Metrics, OpsServer
    from stream_infer.pgsource import PostgresSource, TopicPublisher
    from stream_infer.pipeline import Pipeline

    source_settings = PostgresSourceSettings()
    async with contextlib.AsyncExitStack() as stack:
        db = Database(settings.db, max_size=2, connect_timeout=3.0)
        stack.push_async_callback(db.close)
        await db.wait_ready(timeout=60.0)
        with db_errors("read the schema version"):
            async with db.acquire() as conn:
                version = await schema_version(conn)
        if version < SCHEMA_VERSION:
            raise DatabaseError(
                f"{db.dsn} is at schema version {version}, the Postgres source needs "
                f"{SCHEMA_VERSION} (its cursors and the candles trigger): run "
                "`stream-infer db migrate`"
            )
        metrics = Metrics()
        provider: Any = None
        gate: Any = None
        ensemble = static
        model_required: Any = static is not None
        if configured:
            from stream_infer.reload import EnsembleRuntime

            rt = await stack.enter_async_context(EnsembleRuntime(settings, metrics=metrics))
            provider, gate, ensemble = rt.provider, rt.gate, rt.current
            model_required = rt.model_required
        publish: Any = None
        if bootstrap:
            publish = TopicPublisher(settings.kafka, bootstrap)
            await publish.start()
            stack.push_async_callback(publish.stop)
        source = PostgresSource(
            db, Pipeline(ensemble), source_settings, ensemble=provider, gate=gate, publish=publish
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, source.request_stop)
        if settings.metrics_port is not None:

            def ready() -> bool:
                required = model_required() if callable(model_required) else model_required
                serving = provider() if provider is not None else ensemble
                return source.locked.is_set() and (serving is not None or not required)

            ops = OpsServer(metrics, ready, host=metrics_host, port=settings.metrics_port)
            await ops.start()
            stack.push_async_callback(ops.close)
        log.info(
            "stream-infer run --source postgres: candles at %s -> predictions%s; source %s "
            "(start=%s, poll %.3g s); ensemble %s",
            db.dsn,
            f" and topic {settings.kafka.kafka_predictions_topic} at {bootstrap}"
            if bootstrap
            else "",
            source_settings.name,
            source_settings.start,
            source_settings.poll_s,
            "disabled" if ensemble is None else f"{ensemble.ensemble_id}@{ensemble.version}",
        )
        started = time.monotonic()
        await source.run()
        log.info(
            "stream-infer run --source postgres: done after %.1f s", time.monotonic() - started
        )

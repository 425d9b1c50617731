"""Commands of the Kafka edge: ``run`` (the service), ``produce`` (replay klines) and ``broker``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stream_infer._errors import ConfigError
from stream_infer.cli._app import app

if TYPE_CHECKING:
    from stream_infer.config import ServiceSettings
    from stream_infer.db import PostgresHistory
    from stream_infer.models import Ensemble
    from stream_infer.reload import EnsembleRuntime

log = logging.getLogger("stream_infer.service")

_TOPICS_HELP = "create the candles, predictions and candles.dlq topics with N partitions if missing"


def _install_stop(loop: asyncio.AbstractEventLoop, stop: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)


def _event_loop() -> None:
    """uvloop when it is installed (lower per-hop latency, see docs/service.md)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class BrokerKind(StrEnum):
    tansu = "tansu"
    apache = "apache"


@app.command()
def broker(
    kafka: Annotated[
        BrokerKind,
        typer.Option(
            help="tansu: the embedded in-memory broker (zero setup); apache: Apache Kafka "
            "in KRaft mode (Java 17+; KAFKA_HOME, or its jars fetched once with Maven)"
        ),
    ] = BrokerKind.tansu,
    nodes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Apache Kafka nodes (each broker + controller); 3 or more: replication "
            "factor 3, min.insync.replicas 2",
        ),
    ] = 1,
    port: Annotated[
        int, typer.Option(help="TCP port on 127.0.0.1 (tansu only); 0 picks a free one")
    ] = 0,
    partitions: Annotated[int, typer.Option(help=_TOPICS_HELP)] = 0,
    verbose: Annotated[bool, typer.Option(help="show the broker's own log (tansu)")] = False,
) -> None:
    """Start a Kafka broker on loopback until Ctrl-C / SIGTERM, then stop every process it started.

    Prints the bootstrap address on its own line once the broker (every node) answers.
    """
    from stream_infer.config import KafkaSettings
    from stream_infer.kafka import KAFKA_VERSION, ApacheKafka, EmbeddedBroker, create_topics

    if kafka is BrokerKind.apache:
        if port:
            raise ConfigError("--port applies to --kafka tansu; Apache Kafka picks free ports")
        started: ApacheKafka | EmbeddedBroker = ApacheKafka(nodes)
    else:
        if nodes != 1:
            raise ConfigError("--nodes applies to --kafka apache; Tansu runs one node")
        started = EmbeddedBroker(port or None, log=None if verbose else subprocess.DEVNULL)

    async def main() -> None:
        stop = asyncio.Event()
        _install_stop(asyncio.get_running_loop(), stop.set)
        if partitions > 0:
            s = KafkaSettings()
            await create_topics(
                started.bootstrap,
                dict.fromkeys(
                    (s.kafka_candles_topic, s.kafka_predictions_topic, s.kafka_dlq_topic),
                    partitions,
                ),
                replication=3 if nodes >= 3 else 1,
            )
        print(started.bootstrap, flush=True)
        if isinstance(started, ApacheKafka):
            what = f"Apache Kafka {KAFKA_VERSION}, {nodes} node(s), pids {started.pids()}"
        else:
            what = f"embedded broker (pid {started.pid})"
        print(f"{what}; Ctrl-C stops it", file=sys.stderr)
        await stop.wait()

    # Started from the main thread: the brokers' parent-death signal is tied to the thread
    # that forked them, so a worker thread that ends would stop them.
    try:
        started.start()
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        started.stop()


@app.command()
def produce(
    files: Annotated[list[Path], typer.Argument(help="klines files (.csv or .csv.gz)")],
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS]")
    ] = None,
    topic: Annotated[str | None, typer.Option(help="[env KAFKA_CANDLES_TOPIC]")] = None,
    rate: Annotated[
        float | None, typer.Option(help="candles per second; default: as fast as possible")
    ] = None,
    interleave: Annotated[
        bool, typer.Option(help="merge the files by open_time, like a live feed")
    ] = True,
    limit: Annotated[int | None, typer.Option(help="first N candles of each file")] = None,
    partitions: Annotated[
        int, typer.Option(help="create the topic with N partitions if missing")
    ] = 0,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Replay klines files onto the candles topic as Candle JSON events keyed by symbol."""
    from stream_infer.config import KafkaSettings
    from stream_infer.kafka import client_kwargs, create_topics, produce_files

    if rate is not None and rate <= 0:
        raise ConfigError("--rate must be > 0")
    s = KafkaSettings()
    server = bootstrap or s.kafka_bootstrap_servers
    name = topic or s.kafka_candles_topic
    client = {k: v for k, v in client_kwargs(s, server).items() if k != "bootstrap_servers"}

    async def main() -> int:
        if partitions > 0:
            await create_topics(server, {name: partitions}, client=client)
        return await produce_files(
            server,
            name,
            files,
            rate=rate,
            interleave=interleave,
            limit=limit,
            client=client,
            progress=progress and sys.stderr.isatty(),
        )

    n = asyncio.run(main())
    print(f"produced {n} candles to {name} at {server}")


@app.command()
def run(
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS]")
    ] = None,
    models: Annotated[
        Path | None,
        typer.Option(
            help="serve this ensemble directory (e.g. artifacts/ensemble-v1); without it the "
            "configuration decides: Postgres active_ensembles, then ML_* variables, then the "
            "TOML file, else inference disabled (hot reload from Postgres when DB_HOST is set)"
        ),
    ] = None,
    no_models: Annotated[
        bool, typer.Option("--no-models", help="inference disabled: validate and dead-letter only")
    ] = False,
    group: Annotated[str | None, typer.Option(help="consumer group [env KAFKA_GROUP_ID]")] = None,
    fetch_max_wait_ms: Annotated[
        int | None, typer.Option(help="[env KAFKA_FETCH_MAX_WAIT_MS, default 5]")
    ] = None,
    session_timeout_ms: Annotated[
        int, typer.Option(help="a member silent this long is dropped from the group")
    ] = 10_000,
    partitions: Annotated[int, typer.Option(help=_TOPICS_HELP)] = 0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="serve /metrics, /healthz and /readyz on this port (0 picks a free one and "
            "logs it) [env METRICS_PORT]"
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="address the metrics server binds")] = "0.0.0.0",
    log_format: Annotated[
        str | None, typer.Option(help="plain or json [env LOG_FORMAT, default plain]")
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="debug, info, warning or error (debug includes aiokafka's)")
    ] = "info",
    history_source: Annotated[
        str | None,
        typer.Option(
            help="where stream state is rebuilt from on start and rebalance: kafka (the input "
            "topic) or postgres (the candles table at DB_HOST, per stream; the topic for "
            "streams it does not cover) [env HISTORY_SOURCE, default kafka]"
        ),
    ] = None,
    source: Annotated[
        str,
        typer.Option(
            help="where candles come from: kafka (the candles topic) or postgres (the candles "
            "table at DB_HOST, watched with LISTEN/NOTIFY and polling; predictions go to the "
            "predictions table, and to the topic when --bootstrap or KAFKA_BOOTSTRAP_SERVERS "
            "is set; PG_SOURCE_* variables, docs/postgres.md)"
        ),
    ] = "kafka",
) -> None:
    """The service: candles topic -> features -> ensemble -> predictions topic (at-least-once).
    With --source postgres: the candles table -> the same core -> the predictions table.

    Waits for the broker when it cannot be reached at start (not ready meanwhile). Stops on
    SIGTERM / SIGINT after publishing and committing what is in flight, and logs one summary
    line.
    """
    from stream_infer.ops import configure_logging

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    if log_format is not None and log_format not in ("plain", "json"):
        raise ConfigError(f"--log-format must be plain or json, not {log_format!r}")
    if source not in ("kafka", "postgres"):
        raise ConfigError(f"--source must be kafka or postgres, not {source!r}")
    if history_source is not None and history_source not in ("kafka", "postgres"):
        raise ConfigError(f"--history-source must be kafka or postgres, not {history_source!r}")
    settings = _service_settings()
    if metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": metrics_port})
    if history_source is not None:
        settings = settings.model_copy(update={"history_source": history_source})
    if settings.history_source == "postgres" and not settings.db.enabled:
        raise ConfigError(
            "HISTORY_SOURCE=postgres needs a database: set DB_HOST (and DB_NAME, ...)"
        )
    if source == "postgres" and not settings.db.enabled:
        raise ConfigError("--source postgres needs a database: set DB_HOST (and DB_NAME, ...)")
    overrides: dict[str, Any] = {}
    if bootstrap:
        overrides["kafka_bootstrap_servers"] = bootstrap
    if group:
        overrides["kafka_group_id"] = group
    if fetch_max_wait_ms is not None:
        overrides["kafka_fetch_max_wait_ms"] = fetch_max_wait_ms
    if overrides:
        settings = settings.model_copy(
            update={"kafka": settings.kafka.model_copy(update=overrides)}
        )
    configure_logging(log_format or settings.log_format, level)  # type: ignore[arg-type]
    if level == "DEBUG":
        logging.getLogger("aiokafka").setLevel(logging.DEBUG)
    if not no_models:
        from stream_infer.models import tune_malloc

        tune_malloc()  # batched model calls without page faults per call (speed only)
    static: Ensemble | None = None
    if models is not None and not no_models:
        static = _load_models(models, settings.ml_device)
    _event_loop()
    _freeze_gc()
    if source == "postgres":
        from stream_infer.cli._pgsource import serve_postgres

        publish_to = bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None
        asyncio.run(
            serve_postgres(
                settings,
                static,
                configured=models is None and not no_models,
                bootstrap=publish_to,
                metrics_host=metrics_host,
            )
        )
        return
    asyncio.run(
        _serve(
            settings,
            static,
            configured=models is None and not no_models,
            partitions=partitions,
            session_timeout_ms=session_timeout_ms,
            metrics_host=metrics_host,
        )
    )


def _freeze_gc() -> None:
    """Move what start-up allocated (torch, pandas, the models) out of the collector's view.

    A full collection of this process walks millions of long-lived objects: 150-210 ms with
    the GIL held (measured across a hot reload), a stall every stream would see. Frozen,
    full collections only walk what was allocated since.
    """
    import gc

    gc.collect()
    gc.freeze()


def _service_settings() -> Any:
    """``ServiceSettings()``, a bad environment value as one ConfigError line."""
    from pydantic import ValidationError

    from stream_infer.config import ServiceSettings

    try:
        return ServiceSettings()
    except ValidationError as exc:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad setting: {bad}") from None


def _load_models(path: Path, device: str) -> Ensemble:
    if not path.exists():
        raise ConfigError(
            f"no ensemble at {path}: pass --models DIR (or --no-models to run without inference)",
            path=str(path),
        )
    from stream_infer.config import file_ensemble_id, manifest_version
    from stream_infer.models import load_ensemble

    # Named as replay and the configuration name a file-configured ensemble: file:<version>.
    ensemble_id = file_ensemble_id(manifest_version(path))
    return load_ensemble(path, device=device, ensemble_id=ensemble_id)


async def _serve(
    settings: ServiceSettings,
    static: Ensemble | None,
    *,
    configured: bool,
    partitions: int,
    session_timeout_ms: int,
    metrics_host: str = "0.0.0.0",
) -> None:
    from stream_infer.kafka import ServiceOptions, build_service, create_topics
    from stream_infer.ops import Metrics, OpsServer

    kafka = settings.kafka
    if partitions > 0:
        await create_topics(
            kafka.kafka_bootstrap_servers,
            dict.fromkeys(
                (kafka.kafka_candles_topic, kafka.kafka_predictions_topic, kafka.kafka_dlq_topic),
                partitions,
            ),
        )
    async with contextlib.AsyncExitStack() as stack:
        metrics = Metrics()
        runtime: EnsembleRuntime | None = None
        if configured:
            from stream_infer.reload import EnsembleRuntime

            runtime = await stack.enter_async_context(EnsembleRuntime(settings, metrics=metrics))
            metrics.add_callback(runtime.collect_metrics)
        ensemble = static if runtime is None else runtime.current
        stream_history: PostgresHistory | None = None
        if settings.history_source == "postgres":
            from stream_infer.db import Database, PostgresHistory

            # A pool of its own: a rebuild's query never waits behind the sink or the reloader.
            db = Database(settings.db, max_size=2, connect_timeout=3.0)
            stack.push_async_callback(db.close)
            stream_history = PostgresHistory(db)
        service = build_service(
            kafka,
            static,
            reload=runtime,
            metrics=metrics,
            stream_history=stream_history,
            options=ServiceOptions(
                session_timeout_ms=session_timeout_ms,
                start_timeout_s=None,  # a service waits for its broker (not ready meanwhile)
            ),
        )
        _install_stop(asyncio.get_running_loop(), service.request_stop)
        if settings.metrics_port is not None:
            ops = OpsServer(
                metrics, lambda: service.serving, host=metrics_host, port=settings.metrics_port
            )
            await ops.start()
            stack.push_async_callback(ops.close)
        log.info(
            "stream-infer run: %s -> %s (dlq %s), group %s, fetch_max_wait_ms=%d, ensemble %s, "
            "history from %s",
            kafka.kafka_candles_topic,
            kafka.kafka_predictions_topic,
            kafka.kafka_dlq_topic,
            kafka.kafka_group_id,
            kafka.kafka_fetch_max_wait_ms,
            "disabled" if ensemble is None else f"{ensemble.ensemble_id}@{ensemble.version}",
            "the topic"
            if stream_history is None
            else f"{stream_history}, the topic for streams it does not cover",
        )
        # Said at start, not only at the first assignment: Postgres down means the topic.
        await service.check_history()
        await service.run()

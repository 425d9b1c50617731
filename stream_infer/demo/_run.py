"""The demo, end to end: embedded broker, bundled candles, the service in-process, a live view.

Order of work (each step's cleanup is registered the moment it has something to clean):
broker -> topics -> ensemble (file, or Postgres with a hot reload mid-run) -> service task
-> predictions consumer -> producer: a history prefix as fast as possible, then the live
part at ``speed`` candles/s per symbol -> drain -> stop everything -> summary, JSONL, PNG.
Ctrl-C (SIGINT) or SIGTERM stops the feed early and still cleans up and reports; a second
one cancels at once (cleanup still runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from stream_infer._artifacts import MANIFEST_FILE
from stream_infer._errors import BrokerError, ConfigError, DecodeError
from stream_infer.config._ensemble import manifest_version
from stream_infer.demo._chart import write_chart
from stream_infer.demo._data import SymbolFeed, bundled_klines, default_models_dir, load_feeds
from stream_infer.demo._state import DemoState, DemoSummary
from stream_infer.demo._view import Header, View, plain_symbol_line

if TYPE_CHECKING:
    from rich.console import Console

    from stream_infer.config import KafkaSettings, ServiceSettings
    from stream_infer.db import Database, EnsembleRow
    from stream_infer.kafka import Service
    from stream_infer.models import Ensemble
    from stream_infer.reload import EnsembleRuntime

__all__ = ["QUICK", "DemoOptions", "DemoResult", "main", "run_demo"]

log = logging.getLogger("stream_infer.demo")

CHART_FILE = "demo-chart.png"
PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class DemoOptions:
    """What ``stream-infer demo`` was asked for (see docs/demo.md)."""

    duration_s: float = 60.0  # of the live part, after the history prefix
    speed: float = 20.0  # candles per second per symbol in the live part
    symbols: tuple[str, ...] = ()  # () = every bundled symbol
    max_symbols: int | None = None
    out_dir: Path = Path("demo-out")
    models_dir: Path | None = None
    data_dir: Path | None = None
    prefix: int = 500  # candles per symbol sent at once first (>= ready_candles(seq_len))
    live_view: bool | None = None  # None: a rich live table when stdout is a terminal
    use_db: bool | None = None  # None: Postgres config when DB_HOST is set
    reload_after_s: float | None = None  # Postgres: activate version B then (None: half-way)
    drain_timeout_s: float = 20.0
    progress_every_s: float = 2.0  # plain view
    verbose: bool = False


QUICK = DemoOptions(duration_s=8.0, speed=25.0, max_symbols=3)
"""``--quick`` (CI): three symbols, 8 s of live candles; about 20 s in all."""


@dataclass
class DemoResult:
    summary: DemoSummary
    out_dir: Path
    chart: Path | None
    predictions: Path
    summary_json: Path
    broker_pid: int | None
    interrupted: bool = False
    reload_row: int | None = None
    notes: list[str] = field(default_factory=list)


def _print(line: str) -> None:
    print(line, flush=True)


async def run_demo(
    opts: DemoOptions,
    *,
    console: Console | None = None,
    stop: asyncio.Event | None = None,
) -> DemoResult:
    """Run the demo; returns once everything it started has stopped."""
    from rich.console import Console

    console = console or Console(highlight=False)
    stop = stop or asyncio.Event()
    live = console.is_terminal if opts.live_view is None else opts.live_view
    use_db = _db_configured() if opts.use_db is None else opts.use_db

    models_dir = (opts.models_dir or default_models_dir()).expanduser()
    if not (models_dir / MANIFEST_FILE).is_file():
        raise ConfigError(
            f"no ensemble at {models_dir} (manifest.json missing): pass --models DIR",
            path=str(models_dir),
        )
    if opts.speed <= 0 or opts.duration_s < 0 or opts.prefix < 0:
        raise ConfigError("--speed must be > 0, --duration and --prefix >= 0")
    files = bundled_klines(opts.data_dir)
    symbols = list(dict.fromkeys(opts.symbols)) or list(files)
    if opts.max_symbols is not None:
        symbols = symbols[: opts.max_symbols]
    # Postgres: the feed may run on until the reloaded version predicts (30 s at most).
    extra = 30.0 if use_db else 0.0
    limit = opts.prefix + math.ceil(opts.speed * (opts.duration_s + extra)) + 1
    feeds = await asyncio.to_thread(load_feeds, files, symbols, limit)
    state = DemoState([(f.symbol, f.interval) for f in feeds])
    out_dir = opts.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in feeds:
        _print(f"data: {f.symbol} {f.interval} {len(f.candles)} candles from {f.path}")

    clock = time.perf_counter
    header = Header(speed=opts.speed, config="")
    view = View(console, state, header, live=live, every_s=opts.progress_every_s)
    interrupted = False
    reload_row: int | None = None
    broker_pid: int | None = None
    summary_json = out_dir / SUMMARY_FILE
    preds_path = out_dir / PREDICTIONS_FILE

    async with contextlib.AsyncExitStack() as stack:
        from stream_infer.config import KafkaSettings
        from stream_infer.kafka import EmbeddedBroker, create_topics

        # Started synchronously (milliseconds): no cancellation can land between the
        # process starting and its stop being registered.
        broker = EmbeddedBroker()
        stack.callback(_stop_broker, broker)
        bootstrap = broker.start()
        broker_pid = broker.pid
        header.broker = f"pid {broker_pid} at {bootstrap}"
        _print(f"broker: embedded Tansu pid={broker_pid} at {bootstrap}")
        kafka = KafkaSettings(
            kafka_bootstrap_servers=bootstrap,
            kafka_candles_topic="candles",
            kafka_predictions_topic="predictions",
            kafka_dlq_topic="candles.dlq",
            kafka_group_id="stream-infer-demo",
        )
        await create_topics(
            bootstrap,
            {
                kafka.kafka_candles_topic: 1,
                kafka.kafka_predictions_topic: 1,
                kafka.kafka_dlq_topic: 1,
            },
        )

        ensemble: Any
        if use_db:
            db_ctx = await _db_setup(stack, models_dir)
            header.config = f"postgres {db_ctx.db.dsn} (hot reload on)"
            ensemble = db_ctx.runtime.current
        else:
            db_ctx = None
            ensemble = await asyncio.to_thread(_load_file_ensemble, models_dir)
            header.config = f"file {models_dir}"
            _print(f"config: file {models_dir} (set DB_HOST for Postgres config and hot reload)")
        _print(
            f"models: {models_dir} ensemble_id={ensemble.ensemble_id} version={ensemble.version} "
            f"horizons={list(ensemble.horizons)} seq_len={ensemble.seq_len}"
        )

        from stream_infer.pipeline import first_prediction_index

        service, service_task = await _start_service(
            stack, kafka, ensemble if db_ctx is None else None, db_ctx
        )
        # A stream's first prediction: this candle index (0-based; Pipeline's readiness rule).
        first_index = first_prediction_index(
            ensemble.seq_len if ensemble is not None else service.pipeline.keep_rows
        )
        _print(
            f"service: in-process consumer group {kafka.kafka_group_id}, "
            f"fetch_max_wait_ms={kafka.kafka_fetch_max_wait_ms}; first prediction per symbol "
            f"at candle {first_index + 1}"
        )

        preds_file = stack.enter_context(preds_path.open("wb"))
        reader = await _start_consumer(stack, kafka, state, service, preds_file, clock)

        def check() -> None:
            """Raise if the broker, the service or the reader ended on its own."""
            if not broker.running():
                raise BrokerError(f"the embedded broker (pid {broker_pid}) exited during the demo")
            for task, what in ((service_task, "the service"), (reader, "the predictions reader")):
                if task.done():
                    exc = None if task.cancelled() else task.exception()
                    if exc is not None:
                        raise exc
                    raise BrokerError(f"{what} stopped unexpectedly")

        from stream_infer.kafka import make_producer

        producer = make_producer(bootstrap)
        await producer.start()
        stack.push_async_callback(_quietly, producer.stop, timeout=5.0)

        view_task = asyncio.create_task(view.run(), name="demo-view")
        stack.push_async_callback(_cancel, view_task)
        stack.enter_context(view)

        reload: asyncio.Task[EnsembleRow] | None = None

        async def start_reload() -> None:
            nonlocal reload
            if db_ctx is not None and reload is None:
                reload = asyncio.create_task(db_ctx.activate_b(view.note), name="demo-reload")
                stack.push_async_callback(_cancel, reload)

        def reload_seen() -> bool:
            """No reload to show, version B has predicted, or activating it failed."""
            if db_ctx is None:
                return True
            if reload is None:
                return False
            failed = reload.done() and (reload.cancelled() or reload.exception() is not None)
            return failed or db_ctx.version_b in state.per_version

        reload_after = (
            opts.reload_after_s if opts.reload_after_s is not None else opts.duration_s / 2
        )
        feed = asyncio.create_task(
            _feed(
                producer,
                kafka.kafka_candles_topic,
                feeds,
                state,
                opts,
                stop,
                clock,
                on_live_tick=lambda elapsed: start_reload() if elapsed >= reload_after else None,
                done=reload_seen,
                extra_s=extra,
            ),
            name="demo-feed",
        )
        stack.push_async_callback(_cancel, feed)
        await _watch(feed, check)
        interrupted = stop.is_set()
        if not interrupted:
            state.phase = "draining"
            deadline = time.monotonic() + opts.drain_timeout_s
            while not state.caught_up(first_index) and time.monotonic() < deadline:
                check()
                if stop.is_set():
                    break
                await asyncio.sleep(0.05)
            interrupted = stop.is_set()
        if reload is not None and reload.done() and not reload.cancelled():
            if reload.exception() is None:
                reload_row = reload.result().id
            else:
                view.note(f"db: activating version B failed: {reload.exception()}")
        state.phase = "stopping" if not interrupted else "interrupted"
        # Stop the service first: what it still has in flight is published and committed,
        # and the reader gets a moment to show it.
        await _stop_service(service, service_task)
        if not interrupted:
            await asyncio.sleep(0.3)
        view.flush()
    # Everything started above is stopped here (the exit stack ran in reverse order).
    state.candles_processed = service.stats.candles
    state.dead_letters = service.stats.dead_letters
    summary = state.summary()
    chart: Path | None = None
    try:
        title = f"stream_infer demo · {len(feeds)} symbols · ensemble " + " -> ".join(
            state.per_version or {"-": 0}
        )
        chart = await asyncio.to_thread(write_chart, state, out_dir / CHART_FILE, title=title)
    except Exception as exc:  # a chart must not hide the summary
        log.exception("writing the chart failed")
        _print(f"chart: not written ({type(exc).__name__}: {exc})")
    result = DemoResult(
        summary=summary,
        out_dir=out_dir,
        chart=chart,
        predictions=preds_path,
        summary_json=summary_json,
        broker_pid=broker_pid,
        interrupted=interrupted,
        reload_row=reload_row,
    )
    summary_json.write_bytes(
        orjson.dumps(
            {
                **summary.as_dict(),
                "interrupted": interrupted,
                "broker_pid": broker_pid,
                "broker_running": broker_pid is not None and _alive(broker_pid),
                "chart": str(chart) if chart else None,
                "version_changes": state.version_changes,
                "options": {k: str(v) for k, v in opts.__dict__.items()},
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    _report(result, state)
    return result


# -- steps ------------------------------------------------------------------------------


def _db_configured() -> bool:
    from stream_infer.config import DatabaseSettings

    return bool(DatabaseSettings().host)


def _load_file_ensemble(models_dir: Path) -> Any:
    """As ``stream-infer run --models`` loads it: ensemble_id ``file:<version>``."""
    from stream_infer.config import ServiceSettings, file_ensemble_id, manifest_version
    from stream_infer.models import load_ensemble

    ens = load_ensemble(
        models_dir,
        device=ServiceSettings().ml_device,
        ensemble_id=file_ensemble_id(manifest_version(models_dir)),
    )
    ens.check()
    return ens


@dataclass
class _DbContext:
    runtime: EnsembleRuntime
    db: Database
    settings: ServiceSettings
    models_dir: Path
    version_a: str
    version_b: str

    async def activate_b(self, note: Callable[[str], None]) -> EnsembleRow:
        from stream_infer.reload import activate

        note(f"db: activating {self.models_dir} again as version {self.version_b}")
        row = await activate(
            self.db,
            self.models_dir,
            version=self.version_b,
            models_root=self.settings.models_root,
            device=self.settings.ml_device,
        )
        note(f"db: row {row.id} (version {row.version}) is active; the service hot-reloads it")
        return row


async def _db_setup(stack: contextlib.AsyncExitStack, models_dir: Path) -> _DbContext:
    """migrate, activate the models as version A, then the service's ``EnsembleRuntime``."""
    from stream_infer.config import ServiceSettings
    from stream_infer.db import db_errors, fetch_active, migrate
    from stream_infer.reload import EnsembleRuntime, activate

    path = models_dir.resolve()
    # The demo activates only its own directory: make that directory's parent the root
    # rows must lie under (docs/postgres.md, Models root).
    settings = ServiceSettings().model_copy(update={"models_root": str(path.parent)})
    runtime = EnsembleRuntime(settings)
    stack.push_async_callback(_quietly, runtime.close)
    db = runtime.db
    assert db is not None  # DB_HOST is set
    with db_errors("demo: migrate"):
        async with db.acquire() as conn:
            applied = await migrate(conn)
            before = await fetch_active(conn)
    _print(
        f"config: postgres {db.dsn}: migrated (applied {applied or 'none'}); active row before "
        f"the demo: {before.id if before else 'none'}"
    )
    stack.push_async_callback(_quietly, _restore_active, db, before)
    base = manifest_version(path) or path.name
    version_a, version_b = f"{base}-demo-a", f"{base}-demo-b"
    row = await activate(
        db, path, version=version_a, models_root=settings.models_root, device=settings.ml_device
    )
    _print(f"db: activated {path} as row {row.id} version {row.version}")
    await runtime.start()
    manager = runtime.manager
    if manager is None or manager.active_row_id != row.id or manager.current is None:
        error = manager.last_error if manager is not None else None
        raise ConfigError(f"the service did not load the active row {row.id}: {error}")
    return _DbContext(runtime, db, settings, path, version_a, version_b)


async def _restore_active(db: Database, before: EnsembleRow | None) -> None:
    """Leave the active row as the demo found it: none, or (a copy of) the one that was."""
    from stream_infer.db import activate_row, deactivate

    try:
        async with db.acquire() as conn:
            if before is None:
                await deactivate(conn)
                _print("db: no row was active before the demo: deactivated the demo's row")
            else:
                row = await activate_row(
                    conn,
                    version=before.version,
                    mamba_path=before.mamba_path,
                    lgbm_models_dir=before.lgbm_models_dir,
                    norm_params_path=before.norm_params_path,
                    mamba_weight=before.mamba_weight,
                    horizons=before.horizons,
                    seq_len=before.seq_len,
                    feature_version=before.feature_version,
                )
                _print(f"db: re-activated the configuration of row {before.id} as row {row.id}")
    except Exception as exc:
        _print(f"db: could not restore the active row ({type(exc).__name__}: {exc})")


async def _start_service(
    stack: contextlib.AsyncExitStack,
    kafka: KafkaSettings,
    ensemble: Ensemble | None,
    db_ctx: _DbContext | None,
) -> tuple[Service, asyncio.Task[Any]]:
    from stream_infer.kafka import ServiceOptions, build_service

    service = build_service(
        kafka,
        ensemble,
        reload=None if db_ctx is None else db_ctx.runtime,
        options=ServiceOptions(client_id="stream-infer-demo", session_timeout_ms=6000),
    )
    stack.push_async_callback(_quietly, service.close)
    await service.start()
    task = asyncio.create_task(service.run(), name="demo-service")
    stack.push_async_callback(_quietly, _stop_service, service, task)
    try:
        await service.wait_assigned(timeout=30)
    except TimeoutError:
        raise BrokerError("the service was not assigned its partitions within 30 s") from None
    if task.done():
        task.result()  # raises what stopped it
    return service, task


async def _stop_service(service: Service, task: asyncio.Task[Any]) -> None:
    if task.done():
        return
    service.request_stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), 10)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _start_consumer(
    stack: contextlib.AsyncExitStack,
    kafka: KafkaSettings,
    state: DemoState,
    service: Service,
    out: IO[bytes],
    clock: Callable[[], float],
) -> asyncio.Task[None]:
    """Read the predictions topic into the state (and ``out`` as JSON lines) until cancelled."""
    from aiokafka import AIOKafkaConsumer

    from stream_infer.events import decode_prediction

    consumer = AIOKafkaConsumer(
        kafka.kafka_predictions_topic,
        bootstrap_servers=kafka.kafka_bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=kafka.kafka_fetch_max_wait_ms,
        client_id="stream-infer-demo-view",
    )
    await consumer.start()
    stack.push_async_callback(_quietly, consumer.stop, timeout=5.0)

    async def consume() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = clock()
            for records in batches.values():
                for r in records:
                    try:
                        p = decode_prediction(r.value)
                    except DecodeError as exc:  # not ours to show; the service wrote it
                        log.warning("predictions topic offset %d: %s", r.offset, exc)
                        continue
                    if state.predicted(p, now):
                        out.write(r.value + b"\n")
            state.candles_processed = service.stats.candles
            state.dead_letters = service.stats.dead_letters

    task = asyncio.create_task(consume(), name="demo-predictions")
    stack.push_async_callback(_cancel, task)  # before the consumer stops (LIFO)
    return task


async def _quietly(fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 15.0) -> None:
    """A cleanup step, bounded in time; what it raises is logged so the next steps still run."""
    try:
        await asyncio.wait_for(fn(*args), timeout)
    except (Exception, asyncio.CancelledError) as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        log.warning("cleanup step %s failed: %r", name, exc)


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel and await; what the task died of is logged, never raised from a cleanup."""
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.warning("%s ended with an error", task.get_name(), exc_info=True)


def _stop_broker(broker: Any) -> None:
    pid = broker.pid
    broker.stop()
    if pid is not None:
        _print(f"broker: stopped (pid {pid})")


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


async def _watch(task: asyncio.Task[Any], check: Callable[[], None]) -> None:
    """Await ``task``, calling ``check`` every 0.2 s meanwhile (it raises on a failure)."""
    while not task.done():
        check()
        await asyncio.wait({task}, timeout=0.2)
    task.result()


async def _feed(
    producer: Any,
    topic: str,
    feeds: list[SymbolFeed],
    state: DemoState,
    opts: DemoOptions,
    stop: asyncio.Event,
    clock: Callable[[], float],
    *,
    on_live_tick: Callable[[float], Any],
    done: Callable[[], bool],
    extra_s: float,
) -> None:
    """The history prefix at once, then one candle per symbol every ``1/speed`` s."""
    from stream_infer.events import encode_candle

    pending: list[asyncio.Future[Any]] = []

    async def send(i: int, live: bool) -> int:
        n = 0
        for f in feeds:
            if i < len(f.candles):
                c = f.candles[i]
                pending.append(await producer.send(topic, encode_candle(c), key=c.symbol.encode()))
                state.sent(c, clock(), live=live)
                n += 1
        return n

    state.phase = f"history prefix ({opts.prefix} candles/symbol at once)"
    for i in range(opts.prefix):
        if stop.is_set():
            return
        await send(i, live=False)
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    pending.clear()

    state.phase = f"live ({opts.speed:g} candles/s per symbol)"
    t0 = time.monotonic()
    k = 0
    while not stop.is_set():
        elapsed = time.monotonic() - t0
        if elapsed >= opts.duration_s and (done() or elapsed >= opts.duration_s + extra_s):
            break
        delay = t0 + k / opts.speed - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                break
        if await send(opts.prefix + k, live=True) == 0:
            state.phase = "live (bundled candles used up)"
            break
        await asyncio.gather(*pending)
        pending.clear()
        k += 1
        res = on_live_tick(time.monotonic() - t0)
        if asyncio.iscoroutine(res):
            await res


def _report(result: DemoResult, state: DemoState) -> None:
    """The final summary, always as plain lines."""
    s = result.summary
    _print("")
    _print(s.line())
    _print(
        f"latency_ms ({s.latency_scope}, n={s.latency_n}): candle received -> prediction sent: "
        f"p50={_f(s.latency_p50)} p99={_f(s.latency_p99)}; catching up on the history prefix "
        f"(n={s.catchup_n}): p50={_f(s.catchup_p50)} p99={_f(s.catchup_p99)}; end to end "
        f"(producer -> predictions consumer): p50={_f(s.e2e_p50)} p99={_f(s.e2e_p99)}"
    )
    by_version = " ".join(f"{v}={n}" for v, n in s.per_version.items()) or "none"
    _print(f"predictions by version: {by_version}")
    for b in state.boards.values():
        _print(plain_symbol_line(b))
    if result.chart is not None:
        _print(f"chart: {result.chart}")
    _print(f"predictions: {result.predictions}")
    _print(f"summary json: {result.summary_json}")
    if result.interrupted:
        _print("interrupted: stopped early, everything it started is stopped")


def _f(v: float) -> str:
    return f"{v:.2f}" if math.isfinite(v) else "n/a"


# -- entry point ------------------------------------------------------------------------


def _event_loop_policy() -> None:
    """uvloop when installed, as ``stream-infer run`` uses it."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _configure_logging(live: bool, verbose: bool, console: Console) -> None:
    level = logging.INFO if verbose else logging.WARNING
    handler: logging.Handler
    if live:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A lost broker makes aiokafka log every retry; the demo names the failure itself.
    logging.getLogger("aiokafka").setLevel(level if verbose else logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(max(level, logging.WARNING))


def main(opts: DemoOptions) -> int:
    """Run the demo with signal handling; the exit status (0, or 130 when interrupted)."""
    from rich.console import Console

    console = Console(highlight=False)
    live = console.is_terminal if opts.live_view is None else opts.live_view
    opts = replace(opts, live_view=live)
    _configure_logging(live, opts.verbose, console)
    _event_loop_policy()

    async def runner() -> DemoResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits == 1:
                print("stopping (again to abort)...", file=sys.stderr, flush=True)
                stop.set()
            elif task is not None:
                task.cancel()

        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        for sig in sigs:
            loop.add_signal_handler(sig, on_signal)
        try:
            return await run_demo(opts, console=console, stop=stop)
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)

    try:
        result = asyncio.run(runner())
    except asyncio.CancelledError:
        print("aborted: everything the demo started is stopped", file=sys.stderr)
        return 130
    return 130 if result.interrupted else 0

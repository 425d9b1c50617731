"""Safety: secrets stay out of logs and metrics, Kafka SASL/SSL and Postgres TLS settings
reach the clients, a database row cannot make the service load files outside the models
root, and message size is bounded.

The Postgres side runs against a private cluster that serves TLS and requires a password
(scram-sha-256): a service that reads its ensemble from it has proven that DB_PASSWORD and
DB_SSLMODE reached asyncpg. The embedded broker speaks no SASL (it refuses the handshake),
so the Kafka side is checked on the client options the service builds, on aiokafka
accepting them, and on a running service that attempts the SASL handshake with them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from stream_infer import DatabaseError
from stream_infer.candles import Candle
from stream_infer.config import DatabaseSettings, KafkaSettings, ServiceSettings
from stream_infer.db import Database, activate_row, migrate
from stream_infer.events import (
    decode_candle,
    decode_dead_letter,
    decode_prediction,
    encode_candle,
)
from stream_infer.kafka import Service, client_kwargs, make_producer
from stream_infer.pipeline import Inbound, Pipeline
from tests.fixtures_kafka import TopicsFactory
from tests.kafka._util import assert_same_prediction, offline
from tests.kafka_helpers import Collector
from tests.reliability._harness import (
    ServiceProc,
    check_delivery,
    metric,
    produce_candles,
    record,
)
from tests.reliability._pg import PrivatePg, activate_dir, private_pg, self_signed
from tests.reliability.test_process_faults import WARM, bursts

pytestmark = pytest.mark.services

models = pytest.importorskip("stream_infer.models")

# Distinctive, so that finding it anywhere is a leak and not a coincidence.
SECRET = "s3cr3t-Qv7xK2-never-log-me"
SSL_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


def _leaks(text: str) -> list[str]:
    """Every place the secret occurs in ``text``, with some context."""
    out, i = [], text.find(SECRET)
    while i >= 0:
        out.append(text[max(0, i - 80) : i + 80])
        i = text.find(SECRET, i + 1)
    return out


async def _wait(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, what
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


# -- Kafka: SSL / SASL options, at the client level ---------------------------------------


@pytest.fixture(scope="module")
def cafile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make the test certificate")
    crt, _ = self_signed(tmp_path_factory.mktemp("ca"), "ca")
    return crt


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
async def test_kafka_security_settings_reach_every_client_and_never_print(
    protocol: str, cafile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the environment to the aiokafka options of the service's consumer, producer and
    history reader; aiokafka accepts them; the settings never show the password."""
    from aiokafka import AIOKafkaConsumer

    for k, v in {
        "KAFKA_BOOTSTRAP_SERVERS": "broker-a:9093,broker-b:9093",
        "KAFKA_SECURITY_PROTOCOL": protocol,
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "svc-infer",
        "KAFKA_SASL_PASSWORD": SECRET,
        "KAFKA_SSL_CAFILE": str(cafile),
    }.items():
        monkeypatch.setenv(k, v)
    s = KafkaSettings()
    kw = client_kwargs(s)
    assert kw["bootstrap_servers"] == "broker-a:9093,broker-b:9093"
    assert kw["security_protocol"] == protocol
    tls = protocol in ("SSL", "SASL_SSL")
    sasl = protocol.startswith("SASL")
    assert ("ssl_context" in kw) == tls
    if tls:
        ctx = kw["ssl_context"]
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "127.0.0.1"),),)]
    sasl_keys = {k: v for k, v in kw.items() if k.startswith("sasl_")}
    if sasl:
        assert sasl_keys == {
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "svc-infer",
            "sasl_plain_password": SECRET,
        }
    else:
        assert sasl_keys == {}, "SASL options without SASL"
        assert SECRET not in repr(kw)
    # aiokafka takes them (it refuses e.g. SASL_SSL without an SSL context, or an unknown
    # mechanism, at construction)
    consumer = AIOKafkaConsumer(**kw)
    await consumer.stop()
    producer = make_producer(
        s.kafka_bootstrap_servers, client={k: v for k, v in kw.items() if k != "bootstrap_servers"}
    )
    await producer.stop()
    # the service's own clients are built from the same options
    service = Service(Pipeline(None), s)
    history_client = service.history.client  # type: ignore[attr-defined]
    for client in (service.client, history_client):
        assert {k: v for k, v in client.items() if k != "ssl_context"} == {
            k: v for k, v in kw.items() if k != "ssl_context"
        }
        assert ("ssl_context" in client) == tls
    # ... and the password shows nowhere in how the settings print or serialise
    for text in (
        repr(s),
        str(s),
        s.model_dump_json(),
        str(s.model_dump()),
        json.dumps(s.model_dump(mode="json")),
        repr(ServiceSettings()),
        ServiceSettings().model_dump_json(),
    ):
        assert not _leaks(text), text


def test_database_tls_and_password_settings_reach_asyncpg_and_never_print(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DB_SSLMODE is passed to asyncpg as its ``ssl`` mode and DB_PASSWORD as the password
    (not in the DSN); neither the settings nor the Database nor a validation error shows it."""
    monkeypatch.setenv("DB_HOST", "db.internal")
    monkeypatch.setenv("DB_PASSWORD", SECRET)
    for mode in SSL_MODES:
        monkeypatch.setenv("DB_SSLMODE", mode)
        s = DatabaseSettings()
        db = Database(s)
        kw = db._connect_kwargs()
        assert (kw["ssl"], kw["password"], kw["host"]) == (mode, SECRET, "db.internal")
        service = ServiceSettings()
        assert service.db.sslmode == mode
        for text in (
            repr(s),
            str(s),
            s.model_dump_json(),
            str(s.model_dump()),
            repr(db),
            db.dsn,
            repr(service),
            service.model_dump_json(),
        ):
            assert not _leaks(text), text
    monkeypatch.setenv("DB_SSLMODE", "bogus")
    with pytest.raises(ValidationError) as bad_mode:
        DatabaseSettings()
    monkeypatch.setenv("DB_SSLMODE", "require")
    monkeypatch.setenv("DB_PORT", "not-a-port")
    with pytest.raises(ValidationError) as bad_port:
        DatabaseSettings()
    for err in (bad_mode, bad_port):
        assert not _leaks(str(err.value)), str(err.value)


# -- Postgres: TLS and password against a real server --------------------------------------


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[PrivatePg]:
    """A private cluster serving TLS that requires SECRET as the password over TCP."""
    with private_pg(tls=True, password=SECRET) as pg:
        yield pg


async def _ssl_in_use(settings: DatabaseSettings) -> bool:
    db = Database(settings, connect_timeout=10.0)
    try:
        conn = await db.connect()
        try:
            return bool(
                await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            )
        finally:
            await conn.close()
    finally:
        await db.close()


async def test_postgres_tls_modes_and_password_on_a_real_server(
    tls_pg: PrivatePg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = tls_pg
    assert pg.cafile is not None
    assert await _ssl_in_use(pg.settings(direct=True, sslmode="disable")) is False
    assert await _ssl_in_use(pg.settings(direct=True, sslmode="prefer")) is True
    assert await _ssl_in_use(pg.settings(direct=True, sslmode="require")) is True
    # verify-full checks the certificate against PGSSLROOTCERT (libpq's variable) ...
    monkeypatch.setenv("PGSSLROOTCERT", str(pg.cafile))
    assert await _ssl_in_use(pg.settings(direct=True, sslmode="verify-full")) is True
    # ... and refuses a server whose certificate another CA signed
    other, _ = self_signed(tmp_path, "other-ca")
    monkeypatch.setenv("PGSSLROOTCERT", str(other))
    errors: list[str] = []
    with pytest.raises(DatabaseError) as exc:
        await _ssl_in_use(pg.settings(direct=True, sslmode="verify-full"))
    assert "certificate verify failed" in str(exc.value), exc.value
    errors.append(str(exc.value))
    # the password is checked: a wrong one and none are refused, and not echoed
    monkeypatch.delenv("PGSSLROOTCERT")
    wrong = SECRET[::-1]
    for password in (wrong, None):
        with pytest.raises(DatabaseError) as exc:
            await _ssl_in_use(pg.settings(direct=True, sslmode="require", password=password))
        assert "password" in str(exc.value).lower(), exc.value
        errors.append(str(exc.value))
    for e in errors:
        assert not _leaks(e) and wrong not in e, e
    record(
        "safety: Postgres TLS modes and password (private TLS cluster, scram-sha-256)",
        modes_checked=["disable", "prefer", "require", "verify-full"],
        refused=["verify-full with another CA", "wrong password", "no password"],
        secret_in_errors=0,
    )


# -- the running service: no secret in its logs or metrics --------------------------------


async def _service_connections_use_tls(pg: PrivatePg) -> tuple[int, int]:
    """(TCP client connections, of which with TLS) on the cluster, the checker's own excluded."""
    rows = await pg.fetch(
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
        "WHERE a.backend_type = 'client backend' AND a.client_addr IS NOT NULL "
        "AND a.pid <> pg_backend_pid()"
    )
    return len(rows), sum(1 for r in rows if r["ssl"])


async def test_secrets_never_reach_logs_or_metrics(
    tls_pg: PrivatePg, kafka_topics: TopicsFactory, ensemble_dir: Path, tmp_path: Path
) -> None:
    """Two runs of ``stream-infer run`` with DB_PASSWORD and KAFKA_SASL_PASSWORD set to SECRET.

    1. Plain log, info: the ensemble and hot reload from the TLS + password cluster, the
       predictions sink on, a refused reload and a 2 s Postgres cut (so error paths log).
    2. JSON log, debug (aiokafka's debug included): KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT
       against the embedded broker, which refuses the handshake; the service keeps retrying.

    Neither log, nor /metrics, /healthz or /readyz, holds the secret.
    """
    pg = tls_pg
    s = kafka_topics(partitions=2, kafka_max_poll_records=100)
    root = tmp_path / "models"
    shutil.copytree(ensemble_dir, root / "v1")
    shutil.copytree(ensemble_dir, tmp_path / "elsewhere")
    row1 = await activate_dir(pg, root / "v1", version="v1")
    env = pg.env(
        DB_SSLMODE="require",
        DB_WRITE_PREDICTIONS="true",
        ML_MODELS_ROOT=str(root),
        ML_RELOAD_POLL_S="0.5",
        KAFKA_SASL_MECHANISM="PLAIN",
        KAFKA_SASL_USERNAME="svc-infer",
        KAFKA_SASL_PASSWORD=SECRET,
    )
    assert env["DB_PASSWORD"] == SECRET
    chunks = bursts([WARM, 30])
    candles = [c for ch in chunks for c in ch]
    twin = models.load_ensemble(root / "v1", ensemble_id=str(row1), version="v1")
    want, _ = offline(twin, [encode_candle(c) for c in candles])
    where: dict[Any, Any] = {}
    bootstrap = s.kafka_bootstrap_servers
    scraped: list[str] = []

    def scrape(svc: ServiceProc) -> None:
        for path in ("/metrics", "/healthz", "/readyz"):
            status, body = svc.get(path)
            assert status in (200, 503), (path, status, body)
            scraped.append(body)

    # 1. plain, info
    log1 = tmp_path / "plain.log"
    svc = ServiceProc(s, log1, env=env)
    try:
        async with Collector(bootstrap, s.kafka_predictions_topic) as preds:
            await svc.wait_ready(60)
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[0], where)
            await preds.wait_for(sum(1 for k in want if k in where), 60)
            n_conn, n_tls = await _service_connections_use_tls(pg)
            assert n_conn >= 1 and n_tls == n_conn, (n_conn, n_tls)
            scrape(svc)
            # a refused reload (a row outside the models root) and a Postgres cut
            bad = await activate_dir(pg, tmp_path / "elsewhere", version="elsewhere")
            await _wait(
                lambda: metric(svc.metrics(), "stream_infer_reloads_total", result="failed") == 1,
                15,
                "the row outside the models root was not refused",
            )
            pg.proxy.cut()
            await asyncio.sleep(2.0)
            pg.proxy.restore()
            await _wait(
                lambda: metric(svc.metrics(), "stream_infer_db_reconnects_total") >= 1,
                20,
                "the reloader did not reconnect",
            )
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[1], where)
            await preds.wait_for(len(want), 60)
            await preds.settle(0.5)

            def sink_done() -> bool:
                m = svc.metrics()
                done = metric(m, "stream_infer_sink_rows_total", result="written") + metric(
                    m, "stream_infer_sink_rows_total", result="duplicate"
                )
                return done >= len(want) and metric(m, "stream_infer_sink_pending") == 0

            await _wait(sink_done, 30, "the sink did not write every prediction")
            scrape(svc)
            m = svc.metrics()
        assert svc.stop() == 0
    finally:
        svc.kill()
    rows = await pg.fetch("SELECT ensemble_id FROM predictions")
    delivery = check_delivery(preds.records, want, where, [], candles=len(candles))
    assert delivery.duplicates == 0
    # the password worked: the ensemble came from the database, the sink wrote every row
    assert Counter(r["ensemble_id"] for r in rows) == Counter({str(row1): len(want)})
    assert metric(m, "stream_infer_reloads_total", result="failed") == 1
    text1 = log1.read_text(errors="replace")
    # the log does speak of the database, the refused row and the cut ...
    assert f"postgresql://postgres@127.0.0.1:{pg.proxy.port}/postgres" in text1
    assert f"hot reload to ensemble row {bad} failed" in text1
    assert "reloader: Postgres unavailable" in text1
    # ... never of the secret
    assert not _leaks(text1), _leaks(text1)

    # 2. JSON, debug, SASL against a broker that refuses it
    sasl_env = {**env, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
    log2 = tmp_path / "json.log"
    svc = ServiceProc(s, log2, env=sasl_env, args=["--log-format", "json", "--log-level", "debug"])
    try:
        await _wait(
            lambda: "not ready, retrying in" in log2.read_text(errors="replace"),
            60,
            f"no failed SASL connection attempt logged: {svc.tail()}",
        )
        assert svc.alive(), svc.tail()
        assert svc.get("/readyz")[0] == 503
        m2 = svc.metrics()
        assert metric(m2, "stream_infer_broker_errors_total", op="connect") >= 1
        scrape(svc)
        assert svc.stop() == 0
    finally:
        svc.kill()
    text2 = log2.read_text(errors="replace")
    lines = [json.loads(line) for line in text2.splitlines() if line.startswith("{")]
    assert len(lines) > 20, text2[-2000:]
    # the client was configured for SASL/PLAIN from the environment, at debug level
    assert any("SaslHandShakeRequest" in x["msg"] and "PLAIN" in x["msg"] for x in lines)
    assert any(x["logger"].startswith("aiokafka") and x["level"] == "debug" for x in lines)
    assert not _leaks(text2), _leaks(text2)
    body = "\n".join(scraped)
    assert "stream_infer_candles_consumed_total" in body
    assert not _leaks(body), _leaks(body)
    record(
        "safety: no secret in logs or /metrics (DB_PASSWORD, KAFKA_SASL_PASSWORD)",
        log_bytes_plain=len(text1),
        log_lines_json_debug=len(lines),
        http_bodies_scraped=len(scraped),
        secret_occurrences=0,
        service_db_connections_tls=f"{n_tls}/{n_conn}",
        **delivery.figures(),
    )


# -- model paths from the database: only under ML_MODELS_ROOT -----------------------------


async def _activate_paths(
    settings: DatabaseSettings, mamba: str, lgbm: str, norm: str, *, version: str, manifest: Path
) -> int:
    """An ``active_ensembles`` row naming these paths as given (no checks, as a hand-made
    row or another tool could)."""
    man = json.loads(manifest.read_text())
    db = Database(settings)
    try:
        async with db.acquire() as conn:
            row = await activate_row(
                conn,
                version=version,
                mamba_path=mamba,
                lgbm_models_dir=lgbm,
                norm_params_path=norm,
                mamba_weight=float(man["mamba_weight"]),
                horizons=[int(h) for h in man["horizons"]],
                seq_len=int(man["seq_len"]),
                feature_version=int(man["feature_version"]),
            )
        return int(row.id)
    finally:
        await db.close()


def _paths(d: Path | str) -> tuple[str, str, str]:
    d = str(d)
    return f"{d}/mamba.pt", d, f"{d}/normalization_params_v1.json"


async def test_rows_pointing_outside_the_models_root_are_refused_while_serving(
    pg_settings: DatabaseSettings,
    kafka_topics: TopicsFactory,
    ensemble_dir: Path,
    tmp_path: Path,
) -> None:
    """While the service serves v1 from a row, rows whose model files lie outside
    ML_MODELS_ROOT are activated one after the other: each is refused and logged, none is
    loaded, v1 keeps serving every candle. Every escape points at a *valid* ensemble, so
    without the check the reload would succeed and this test would see it serve."""
    s = kafka_topics(partitions=2, kafka_max_poll_records=50)
    db = Database(pg_settings)
    try:
        async with db.acquire() as conn:
            await migrate(conn)
    finally:
        await db.close()
    root = tmp_path / "models"
    outside = tmp_path / "outside" / "ens"
    shutil.copytree(ensemble_dir, outside)
    for v in ("v1", "v2", "file-link", "onnx-link"):
        shutil.copytree(ensemble_dir, root / v)
    (root / "dir-link").symlink_to(outside, target_is_directory=True)
    (root / "file-link" / "mamba.pt").unlink()
    (root / "file-link" / "mamba.pt").symlink_to(outside / "mamba.pt")
    (root / "onnx-link" / "lgbm_h1.onnx").unlink()
    (root / "onnx-link" / "lgbm_h1.onnx").symlink_to(outside / "lgbm_h1.onnx")
    manifest = ensemble_dir / "manifest.json"
    escapes: list[tuple[str, tuple[str, str, str], str]] = [
        ("absolute path outside the root", _paths(outside), "outside the models root"),
        ("'..' escape", _paths(f"{root}/v1/../../outside/ens"), "must not contain '..'"),
        ("symlinked directory", _paths(root / "dir-link"), "outside the models root"),
        ("symlinked mamba.pt", _paths(root / "file-link"), "outside the models root"),
        (
            "symlinked ONNX file in the directory",
            _paths(root / "onnx-link"),
            "outside the models root",
        ),
        ("relative path", _paths("models/v1"), "must be an absolute path"),
    ]
    row1 = await activate_dir(pg_settings, root / "v1", version="v1")
    chunks = bursts([WARM] + [10] * len(escapes) + [20])
    candles = [c for ch in chunks for c in ch]
    values = [encode_candle(c) for c in candles]
    want1, _ = offline(
        models.load_ensemble(root / "v1", ensemble_id=str(row1), version="v1"), values
    )
    bootstrap = s.kafka_bootstrap_servers
    where: dict[Any, Any] = {}
    log = tmp_path / "service.log"
    env = {
        "DB_HOST": str(pg_settings.host),
        "DB_PORT": str(pg_settings.port),
        "DB_NAME": pg_settings.name,
        "DB_USER": pg_settings.user,
        "DB_SSLMODE": "disable",
        "ML_MODELS_ROOT": str(root),
        "ML_RELOAD_POLL_S": "0.5",
    }
    refused: list[int] = []
    async with Collector(bootstrap, s.kafka_predictions_topic) as preds:
        svc = ServiceProc(s, log, env=env)
        try:
            await svc.wait_ready(60)
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[0], where)
            await preds.wait_for(sum(1 for k in want1 if k in where), 60)
            for i, (what, (mamba, lgbm, norm), says) in enumerate(escapes, start=1):
                row = await _activate_paths(
                    pg_settings, mamba, lgbm, norm, version=f"escape-{i}", manifest=manifest
                )
                refused.append(row)

                def refusals() -> float:
                    return metric(svc.metrics(), "stream_infer_reloads_total", result="failed")

                await _wait(
                    lambda n=i: refusals() >= n,
                    15,
                    f"{what}: row {row} was not refused: {svc.tail()}",
                )
                line = next(
                    (x for x in log.read_text().splitlines() if f"ensemble row {row} failed" in x),
                    "",
                )
                assert says in line, (what, line)
                assert svc.ready(), f"{what}: not ready after the refusal"
                # v1 keeps serving
                await produce_candles(bootstrap, s.kafka_candles_topic, chunks[i], where)
                await preds.wait_for(sum(1 for k in want1 if k in where), 30)
                m = svc.metrics()
                assert (
                    metric(m, "stream_infer_ensemble_info", ensemble_id=str(row1), version="v1")
                    == 1
                )
            # a good row under the root still reloads
            row2 = await activate_dir(pg_settings, root / "v2", version="v2")
            await _wait(
                lambda: metric(svc.metrics(), "stream_infer_reloads_total", result="ok") == 1,
                30,
                f"no reload to the good row: {svc.tail()}",
            )
            await produce_candles(bootstrap, s.kafka_candles_topic, chunks[-1], where)
            await preds.wait_for(len(want1), 30)
            await preds.settle(0.5)
            m = svc.metrics()
            assert svc.stop() == 0
        finally:
            svc.kill()
    want2, _ = offline(
        models.load_ensemble(root / "v2", ensemble_id=str(row2), version="v2"), values
    )
    delivery = check_delivery(
        preds.records,
        want1,
        where,
        [],
        candles=len(candles),
        twins={str(row1): want1, str(row2): want2},
    )
    assert delivery.duplicates == 0
    served = Counter(decode_prediction(r.value).ensemble_id for r in preds.records)
    assert set(served) == {str(row1), str(row2)} and not set(served) & {str(r) for r in refused}
    assert metric(m, "stream_infer_reloads_total", result="failed") == len(escapes)
    assert metric(m, "stream_infer_reloads_total", result="ok") == 1
    record(
        "safety: model paths outside ML_MODELS_ROOT refused while serving",
        rows_refused=len(escapes),
        escapes=[e[0] for e in escapes],
        served_by_refused_rows=0,
        predictions_v1=served[str(row1)],
        predictions_v2=served[str(row2)],
        **delivery.figures(),
    )


# -- message size ---------------------------------------------------------------------------


def _padded(c: Candle, size: int, **changes: Any) -> bytes:
    """The candle's JSON (with ``changes``) padded to exactly ``size`` bytes by an unknown
    field, which the decoder ignores."""
    head = orjson.dumps({**orjson.loads(encode_candle(c)), **changes})[:-1] + b',"pad":"'
    fill = size - len(head) - 2
    assert fill >= 0
    return head + b"p" * fill + b'"}'


async def test_messages_over_the_size_bound_are_dead_lettered(
    kafka_topics: TopicsFactory, ensemble_dir: Path, file_ensemble: Any, tmp_path: Path
) -> None:
    """``stream-infer run`` with KAFKA_MAX_MESSAGE_BYTES=16384. Real candles padded to exactly
    16,384 bytes are candles; copies of the next candle with every price 1.5 times higher
    (still a valid candle), padded past the bound (by one byte, to 1 MB and to 3 MB, beyond the consumer's 1 MiB fetch
    size), are dead letters with reason ``too_large``, each DLQ record itself within the
    bound. Had one been accepted, its stream (and its predictions) would differ from the
    twin's."""
    limit = 16_384
    s = kafka_topics(
        partitions=1,
        kafka_max_poll_records=200,
        kafka_max_message_bytes=limit,
        candles_max_bytes=8 << 20,  # the broker takes them; the service's bound is tested
    )
    [[*candles]] = bursts([WARM + 40])
    events: list[tuple[bytes, bytes]] = []
    oversize = [limit + 1, 1 << 20, 3 << 20]
    big_at = {WARM * 3 + 10: oversize[0], WARM * 3 + 40: oversize[1], WARM * 3 + 70: oversize[2]}
    exact = {WARM * 3 + 20, WARM * 3 + 21, WARM * 3 + 50}
    for i, c in enumerate(candles):
        if i in big_at:
            moved = {f: getattr(c, f) * 1.5 for f in ("open", "high", "low", "close")}
            events.append((c.symbol.encode(), _padded(c, big_at[i], **moved)))
        value = _padded(c, limit) if i in exact else encode_candle(c)
        events.append((c.symbol.encode(), value))
    # the twin: the same bytes through a pipeline with the same bound
    pipeline = Pipeline(file_ensemble, max_bytes=limit)
    res = pipeline.process([Inbound(v, 0, i, 0.0) for i, (_, v) in enumerate(events)])
    want = {(p.symbol, p.open_time): p for p in res.predictions}
    assert dict(res.counts.dead_letters) == {"too_large": len(oversize)}
    for _, v in events:  # without the bound, every oversize copy would be a valid candle
        assert decode_candle(v, max_bytes=1 << 30) is not None
    assert want and res.counts.candles == len(candles)
    log = tmp_path / "service.log"
    svc = ServiceProc(s, log, models=ensemble_dir)
    try:
        await svc.wait_ready(60)
        async with (
            Collector(s.kafka_bootstrap_servers, s.kafka_predictions_topic) as preds,
            Collector(s.kafka_bootstrap_servers, s.kafka_dlq_topic) as dlq,
        ):
            producer = make_producer(s.kafka_bootstrap_servers, max_request_size=8 << 20)
            await producer.start()
            try:
                sent = [await producer.send(s.kafka_candles_topic, v, key=k) for k, v in events]
                await asyncio.gather(*sent)  # a record the broker refused fails here
            finally:
                await producer.stop()
            await preds.wait_for(len(want), 60)
            await dlq.wait_for(len(oversize), 30)
            await preds.settle(1.0)
        m = svc.metrics()
        rss_mb = svc.rss_mb()
        assert svc.alive(), svc.tail()
        assert svc.stop() == 0
    finally:
        svc.kill()
    got = [decode_prediction(r.value) for r in preds.records]
    assert Counter((p.symbol, p.open_time) for p in got) == Counter(list(want))
    for p in got:
        assert_same_prediction(p, want[(p.symbol, p.open_time)])
    letters = [decode_dead_letter(r.value) for r in dlq.records]
    assert [d.reason for d in letters] == ["too_large"] * len(oversize)
    sizes = sorted(big_at.values())
    for r, d, size in zip(dlq.records, letters, sizes, strict=True):
        assert len(r.value) <= limit, f"a DLQ record of {len(r.value)} bytes > {limit}"
        assert f"message of {size} bytes > {limit}" in d.error
        assert "value truncated to" in d.error
        raw = base64.b64decode(d.value)
        assert 0 < len(raw) < size and raw == _padded_prefix(events, size)[: len(raw)]
    assert metric(m, "stream_infer_dead_letters_total", reason="too_large") == len(oversize)
    assert metric(m, "stream_infer_candles_consumed_total") == len(events)
    record(
        "safety: messages over KAFKA_MAX_MESSAGE_BYTES (16 KiB) dead-lettered",
        limit_bytes=limit,
        oversize_bytes=oversize,
        at_limit_accepted=len(exact),
        dead_letters=len(letters),
        largest_dlq_record_bytes=max(len(r.value) for r in dlq.records),
        predictions=len(got),
        rss_mb_after=round(rss_mb, 1),
        lost=0,
        duplicates=0,
    )


def _padded_prefix(events: list[tuple[bytes, bytes]], size: int) -> bytes:
    [value] = [v for _, v in events if len(v) == size]
    return value

"""A private PostgreSQL cluster a test may stop, restart and reconfigure (the shared server
of the session serves other tests at the same time), with a TCP proxy in front of it.

``private_pg(tls=True)`` serves TLS with a self-signed certificate for 127.0.0.1
(``PrivatePg.cafile``); ``private_pg(password=...)`` requires that password over TCP
(scram-sha-256), so a client that connects has proven it sent it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stream_infer.config import DatabaseSettings
from stream_infer.db import Database, activate_row, migrate
from tests.kafka_helpers import run_sync
from tests.pg_cluster import BIN, Cluster
from tests.tcp_proxy import TcpProxy


@dataclass
class PrivatePg:
    cluster: Cluster
    proxy: TcpProxy
    password: str | None = None
    cafile: Path | None = None  # the server's self-signed certificate, when it serves TLS

    def settings(self, *, direct: bool = False, **kw: Any) -> DatabaseSettings:
        port = self.cluster.port if direct else self.proxy.port
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "name": "postgres",
            "user": "postgres",
            "sslmode": "disable",
            "password": self.password,
        }
        base.update(kw)
        return DatabaseSettings(**base)

    def env(self, **extra: str) -> dict[str, str]:
        """DB_* variables for a service that reaches the cluster through the proxy."""
        return {
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(self.proxy.port),
            "DB_NAME": "postgres",
            "DB_USER": "postgres",
            "DB_SSLMODE": "disable",
            **({"DB_PASSWORD": self.password} if self.password else {}),
            **extra,
        }

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        # Over the Unix socket when TCP needs a password (local connections are trusted).
        host = str(self.cluster.dir) if self.password else "127.0.0.1"
        conn = await asyncpg.connect(
            host=host, port=self.cluster.port, user="postgres", database="postgres"
        )
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows
        finally:
            await conn.close()


@contextlib.contextmanager
def private_pg(*, tls: bool = False, password: str | None = None) -> Iterator[PrivatePg]:
    if not (BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {BIN}")
    if tls and shutil.which("openssl") is None:
        pytest.skip("no openssl to make the test certificate")
    c = Cluster()
    cafile: Path | None = None
    try:
        c.init()
        if tls:
            cafile = _serve_tls(c)
        if password is not None:
            # TCP needs the password (TLS or not); the Unix socket stays trusted for set-up.
            (c.data / "pg_hba.conf").write_text(
                "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
            )
        c.ctl("start")
        if password is not None:
            run_sync(_set_password(c, password))
    except (subprocess.CalledProcessError, OSError) as exc:
        c.remove()
        pytest.skip(f"cannot start a private Postgres cluster: {exc}")
    try:
        with TcpProxy("127.0.0.1", c.port) as proxy:
            pg = PrivatePg(c, proxy, password=password, cafile=cafile)
            run_sync(_migrate(pg.settings(direct=True)))
            yield pg
    finally:
        c.remove()


def self_signed(where: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (IP SAN, so hostname checks can pass) and
    its key: ``where/name.crt``, ``where/name.key``."""
    crt, key = where / f"{name}.crt", where / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    os.chmod(key, 0o600)
    return crt, key


def _serve_tls(c: Cluster) -> Path:
    """The cluster serves TLS (``ssl = on``) with a fresh self-signed certificate; returns
    a copy of the certificate for clients to trust."""
    crt, key = self_signed(c.data)
    if os.geteuid() == 0:
        for f in (crt, key):
            shutil.chown(f, "postgres", "postgres")
    with (c.data / "postgresql.conf").open("a") as fh:
        fh.write("\nssl = on\n")
    ca = c.dir / "ca.crt"
    shutil.copyfile(crt, ca)
    return ca


async def _set_password(c: Cluster, password: str) -> None:
    conn = await asyncpg.connect(host=str(c.dir), port=c.port, user="postgres", database="postgres")
    try:
        # A utility statement takes no parameters: quote the literal the server's way.
        literal = await conn.fetchval("SELECT quote_literal($1::text)", password)
        await conn.execute(f"ALTER USER postgres PASSWORD {literal}")
    finally:
        await conn.close()


async def _migrate(settings: DatabaseSettings) -> None:
    db = Database(settings)
    try:
        async with db.acquire() as conn:
            await migrate(conn)
    finally:
        await db.close()


async def activate_dir(
    settings: DatabaseSettings | PrivatePg, d: Path, *, version: str, weight: float | None = None
) -> int:
    """Make the model directory ``d`` the active row, with no checks (as another tool, or
    a later change to the files, could leave it); horizons etc. from its manifest."""
    import json

    if isinstance(settings, PrivatePg):
        settings = settings.settings(direct=True)
    manifest = json.loads((d / "manifest.json").read_text())
    db = Database(settings)
    try:
        async with db.acquire() as conn:
            row = await activate_row(
                conn,
                version=version,
                mamba_path=str(d / "mamba.pt"),
                lgbm_models_dir=str(d),
                norm_params_path=str(d / "normalization_params_v1.json"),
                mamba_weight=float(manifest["mamba_weight"] if weight is None else weight),
                horizons=[int(h) for h in manifest["horizons"]],
                seq_len=int(manifest["seq_len"]),
                feature_version=int(manifest["feature_version"]),
            )
        return int(row.id)
    finally:
        await db.close()

"""A private PostgreSQL cluster a test may stop, restart and reconfigure (the shared server
on :5432 serves other tests at the same time), with a TCP proxy in front of it."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stream_infer.config import DatabaseSettings
from stream_infer.db import Database, activate_row, migrate
from tests.db.test_restart import BIN, Cluster
from tests.reliability._harness import run_sync
from tests.tcp_proxy import TcpProxy


@dataclass
class PrivatePg:
    cluster: Cluster
    proxy: TcpProxy

    def settings(self, *, direct: bool = False, **kw: Any) -> DatabaseSettings:
        port = self.cluster.port if direct else self.proxy.port
        base: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "name": "postgres",
            "user": "postgres",
            "sslmode": "disable",
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
            **extra,
        }

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=self.cluster.port, user="postgres", database="postgres"
        )
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows
        finally:
            await conn.close()


@contextlib.contextmanager
def private_pg() -> Iterator[PrivatePg]:
    if not (BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {BIN}")
    c = Cluster()
    try:
        c.init()
        c.ctl("start")
    except (subprocess.CalledProcessError, OSError) as exc:
        c.remove()
        pytest.skip(f"cannot start a private Postgres cluster: {exc}")
    try:
        with TcpProxy("127.0.0.1", c.port) as proxy:
            pg = PrivatePg(c, proxy)
            run_sync(_migrate(pg.settings(direct=True)))
            yield pg
    finally:
        c.remove()


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

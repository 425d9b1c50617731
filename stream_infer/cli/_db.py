"""``stream-infer db migrate | load-candles | deactivate | status`` and ``stream-infer activate``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from stream_infer.cli._app import app, db_app

T = TypeVar("T")


def _with_db(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(db)`` against DB_* settings; DatabaseError/ConfigError end as one line."""
    from stream_infer.config import ServiceSettings
    from stream_infer.db import Database

    settings = ServiceSettings()
    db = Database(settings.db)

    async def main() -> T:
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(main())


@db_app.command("migrate")
def migrate_cmd(
    repair: Annotated[
        bool, typer.Option(help="Also re-run applied migrations (recreates dropped tables).")
    ] = False,
) -> None:
    """Create or update the schema (idempotent; safe to run twice or at once)."""
    from stream_infer.db import db_errors, migrate, schema_version

    async def work(db: Any) -> None:
        with db_errors("migrate"):
            async with db.acquire() as conn:
                applied = await migrate(conn, repair=repair)
                version = await schema_version(conn)
        done = ", ".join(map(str, applied)) if applied else "none (up to date)"
        typer.echo(f"{db.dsn}: schema version {version}; applied: {done}")

    _with_db(work)


@db_app.command("load-candles")
def load_candles_cmd(
    files: Annotated[list[Path], typer.Argument(help="Exchange klines files (.csv or .csv.gz).")],
) -> None:
    """Load klines files into the candles table (history for warm-up; duplicates skipped)."""
    from stream_infer.db import load_klines_files

    async def work(db: Any) -> None:
        for path, n in (await load_klines_files(db, files)).items():
            typer.echo(f"{path}: {n} new candles")

    _with_db(work)


@db_app.command("deactivate")
def deactivate_cmd() -> None:
    """Make no ensemble row active: services fall back to environment/TOML configuration."""
    from stream_infer.db import db_errors, deactivate

    async def work(db: Any) -> None:
        with db_errors("deactivate"):
            async with db.acquire() as conn:
                old = await deactivate(conn)
        typer.echo(f"deactivated row {old}" if old is not None else "no row was active")

    _with_db(work)


@db_app.command("status")
def status_cmd() -> None:
    """Show the schema version and the active ensemble row."""
    from stream_infer.db import db_errors, fetch_active, schema_version

    async def work(db: Any) -> None:
        with db_errors("status"):
            async with db.acquire() as conn:
                version = await schema_version(conn)
                row = await fetch_active(conn) if version else None
        typer.echo(f"{db.dsn}: schema version {version}")
        typer.echo(f"active: {row.model_dump_json() if row else 'none'}")

    _with_db(work)


@app.command("activate")
def activate_cmd(
    models: Annotated[Path, typer.Option("--models", help="The model directory to activate.")],
    weight: Annotated[
        float | None, typer.Option("--weight", help="Mamba weight w in [0, 1] (manifest's).")
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Version label (manifest's).")
    ] = None,
) -> None:
    """Check a model directory and make it the active ensemble; running services hot-reload."""
    from stream_infer.config import ServiceSettings
    from stream_infer.reload import activate

    settings = ServiceSettings()
    logging.basicConfig(level=logging.WARNING)

    async def work(db: Any) -> None:
        row = await activate(
            db,
            models,
            weight=weight,
            version=version,
            models_root=settings.models_root,
            device=settings.ml_device,
        )
        typer.echo(
            f"active: row {row.id}, version {row.version}, weight {row.mamba_weight:g}, "
            f"horizons {list(row.horizons)}, seq_len {row.seq_len}, "
            f"feature v{row.feature_version}, {row.lgbm_models_dir}"
        )

    _with_db(work)

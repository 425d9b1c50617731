"""Rows of ``active_ensembles``: read the active one, activate a new one, deactivate."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
from pydantic import BaseModel, ConfigDict

from stream_infer.db._schema import ACTIVATE_LOCK, CHANNEL

__all__ = ["EnsembleRow", "activate_row", "deactivate", "fetch_active"]

_COLUMNS = (
    "id, version, mamba_path, lgbm_models_dir, norm_params_path, mamba_weight, "
    "horizons, seq_len, feature_version, is_active, created_at"
)


class EnsembleRow(BaseModel):
    """One row of ``active_ensembles`` as stored (paths unchecked; see ``resolve_ensemble``)."""

    model_config = ConfigDict(frozen=True)

    id: int
    version: str
    mamba_path: str
    lgbm_models_dir: str
    norm_params_path: str
    mamba_weight: float
    horizons: tuple[int, ...]
    seq_len: int
    feature_version: int
    is_active: bool = True
    created_at: datetime | None = None  # when it was activated (the row is inserted active)


def _row(record: asyncpg.Record) -> EnsembleRow:
    data = dict(record)
    data["horizons"] = tuple(data["horizons"])
    return EnsembleRow.model_validate(data)


async def fetch_active(conn: asyncpg.Connection) -> EnsembleRow | None:
    """The active row, or None when no row is active."""
    record = await conn.fetchrow(f"SELECT {_COLUMNS} FROM active_ensembles WHERE is_active")
    return None if record is None else _row(record)


async def activate_row(
    conn: asyncpg.Connection,
    *,
    version: str,
    mamba_path: str,
    lgbm_models_dir: str,
    norm_params_path: str,
    mamba_weight: float,
    horizons: Sequence[int],
    seq_len: int,
    feature_version: int,
) -> EnsembleRow:
    """Insert a row and make it the only active one, in one transaction, then NOTIFY.

    The notification is sent at commit (Postgres holds NOTIFY until then), so a listener
    never hears of a row it cannot read yet. Concurrent activations serialise on an
    advisory lock; the last to commit is active.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ACTIVATE_LOCK)
        await conn.execute("UPDATE active_ensembles SET is_active = false WHERE is_active")
        record = await conn.fetchrow(
            f"""
            INSERT INTO active_ensembles (version, mamba_path, lgbm_models_dir,
                norm_params_path, mamba_weight, horizons, seq_len, feature_version, is_active)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true)
            RETURNING {_COLUMNS}
            """,
            version,
            mamba_path,
            lgbm_models_dir,
            norm_params_path,
            float(mamba_weight),
            [int(h) for h in horizons],
            int(seq_len),
            int(feature_version),
        )
        assert record is not None
        row = _row(record)
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(row.id))
    return row


async def deactivate(conn: asyncpg.Connection) -> int | None:
    """Make no row active (the service falls back to environment/TOML); returns the old id."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ACTIVATE_LOCK)
        old = await conn.fetchval(
            "UPDATE active_ensembles SET is_active = false WHERE is_active RETURNING id"
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, "none")
    return None if old is None else int(old)

"""Candle history in Postgres: warm-up reads for the ring buffers, and bulk loads."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd

from stream_infer.candles import CANDLE_COLUMNS, Candle, read_klines
from stream_infer.db._conn import Database, db_errors

__all__ = ["CANDLE_COLUMNS", "PostgresHistory", "load_candles", "load_klines_files"]

log = logging.getLogger(__name__)

_COLS = ", ".join(CANDLE_COLUMNS)
_C_COLS = ", ".join(f"c.{c}" for c in CANDLE_COLUMNS)

# The last n candles of many streams, each before its own bound, in one round trip. A
# LATERAL subquery with ORDER BY ... LIMIT walks the primary key (symbol, interval,
# open_time) backwards from each bound and stops after n rows; row_number() over a window
# would number every older row of the stream first (months of history) to keep n.
_FETCH_MANY = f"""
SELECT q.i, {_C_COLS}
FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY AS q(symbol, interval, bound, i)
CROSS JOIN LATERAL (
    SELECT {_COLS} FROM candles
    WHERE candles.symbol = q.symbol AND candles.interval = q.interval
      AND candles.open_time < q.bound
    ORDER BY candles.open_time DESC
    LIMIT $4
) AS c
"""


class PostgresHistory:
    """Reads closed candles back from the ``candles`` table (oldest first).

    It is also the service's per-stream history source (``HISTORY_SOURCE=postgres``, the
    ``StreamHistorySource`` of ``stream_infer.kafka``): ``ping`` and ``fetch_many``.
    """

    def __init__(self, db: Database, *, max_streams_per_query: int = 256) -> None:
        self.db = db
        self.max_streams_per_query = max(1, max_streams_per_query)

    def __str__(self) -> str:
        return f"Postgres candles at {self.db.dsn}"

    async def ping(self) -> None:
        """``SELECT 1`` on the candles table's database; DatabaseError when unreachable."""
        with db_errors("reach the candle history"):
            async with self.db.acquire() as conn:
                await conn.fetchval("SELECT 1 FROM candles LIMIT 1")

    async def fetch_many(
        self, bounds: Mapping[tuple[str, str], int], n: int
    ) -> dict[tuple[str, str], list[Candle]]:
        """For each ``(symbol, interval)``: its last ``n`` candles with ``open_time < bound``,
        oldest first, in one query per ``max_streams_per_query`` streams. A stream without
        such rows is absent; so is one with a row that is not a valid candle (logged).
        DatabaseError when unreachable.
        """
        out: dict[tuple[str, str], list[Candle]] = {}
        if n <= 0 or not bounds:
            return out
        keys = list(bounds)
        step = self.max_streams_per_query
        for lo in range(0, len(keys), step):
            chunk = keys[lo : lo + step]
            with db_errors(f"read candle history of {len(chunk)} streams"):
                async with self.db.acquire() as conn:
                    records = await conn.fetch(
                        _FETCH_MANY,
                        [k[0] for k in chunk],
                        [k[1] for k in chunk],
                        [int(bounds[k]) for k in chunk],
                        n,
                    )
            rows: dict[int, list[asyncpg.Record]] = {}
            for r in records:
                rows.setdefault(int(r["i"]) - 1, []).append(r)
            for i, recs in rows.items():
                key = chunk[i]
                recs.sort(key=lambda r: int(r["open_time"]))
                try:
                    out[key] = [
                        Candle.model_validate({c: r[c] for c in CANDLE_COLUMNS}) for r in recs
                    ]
                except ValueError as exc:
                    log.warning(
                        "candles table: %s %s has a row that is not a candle: %s", *key, exc
                    )
        return out

    async def fetch(
        self, symbol: str, interval: str, before_open_time: int | None, n: int
    ) -> list[Candle]:
        """The last ``n`` candles of a stream with ``open_time < before_open_time``
        (all of them when it is None), oldest first. DatabaseError when unreachable."""
        if n <= 0:
            return []
        bound = np.iinfo(np.int64).max if before_open_time is None else int(before_open_time)
        with db_errors(f"read candle history of {symbol} {interval}"):
            async with self.db.acquire() as conn:
                records = await conn.fetch(
                    f"""
                    SELECT {_COLS} FROM candles
                    WHERE symbol = $1 AND interval = $2 AND open_time < $3
                    ORDER BY open_time DESC LIMIT $4
                    """,
                    symbol,
                    interval,
                    bound,
                    n,
                )
        return [Candle.model_validate(dict(r)) for r in reversed(records)]

    async def latest_open_time(self, symbol: str, interval: str) -> int | None:
        with db_errors(f"read candle history of {symbol} {interval}"):
            async with self.db.acquire() as conn:
                value = await conn.fetchval(
                    "SELECT max(open_time) FROM candles WHERE symbol = $1 AND interval = $2",
                    symbol,
                    interval,
                )
        return None if value is None else int(value)


def _records(frame: pd.DataFrame) -> Iterable[tuple[object, ...]]:
    cols = [frame[c].to_numpy() for c in CANDLE_COLUMNS if c != "spread_bps"]
    spread = frame["spread_bps"].to_numpy(dtype=float) if "spread_bps" in frame else None
    for i in range(len(frame)):
        row = [c[i].item() if hasattr(c[i], "item") else c[i] for c in cols]
        s = None if spread is None or np.isnan(spread[i]) else float(spread[i])
        yield (*row, s)


async def load_candles(conn: asyncpg.Connection, frame: pd.DataFrame) -> int:
    """Insert a frame of candles (``read_klines`` columns); returns how many were new.

    COPY into a temporary table, then one ``INSERT ... ON CONFLICT DO NOTHING``, so loading
    the same file twice leaves one row per candle.
    """
    missing = [c for c in CANDLE_COLUMNS if c != "spread_bps" and c not in frame]
    if missing:
        raise ValueError(f"candle frame lacks columns {missing}")
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMPORARY TABLE candles_load (LIKE candles INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        await conn.copy_records_to_table(
            "candles_load", records=list(_records(frame)), columns=list(CANDLE_COLUMNS)
        )
        tag = await conn.execute(
            f"INSERT INTO candles ({_COLS}) SELECT {_COLS} FROM candles_load "
            "ON CONFLICT (symbol, interval, open_time) DO NOTHING"
        )
    return int(tag.rsplit(" ", 1)[-1])


async def load_klines_files(db: Database, paths: Iterable[str | Path]) -> dict[str, int]:
    """Load exchange klines files (validated by ``read_klines``); new rows per file."""
    out: dict[str, int] = {}
    for path in paths:
        frame = read_klines(path)
        with db_errors(f"load candles from {path}"):
            async with db.acquire() as conn:
                out[str(path)] = await load_candles(conn, frame)
    return out

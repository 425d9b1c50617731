"""The schema, as numbered migrations applied once each (``stream-infer db migrate``).

Every statement is idempotent (``IF NOT EXISTS``), so ``migrate(repair=True)`` can run them
all again to recreate a table that was dropped under a running service. Two processes that
migrate at once serialise on a transaction-level advisory lock; the whole run is one
transaction, so a failure leaves the schema as it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from stream_infer._errors import DatabaseError
from stream_infer.candles import CANDLE_COLUMNS

__all__ = [
    "CANDLES_CHANNEL",
    "CHANNEL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "migrate",
    "schema_version",
]

log = logging.getLogger(__name__)

# NOTIFY channel of ``activate``; the payload is the new active_ensembles.id.
CHANNEL = "stream_infer_ensemble"

# NOTIFY channel of the insert trigger on ``candles`` (migration 2): one empty notification
# per statement that inserts, so a bulk load wakes a listener once, not once per row; the
# listener (``run --source postgres``) reads what is new itself.
CANDLES_CHANNEL = "stream_infer_candles"
# Transaction-local setting the row trigger raises for an insert behind its stream's newest.
BEHIND_FLAG = "stream_infer.candles_behind"

# pg_advisory_xact_lock keys: arbitrary, fixed, distinct ("si" + purpose).
MIGRATE_LOCK = 0x73690001
ACTIVATE_LOCK = 0x73690002


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


_V1 = """
CREATE TABLE IF NOT EXISTS active_ensembles (
    id               bigserial PRIMARY KEY,
    version          text NOT NULL,
    mamba_path       text NOT NULL,
    lgbm_models_dir  text NOT NULL,
    norm_params_path text NOT NULL,
    mamba_weight     double precision NOT NULL CHECK (mamba_weight >= 0 AND mamba_weight <= 1),
    horizons         integer[] NOT NULL CHECK (cardinality(horizons) > 0),
    seq_len          integer NOT NULL CHECK (seq_len > 0),
    feature_version  integer NOT NULL,
    is_active        boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now()
);
-- At most one active row: the active row is the configuration.
CREATE UNIQUE INDEX IF NOT EXISTS active_ensembles_one_active
    ON active_ensembles (is_active) WHERE is_active;

CREATE TABLE IF NOT EXISTS predictions (
    symbol          text NOT NULL,
    interval        text NOT NULL,
    open_time       bigint NOT NULL,
    ensemble_id     text NOT NULL,
    version         text,
    feature_version integer NOT NULL,
    horizons        integer[] NOT NULL,
    predictions     double precision[] NOT NULL,
    confidences     double precision[] NOT NULL,
    components      jsonb NOT NULL,
    latency_ms      double precision,
    produced_at     timestamptz NOT NULL,
    inserted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, interval, open_time, ensemble_id)
);

CREATE TABLE IF NOT EXISTS candles (
    symbol          text NOT NULL,
    interval        text NOT NULL,
    open_time       bigint NOT NULL,
    close_time      bigint NOT NULL,
    open            double precision NOT NULL,
    high            double precision NOT NULL,
    low             double precision NOT NULL,
    close           double precision NOT NULL,
    volume          double precision NOT NULL,
    quote_volume    double precision NOT NULL,
    trades          bigint NOT NULL,
    taker_buy_base  double precision NOT NULL,
    taker_buy_quote double precision NOT NULL,
    spread_bps      double precision,
    PRIMARY KEY (symbol, interval, open_time)
);

-- A hypertable where TimescaleDB is installed in this database; a plain table otherwise.
-- EXECUTE keeps the call from being resolved where the function does not exist.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'SELECT create_hypertable(''candles'', ''open_time'', '
             || 'chunk_time_interval => 604800000::bigint, if_not_exists => true, '
             || 'migrate_data => true)';
    END IF;
END
$$;
"""

# Predictions from ``candles`` (``stream_infer.pgsource``):
# * the Postgres source: a named source and where it has got to in each stream (the last
#   candle it processed), and a wake-up when candles are inserted: a statement-level
#   trigger without transition tables (TimescaleDB hypertables accept it), so a COPY of a
#   month costs one notification;
# * ``candle_changes.n``: counts the statements that changed rows behind the newest of
#   their stream (an UPDATE, DELETE or TRUNCATE, or an INSERT of a row at or before its
#   stream's newest open_time: a backfill). The library call reads it to know, with one
#   row, that the rows it holds are still the table's (else it checks them one by one).
_V2 = f"""
CREATE TABLE IF NOT EXISTS candle_sources (
    name       text PRIMARY KEY,
    start      text NOT NULL CHECK (start IN ('latest', 'earliest')),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS candle_cursors (
    source     text NOT NULL REFERENCES candle_sources (name) ON DELETE CASCADE,
    symbol     text NOT NULL,
    interval   text NOT NULL,
    open_time  bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, symbol, interval)
);

CREATE TABLE IF NOT EXISTS candle_changes (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    n   bigint NOT NULL DEFAULT 0
);
INSERT INTO candle_changes (one) VALUES (true) ON CONFLICT DO NOTHING;

-- Per row, before it is inserted: is it at or before its stream's newest candle? (One
-- index probe; the flag lasts the transaction, the statement trigger below counts it.)
CREATE OR REPLACE FUNCTION stream_infer_candles_behind() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM candles c
        WHERE c.symbol = NEW.symbol AND c.interval = NEW.interval
          AND c.open_time >= NEW.open_time
    ) THEN
        PERFORM set_config('{BEHIND_FLAG}', 'on', true);
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION stream_infer_candles_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CANDLES_CHANNEL}', '');
    IF current_setting('{BEHIND_FLAG}', true) = 'on' THEN
        UPDATE candle_changes SET n = n + 1;
        PERFORM set_config('{BEHIND_FLAG}', 'off', true);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION stream_infer_candles_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE candle_changes SET n = n + 1;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS candles_behind ON candles;
CREATE TRIGGER candles_behind BEFORE INSERT ON candles
    FOR EACH ROW EXECUTE FUNCTION stream_infer_candles_behind();
DROP TRIGGER IF EXISTS candles_notify ON candles;
CREATE TRIGGER candles_notify AFTER INSERT ON candles
    FOR EACH STATEMENT EXECUTE FUNCTION stream_infer_candles_notify();
DROP TRIGGER IF EXISTS candles_changed ON candles;
CREATE TRIGGER candles_changed AFTER UPDATE OR DELETE OR TRUNCATE ON candles
    FOR EACH STATEMENT EXECUTE FUNCTION stream_infer_candles_changed();
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ensembles, predictions, candles", _V1),
    Migration(2, "candle sources, cursors, change count and the candles triggers", _V2),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

# The columns each table must have after the migrations. ``IF NOT EXISTS`` passes over a
# table of the same name made by something else; this check refuses it instead.
EXPECTED_COLUMNS: dict[str, frozenset[str]] = {
    "active_ensembles": frozenset(
        [
            "id",
            "version",
            "mamba_path",
            "lgbm_models_dir",
            "norm_params_path",
            "mamba_weight",
            "horizons",
            "seq_len",
            "feature_version",
            "is_active",
            "created_at",
        ]
    ),
    "predictions": frozenset(
        [
            "symbol",
            "interval",
            "open_time",
            "ensemble_id",
            "version",
            "feature_version",
            "horizons",
            "predictions",
            "confidences",
            "components",
            "latency_ms",
            "produced_at",
            "inserted_at",
        ]
    ),
    "candles": frozenset(CANDLE_COLUMNS),
    "candle_sources": frozenset(["name", "start", "created_at"]),
    "candle_cursors": frozenset(["source", "symbol", "interval", "open_time", "updated_at"]),
    "candle_changes": frozenset(["one", "n"]),
}


async def _verify(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        """
        SELECT table_name, column_name FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = ANY($1::text[])
        """,
        list(EXPECTED_COLUMNS),
    )
    have: dict[str, set[str]] = {}
    for r in rows:
        have.setdefault(r["table_name"], set()).add(r["column_name"])
    for table, want in EXPECTED_COLUMNS.items():
        if table not in have:
            raise DatabaseError(
                f"table {table} is missing although its migration is recorded (dropped by "
                "hand?): run `stream-infer db migrate --repair`"
            )
        missing = sorted(want - have[table])
        if missing:
            raise DatabaseError(
                f"table {table} exists but lacks columns {missing}: it was not made by "
                "these migrations; rename or drop it, then migrate again"
            )


async def schema_version(conn: asyncpg.Connection) -> int:
    """The highest applied migration, 0 on an empty database."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def migrate(conn: asyncpg.Connection, *, repair: bool = False) -> list[int]:
    """Apply the migrations not applied yet; returns their versions (empty when up to date).

    ``repair=True`` also runs the applied ones again (they are idempotent): it recreates
    objects dropped by hand without touching the rows that remain.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_version (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = {int(r["version"]) for r in await conn.fetch("SELECT version FROM schema_version")}
        newer = sorted(done - {m.version for m in MIGRATIONS})
        if newer:
            # A newer release migrated this database; running old DDL on it would be a guess.
            log.warning("database has migrations this release does not know: %s", newer)
        applied: list[int] = []
        for m in MIGRATIONS:
            if m.version in done and not repair:
                continue
            await conn.execute(m.sql)
            if m.version not in done:
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES ($1, $2)", m.version, m.name
                )
                applied.append(m.version)
                log.info("applied migration %d: %s", m.version, m.name)
        await _verify(conn)
        return applied

"""Reading streams back from the ``candles`` table for prediction, every row checked first.

Three reads, each one round trip for any number of streams:

* :func:`newest`: the streams of an interval (or of one symbol) with their newest open_time.
  Without a symbol it walks the primary key (symbol, interval, open_time) with a loose
  index scan: one index probe per stream, never a scan of the table.
* :func:`windows`: for each stream, its rows in ``[lo, hi]``, plus the newest row before
  ``lo`` (the anchor: when a window's first candles are missing, the gap the spec fills
  starts before the window).
* :func:`after`: for each stream, its first ``limit`` rows in ``(after, hi]``, and the
  :class:`Fingerprint` of its rows in ``[lo, after]`` (a row inserted, deleted or updated
  behind what a caller holds changes it).

:func:`checked` turns one stream's rows into the candles that may enter a feature stream
and the rows that may not, each with its reason (:class:`Rejected`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg
from pydantic import ValidationError

from stream_infer._errors import InvalidCandle
from stream_infer.candles import CANDLE_COLUMNS, Candle, check_candle
from stream_infer.features import MAX_GAP

__all__ = [
    "AFTER_ALL",
    "DUPLICATE",
    "After",
    "Fingerprint",
    "Rejected",
    "StreamKey",
    "after",
    "checked",
    "counted",
    "fingerprint",
    "newest",
    "stream_since_restart",
    "window_candles",
    "window_start",
    "windows",
]

StreamKey = tuple[str, str]

# The reason of a second row with the open_time of another in the same stream (possible
# only where the table lacks the primary key, e.g. one a feeder created).
DUPLICATE = "duplicate_open_time"

_COLS = ", ".join(CANDLE_COLUMNS)
# xmin: the transaction that wrote the row version; an UPDATE makes a new one.
_C_COLS = ", ".join(f"c.{c}" for c in CANDLE_COLUMNS) + ", c.xmin::text::bigint AS xmin"

# Each step finds the next (symbol, interval) after the last one through the primary key.
_NEWEST_ALL = """
WITH RECURSIVE pairs AS (
    (SELECT symbol, interval FROM candles ORDER BY symbol, interval LIMIT 1)
    UNION ALL
    SELECT n.symbol, n.interval FROM pairs p CROSS JOIN LATERAL (
        SELECT c.symbol, c.interval FROM candles c
        WHERE (c.symbol, c.interval) > (p.symbol, p.interval)
        ORDER BY c.symbol, c.interval LIMIT 1
    ) AS n
)
SELECT p.symbol, p.interval, t.open_time FROM pairs p CROSS JOIN LATERAL (
    SELECT c.open_time FROM candles c
    WHERE c.symbol = p.symbol AND c.interval = p.interval
    ORDER BY c.open_time DESC LIMIT 1
) AS t
WHERE $1::text IS NULL OR p.interval = $1::text
"""

# An open_time after every candle: a read with no upper bound.
AFTER_ALL = 1 << 62

_NEWEST_ONE = """
SELECT max(open_time) FROM candles WHERE symbol = $1 AND interval = $2
"""

_WINDOWS = f"""
SELECT q.i, w.* FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
    WITH ORDINALITY AS q(symbol, interval, lo, hi, i)
CROSS JOIN LATERAL (
    (SELECT true AS anchor, {_C_COLS} FROM candles c
     WHERE c.symbol = q.symbol AND c.interval = q.interval AND c.open_time < q.lo
     ORDER BY c.open_time DESC LIMIT 1)
    UNION ALL
    (SELECT false, {_C_COLS} FROM candles c
     WHERE c.symbol = q.symbol AND c.interval = q.interval
       AND c.open_time >= q.lo AND c.open_time <= q.hi)
) AS w
"""

_AFTER = f"""
SELECT q.i, k.n, k.x, a.* FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
    WITH ORDINALITY AS q(symbol, interval, lo, after, hi, i)
CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(c.xmin::text::bigint), 0) AS x FROM candles c
    WHERE c.symbol = q.symbol AND c.interval = q.interval
      AND c.open_time >= q.lo AND c.open_time <= q.after
) AS k
LEFT JOIN LATERAL (
    SELECT {_C_COLS} FROM candles c
    WHERE c.symbol = q.symbol AND c.interval = q.interval
      AND c.open_time > q.after AND c.open_time <= q.hi
    ORDER BY c.open_time LIMIT $6
) AS a ON true
"""

# The same where migration 2's ``candle_changes`` counts the statements that changed rows
# behind the newest of their stream: a stream whose caller saw the count as it is now
# (``known``) needs no fingerprint, and the scan of its rows is skipped (the condition
# depends on no row, so the planner gates the aggregate's scan on it).
_AFTER_COUNTED = f"""
SELECT q.i, k.n, k.x, (SELECT n FROM candle_changes) AS changes, a.*
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $7::bigint[])
    WITH ORDINALITY AS q(symbol, interval, lo, after, hi, known, i)
LEFT JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(c.xmin::text::bigint), 0) AS x FROM candles c
    WHERE c.symbol = q.symbol AND c.interval = q.interval
      AND c.open_time >= q.lo AND c.open_time <= q.after
      AND q.known IS DISTINCT FROM (SELECT n FROM candle_changes)
    HAVING q.known IS DISTINCT FROM (SELECT n FROM candle_changes)
) AS k ON true
LEFT JOIN LATERAL (
    SELECT {_C_COLS} FROM candles c
    WHERE c.symbol = q.symbol AND c.interval = q.interval
      AND c.open_time > q.after AND c.open_time <= q.hi
    ORDER BY c.open_time LIMIT $6
) AS a ON true
"""

_COUNTED = "SELECT to_regclass('candle_changes') IS NOT NULL"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A row of ``candles`` that did not reach a feature stream, and why.

    ``reason``: ``schema:<field>`` (not a candle), ``rule:<name>`` (a rule of FEATURES.md,
    e.g. ``rule:finite`` for a NaN, ``rule:low_bound``/``rule:high_bound`` for high < low,
    ``rule:open_time_grid`` off the interval grid) or ``duplicate_open_time``.
    """

    symbol: str
    interval: str
    open_time: int
    reason: str
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "interval": self.interval,
            "open_time": self.open_time,
            "reason": self.reason,
            "error": self.error,
        }

    def __str__(self) -> str:
        return (
            f"candles row {self.symbol} {self.interval} open_time {self.open_time}: "
            f"{self.reason} ({self.error})"
        )


async def newest(
    conn: asyncpg.Connection, interval: str | None, symbol: str | None = None
) -> dict[StreamKey, int]:
    """``{(symbol, interval): newest open_time}`` of every stream of ``interval`` (all
    intervals when None), or of ``symbol``'s stream only (then ``interval`` is required)."""
    if symbol is not None:
        if interval is None:
            raise ValueError("a symbol's stream needs its interval")
        value = await conn.fetchval(_NEWEST_ONE, symbol, interval)
        return {} if value is None else {(symbol, interval): int(value)}
    records = await conn.fetch(_NEWEST_ALL, interval)
    return {(r["symbol"], r["interval"]): int(r["open_time"]) for r in records}


async def windows(
    conn: asyncpg.Connection, plans: Mapping[StreamKey, tuple[int, int]]
) -> dict[StreamKey, tuple[list[asyncpg.Record], asyncpg.Record | None]]:
    """For each ``(symbol, interval): (lo, hi)``: its rows with ``lo <= open_time <= hi``,
    oldest first, and the newest row before ``lo`` (None when there is none)."""
    if not plans:
        return {}
    keys = list(plans)
    records = await conn.fetch(
        _WINDOWS,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [int(plans[k][0]) for k in keys],
        [int(plans[k][1]) for k in keys],
    )
    rows: dict[StreamKey, list[asyncpg.Record]] = {k: [] for k in keys}
    anchors: dict[StreamKey, asyncpg.Record] = {}
    for r in records:
        key = keys[int(r["i"]) - 1]
        if r["anchor"]:
            anchors[key] = r
        else:
            rows[key].append(r)
    for recs in rows.values():
        recs.sort(key=_open_time)
    return {k: (rows[k], anchors.get(k)) for k in keys}


class After(NamedTuple):
    """One stream's :func:`after` read."""

    behind: Fingerprint | None  # of its rows in [lo, after]; None: not needed (see changes)
    rows: list[asyncpg.Record]  # its rows in (after, hi], oldest first
    more: bool  # the limit cut the rows: there are more in (after, hi]
    changes: int | None  # ``candle_changes.n`` as read (None: the table has no count)


async def counted(conn: asyncpg.Connection) -> bool:
    """Whether the database counts changes behind (``candle_changes``, migration 2)."""
    return bool(await conn.fetchval(_COUNTED))


async def after(
    conn: asyncpg.Connection,
    plans: Mapping[StreamKey, tuple[int, int, int]],
    limit: int,
    *,
    known: Mapping[StreamKey, int | None] | None = None,
) -> dict[StreamKey, After]:
    """For each ``(symbol, interval): (lo, after, hi)``: the :func:`fingerprint` of its rows
    in ``[lo, after]`` and its first ``limit`` rows in ``(after, hi]``, oldest first.

    ``known`` (where the database counts changes, :func:`counted`): per stream, the count
    of changes behind its caller last saw. When it is still the count, no statement has
    changed a row behind its stream's newest since, and the fingerprint is not computed
    (``behind`` is None; ``changes`` is the count as read, in the same snapshot).

    When the limit cut the rows, those at the last open_time read are left for the next
    read: copies of one open_time are always read together (see :func:`checked`).
    """
    if not plans:
        return {}
    keys = list(plans)
    args: list[Any] = [
        [k[0] for k in keys],
        [k[1] for k in keys],
        [int(plans[k][0]) for k in keys],
        [int(plans[k][1]) for k in keys],
        [int(plans[k][2]) for k in keys],
        limit,
    ]
    if known is not None:
        args.append([known.get(k) for k in keys])
    records = await conn.fetch(_AFTER if known is None else _AFTER_COUNTED, *args)
    behind: dict[StreamKey, Fingerprint | None] = {}
    changes: dict[StreamKey, int | None] = {}
    rows: dict[StreamKey, list[asyncpg.Record]] = {}
    for r in records:
        key = keys[int(r["i"]) - 1]
        if key not in rows:
            behind[key] = None if r["n"] is None else Fingerprint(int(r["n"]), int(r["x"]))
            changes[key] = None if known is None else int(r["changes"])
            rows[key] = []
        if r["open_time"] is not None:
            rows[key].append(r)
    out: dict[StreamKey, After] = {}
    for key, got in rows.items():
        got.sort(key=_open_time)
        more = len(got) >= limit
        if more and got[0]["open_time"] != got[-1]["open_time"]:
            last = got[-1]["open_time"]
            got = [r for r in got if r["open_time"] != last]
        out[key] = After(behind[key], got, more, changes[key])
    return out


class Fingerprint(NamedTuple):
    """Rows of a stream in a range of open_times: how many, and the sum of their ``xmin``
    (the transaction that wrote each row version). A row inserted, deleted or updated in
    the range changes it; equal fingerprints mean the rows a caller read are still there."""

    rows: int
    xmin_sum: int


def fingerprint(records: Iterable[Mapping[str, Any]]) -> Fingerprint:
    """The :class:`Fingerprint` of rows as read (they carry ``xmin``)."""
    n = x = 0
    for r in records:
        n += 1
        x += int(r["xmin"])
    return Fingerprint(n, x)


def _open_time(r: asyncpg.Record) -> int:
    return int(r["open_time"])


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal rows, a NaN equal to a NaN (two identical copies of a bad row are one bad row)."""
    for col in CANDLE_COLUMNS:
        x, y = a[col], b[col]
        if x != y and not (
            isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
        ):
            return False
    return True


def _schema_reason(exc: ValidationError) -> str:
    errors = exc.errors()
    field = ".".join(str(p) for p in errors[0]["loc"]) if errors else "candle"
    return f"schema:{field}"


def checked(
    records: Iterable[Mapping[str, Any]],
    interval_ms: int,
    *,
    previous: int | None = None,
) -> tuple[list[Candle], list[Rejected]]:
    """One stream's rows (oldest first) -> (the candles that may enter its feature stream,
    the rows that may not).

    A row is refused when it is not a candle (``schema:<field>``), breaks a rule of
    FEATURES.md (``check_candle``: ``rule:<name>``), is off the interval grid counted from
    the last candle kept (``rule:open_time_grid``; ``previous``: the open_time of the last
    candle the stream holds already), or shares its open_time with another row
    (``duplicate_open_time``): of identical copies one is kept and the others refused; when
    the copies differ, every one is refused, as there is no telling which is right (the
    stream then fills that open_time as a gap, as it does for any missing candle).
    """
    rows = list(records)
    out: list[Candle] = []
    rejected: list[Rejected] = []
    last = previous
    i = 0
    while i < len(rows):
        j = i + 1
        t = rows[i]["open_time"]
        while j < len(rows) and rows[j]["open_time"] == t:
            j += 1
        group = rows[i:j]
        i = j
        if len(group) > 1:
            first = group[0]
            symbol, interval = first["symbol"], first["interval"]
            if all(_same(first, g) for g in group[1:]):
                rejected += [
                    Rejected(
                        symbol,
                        interval,
                        int(t),
                        DUPLICATE,
                        f"{len(group)} identical rows with this open_time: the first is kept",
                    )
                    for _ in group[1:]
                ]
            else:
                rejected += [
                    Rejected(
                        symbol,
                        interval,
                        int(t),
                        DUPLICATE,
                        f"{len(group)} rows with this open_time differ: none is used",
                    )
                    for _ in group
                ]
                continue
        row = group[0]
        candle, why = _candle(row)
        if candle is None:
            assert why is not None
            rejected.append(why)
            continue
        if last is not None and (candle.open_time - last) % interval_ms:
            rejected.append(
                Rejected(
                    candle.symbol,
                    candle.interval,
                    candle.open_time,
                    "rule:open_time_grid",
                    f"not a whole number of intervals ({interval_ms} ms) after the previous "
                    f"candle's {last}",
                )
            )
            continue
        out.append(candle)
        last = candle.open_time
    return out, rejected


def _candle(row: Mapping[str, Any]) -> tuple[Candle | None, Rejected | None]:
    where = (str(row["symbol"]), str(row["interval"]), int(row["open_time"]))
    try:
        candle = Candle.model_validate({c: row[c] for c in CANDLE_COLUMNS})
    except ValidationError as exc:
        return None, Rejected(*where, _schema_reason(exc), str(exc.errors()[0]["msg"]))
    try:
        check_candle(candle)
    except InvalidCandle as exc:
        return None, Rejected(*where, exc.reason, exc.message)
    return candle, None


def window_candles(
    rows: Sequence[Mapping[str, Any]],
    anchor: Mapping[str, Any] | None,
    lo: int,
    interval_ms: int,
) -> tuple[list[Candle], list[Rejected]]:
    """A :func:`windows` read of one stream -> ``checked`` candles and refused rows.

    The anchor (the row before the window) is used only when the window's first candle is
    missing (or refused): the stream then fills the missing ones as a gap from it, as a
    stream fed from the beginning did (a gap over MAX_GAP restarts it there all the same).
    """
    valid, bad = checked(rows, interval_ms)
    if anchor is not None and (not valid or valid[0].open_time != lo):
        more, bad_anchor = checked([anchor], interval_ms)
        if more and (not valid or (valid[0].open_time - more[0].open_time) % interval_ms == 0):
            valid = more + valid
        bad = bad_anchor + bad
    return valid, bad


def window_start(newest_open_time: int, need: int, interval_ms: int) -> int:
    """The open_time of the first of the ``need`` candles that end at ``newest_open_time``."""
    return newest_open_time - (need - 1) * interval_ms


def stream_since_restart(times: Sequence[int], interval_ms: int) -> tuple[int, int | None]:
    """(candles in the stream that ends at ``times[-1]``, gap-filled ones included, counted
    from its last restart; the missing candles of the gap that restarted it, or None).

    ``times``: the open_times of the candles a stream is fed, oldest first. A gap of more
    than MAX_GAP missing candles restarts a stream (FEATURES.md, Gaps).
    """
    if not times:
        return 0, None
    start = times[0]
    gap: int | None = None
    for a, b in itertools.pairwise(times):
        missing = (b - a) // interval_ms - 1
        if missing > MAX_GAP:
            start, gap = b, missing
    return (times[-1] - start) // interval_ms + 1, gap

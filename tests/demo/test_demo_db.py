"""``stream-infer demo --quick`` with DB_HOST: Postgres config, and a hot reload mid-run that the
output, the predictions and the database all show; the active row is restored afterwards."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import asyncpg
import pytest

from stream_infer.config import DatabaseSettings
from tests.conftest import REPO
from tests.demo.test_demo_cli import (
    SUMMARY,
    assert_broker_gone,
    assert_png,
    check_every_candle_predicted_once,
    clean_env,
    demo_cmd,
    read_predictions,
)

pytestmark = pytest.mark.services


def _rows(s: DatabaseSettings) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(host=s.host, port=s.port, user=s.user, database=s.name)
        try:
            return await conn.fetch(
                "SELECT id, version, is_active FROM active_ensembles ORDER BY id"
            )
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_quick_demo_with_postgres_hot_reloads_mid_run(
    tmp_path: Path, pg_settings: DatabaseSettings
) -> None:
    out_dir = tmp_path / "out"
    env = clean_env(
        DB_HOST=str(pg_settings.host),
        DB_PORT=str(pg_settings.port),
        DB_NAME=pg_settings.name,
        DB_USER=pg_settings.user,
        DB_SSLMODE="disable",
    )
    proc = subprocess.run(
        demo_cmd("--quick", "--out", str(out_dir)),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    assert_broker_gone(out)
    assert f"config: postgres postgresql://{pg_settings.user}@" in out
    a, b = "ensemble-v1-demo-a", "ensemble-v1-demo-b"
    assert re.search(rf"^hot reload: serving {b} \(was {a}\)", out, re.M), out

    m = SUMMARY.search(out)
    assert m, out
    assert m[7] == b, "the summary names the version serving at the end"
    by_version = re.search(r"^predictions by version: (.*)$", out, re.M)
    assert by_version
    counts = dict(kv.split("=") for kv in by_version[1].split())
    assert set(counts) == {a, b} and all(int(n) > 0 for n in counts.values())

    preds = read_predictions(out_dir / "predictions.jsonl")
    # every candle from the first_prediction_index(seq_len) on predicted once, by one version or the other
    check_every_candle_predicted_once(out, preds)
    assert sum(map(int, counts.values())) == len(preds) == int(m[2])
    # per symbol the switch happens once: version A up to some candle, B from the next on
    versions: dict[str, list[str]] = defaultdict(list)
    for p in sorted(preds, key=lambda p: (p.symbol, p.open_time)):
        versions[p.symbol].append(p.version)
    for symbol, vs in versions.items():
        k = vs.index(b)
        assert vs[:k] == [a] * k and vs[k:] == [b] * (len(vs) - k), symbol
        assert k > 0, f"{symbol}: no prediction of version A"
    assert {p.ensemble_id for p in preds if p.version == a} == {"1"}
    assert {p.ensemble_id for p in preds if p.version == b} == {"2"}
    assert_png(out_dir / "demo-chart.png")

    # both activations are rows; none stays active (none was before the demo)
    rows = _rows(pg_settings)
    assert [(r["id"], r["version"], r["is_active"]) for r in rows] == [
        (1, a, False),
        (2, b, False),
    ]
    assert "db: no row was active before the demo: deactivated the demo's row" in out

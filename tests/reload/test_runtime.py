"""EnsembleRuntime: the wiring a service uses (initialize + Reloader + sink)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from stream_infer.config import DatabaseSettings, ServiceSettings
from stream_infer.db import Database, activate_row
from stream_infer.reload import EnsembleRuntime
from tests.db.test_sink import _pred
from tests.reload._fakes import FakeLoader, make_model_dir, row_paths

pytestmark = pytest.mark.services


async def _activate(db: Database, d: Path) -> int:
    async with db.acquire() as conn:
        row = await activate_row(
            conn, version=d.name, mamba_weight=0.5, horizons=(1, 5, 15), seq_len=64,
            feature_version=1, **row_paths(d),
        )  # fmt: skip
    return row.id


async def test_runtime_with_database(pg_db: Database, tmp_path: Path) -> None:
    await _activate(pg_db, make_model_dir(tmp_path, "v1"))
    db_settings = pg_db.settings.model_copy(update={"write_predictions": True})
    settings = ServiceSettings(db=db_settings, models_root=str(tmp_path), reload_poll_s=30)
    async with EnsembleRuntime(settings, env={}, loader=FakeLoader()) as rt:
        provider = rt.provider
        assert provider().model_dir.name == "v1"
        assert rt.reloader is not None and rt.sink is not None
        await asyncio.wait_for(rt.reloader.connected.wait(), 5)
        rt.on_batch(SimpleNamespace(predictions=[_pred(i) for i in range(20)]))
        await _activate(pg_db, make_model_dir(tmp_path, "v2"))
        for _ in range(200):
            if provider().model_dir.name == "v2":
                break
            await asyncio.sleep(0.005)
        assert provider().model_dir.name == "v2"
    async with pg_db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM predictions") == 20


async def test_runtime_without_database(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path, "env")
    settings = ServiceSettings(db=DatabaseSettings(host=None))
    rt = EnsembleRuntime(settings, env={"ML_LGBM_MODELS_DIR": str(d)}, loader=FakeLoader())
    async with rt:
        assert rt.db is None and rt.reloader is None and rt.sink is None
        assert rt.provider().model_dir == d and rt.config is not None
        rt.on_batch(SimpleNamespace(predictions=[_pred(0)]))  # no sink: nothing to do
    async with EnsembleRuntime(settings, env={}, loader=FakeLoader()) as rt:
        assert rt.current is None and rt.config is not None and not rt.config.enabled

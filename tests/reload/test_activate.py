"""``activate``: one transaction, exactly one active row, absolute paths, NOTIFY at commit."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest

from stream_infer import ArtifactError, ConfigError
from stream_infer.db import CHANNEL, Database, activate_row, fetch_active
from stream_infer.reload import activate
from tests.reload._fakes import FakeLoader, make_model_dir, row_paths

pytestmark = pytest.mark.services


async def _active_ids(db: Database) -> list[int]:
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT id FROM active_ensembles WHERE is_active")
    return [r["id"] for r in rows]


async def test_activate_one_active_row_and_notify(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await pg_db.connect()
    await listener.add_listener(CHANNEL, lambda *a: heard.put_nowait(a[3]))
    try:
        make_model_dir(tmp_path, "e1", horizons=[1, 5], seq_len=32, mamba_weight=0.4)
        make_model_dir(tmp_path, "e2")
        monkeypatch.chdir(tmp_path)
        # a relative directory is stored absolute
        r1 = await activate(pg_db, "e1", loader=FakeLoader(), models_root=tmp_path)
        assert await asyncio.wait_for(heard.get(), 2) == str(r1.id)
        assert r1.lgbm_models_dir == str(tmp_path / "e1")
        assert os.path.isabs(r1.mamba_path) and r1.mamba_path.endswith("/e1/mamba.pt")
        assert (r1.horizons, r1.seq_len, r1.mamba_weight, r1.version) == ((1, 5), 32, 0.4, "e1")
        r2 = await activate(
            pg_db,
            tmp_path / "e2",
            weight=0.9,
            version="v-two",
            loader=FakeLoader(),
            models_root=tmp_path,
        )
        assert await asyncio.wait_for(heard.get(), 2) == str(r2.id)
        assert (r2.mamba_weight, r2.version) == (0.9, "v-two")
        assert await _active_ids(pg_db) == [r2.id]
        async with pg_db.acquire() as conn:
            assert (await fetch_active(conn)) == r2
            assert await conn.fetchval("SELECT count(*) FROM active_ensembles") == 2
    finally:
        await listener.close()


async def test_refused_before_anything_is_written(pg_db: Database, tmp_path: Path) -> None:
    root = tmp_path / "root"
    good = make_model_dir(root, "good")
    await activate(pg_db, good, loader=FakeLoader(), models_root=root)
    before = await _active_ids(pg_db)
    with pytest.raises(ConfigError, match="outside the models root"):
        await activate(
            pg_db, make_model_dir(tmp_path, "out"), loader=FakeLoader(), models_root=root
        )
    with pytest.raises(ArtifactError):
        await activate(
            pg_db, make_model_dir(root, "bad", broken="load"), loader=FakeLoader(), models_root=root
        )
    with pytest.raises(ConfigError, match="not a model directory"):
        await activate(pg_db, root / "absent", loader=FakeLoader(), models_root=root)
    with pytest.raises(ConfigError, match="weight"):
        await activate(pg_db, good, weight=1.5, loader=FakeLoader(), models_root=root)
    assert await _active_ids(pg_db) == before
    async with pg_db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM active_ensembles") == 1


async def test_failed_insert_keeps_the_old_row_active(pg_db: Database, tmp_path: Path) -> None:
    d = tmp_path / "m"
    fields = {"version": "a", "horizons": (1,), "seq_len": 8, "feature_version": 1, **row_paths(d)}
    async with pg_db.acquire() as conn:
        first = await activate_row(conn, mamba_weight=0.5, **fields)
        # the CHECK on mamba_weight fails after the UPDATE that deactivated the old row:
        # the transaction rolls back as a whole
        with pytest.raises(asyncpg.CheckViolationError):
            await activate_row(conn, mamba_weight=2.0, **fields)
    assert await _active_ids(pg_db) == [first.id]


async def test_concurrent_activations_leave_exactly_one(pg_db: Database, tmp_path: Path) -> None:
    conns = [await pg_db.connect() for _ in range(8)]
    try:
        fields = {"horizons": (1,), "seq_len": 8, "feature_version": 1, "mamba_weight": 0.5}
        rows = await asyncio.gather(
            *(
                activate_row(c, version=f"v{i}", **row_paths(tmp_path / f"m{i}"), **fields)
                for i, c in enumerate(conns)
            )
        )
    finally:
        for c in conns:
            await c.close()
    # serialised by the advisory lock: the last to commit (the highest id) is active
    assert await _active_ids(pg_db) == [max(r.id for r in rows)]


async def test_a_directory_with_a_file_linked_outside_the_root_is_refused(
    pg_db: Database, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    d = make_model_dir(root, "linked")
    outside = make_model_dir(tmp_path, "out")
    (d / "lgbm_h1.onnx").unlink()
    (d / "lgbm_h1.onnx").symlink_to(outside / "lgbm_h1.onnx")
    loader = FakeLoader()
    with pytest.raises(ConfigError, match=r"lgbm_h1\.onnx.*outside the models root"):
        await activate(pg_db, d, loader=loader, models_root=root)
    assert loader.calls == [] and await _active_ids(pg_db) == []

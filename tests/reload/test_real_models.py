"""Hot reload and ``stream-infer activate`` with the real loader and real artifacts
(``ensemble_dir``, tests/reload/conftest.py). Broken versions are copies of it with
one thing broken each."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from stream_infer import ConfigError, ModelError
from stream_infer.cli import app
from stream_infer.config import ServiceSettings
from stream_infer.db import Database, EnsembleRow, activate_row, fetch_active
from stream_infer.reload import Reloader, artifact_paths, initialize

models = pytest.importorskip("stream_infer.models")

pytestmark = pytest.mark.services


@pytest.fixture
def source(ensemble_dir: Path) -> Path:
    return ensemble_dir


def _rehash(d: Path, name: str) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m["checksums"][name] = hashlib.sha256((d / name).read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(m))


def _edit_manifest(d: Path, **changes: Any) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    (d / "manifest.json").write_text(json.dumps(m))


def _nan_reference(d: Path) -> None:
    w = np.load(d / "reference_window.npy")
    w[...] = np.nan
    np.save(d / "reference_window.npy", w)
    _rehash(d, "reference_window.npy")


def _corrupt_onnx(d: Path) -> None:
    (d / "lgbm_h1.onnx").write_bytes(b"\x08\x07not an onnx graph" * 10)
    _rehash(d, "lgbm_h1.onnx")  # past the checksum: onnxruntime itself must refuse it


def _drifted_reference(d: Path) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m["reference"]["mamba"] = [x + 1e-3 for x in m["reference"]["mamba"]]
    (d / "manifest.json").write_text(json.dumps(m))


BROKEN: dict[str, Callable[[Path], None]] = {
    "missing file": lambda d: (d / "lgbm_h5.onnx").unlink(),
    "corrupt onnx": _corrupt_onnx,
    "checksum mismatch": lambda d: (d / "mamba.pt").write_bytes(b"garbage"),
    "wrong feature version": lambda d: _edit_manifest(d, feature_version=2),
    "NaN outputs": _nan_reference,
    "check() differs from reference": _drifted_reference,
}


def _copy(
    source: Path, root: Path, name: str, breaker: Callable[[Path], None] | None = None
) -> Path:
    d = root / name
    shutil.copytree(source, d)
    if breaker is not None:
        breaker(d)
    return d


async def _insert(db: Database, d: Path, ens_like: Any) -> EnsembleRow:
    """A row as another tool (or a later file change) could leave it: no checks."""
    mamba, lgbm, norm = artifact_paths(None, d)
    async with db.acquire() as conn:
        return await activate_row(
            conn,
            version=d.name,
            mamba_path=str(mamba),
            lgbm_models_dir=str(lgbm),
            norm_params_path=str(norm),
            mamba_weight=0.5,
            horizons=ens_like.horizons,
            seq_len=ens_like.seq_len,
            feature_version=ens_like.feature_version,
        )


async def test_broken_versions_never_serve(pg_db: Database, source: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    good = models.load_ensemble(source)
    await _insert(pg_db, _copy(source, root, "v1"), good)
    _, manager = await initialize(
        pg_db, None, settings=ServiceSettings(models_root=str(root)), env={}
    )
    assert manager.current.version == "v1"
    window = np.load(source / "reference_window.npy")
    async with Reloader(pg_db, manager, poll_s=0.2) as reloader:
        await asyncio.wait_for(reloader.connected.wait(), 5)
        for i, (what, breaker) in enumerate(BROKEN.items(), start=1):
            await _insert(pg_db, _copy(source, root, f"bad{i}", breaker), good)
            t0 = time.monotonic()
            while manager.reloads_failed < i:
                assert time.monotonic() - t0 < 5, what
                await asyncio.sleep(0.01)
            assert manager.current.version == "v1", what
            assert np.isfinite(manager.current.predict(window).probabilities).all()
            print(f"\n{what}: {manager.last_error}")
        await asyncio.sleep(0.5)  # polls: none of them is tried again
        assert manager.reloads_failed == len(BROKEN) and manager.reloads_ok == 0

        latencies = []
        for name in ("v2", "v3", "v4"):
            d = _copy(source, root, name)
            t0 = time.monotonic()
            await _insert(pg_db, d, good)
            while manager.current.version != name:
                assert time.monotonic() - t0 < 1.0, "not serving within 1 s of activation"
                await asyncio.sleep(0.002)
            latencies.append(time.monotonic() - t0)
        print(
            "activate -> serving with the real loader (load + check):",
            [f"{x * 1e3:.0f} ms" for x in latencies],
        )
        assert manager.reloads_ok == 3


def test_activate_command(
    pg_db: Database, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    d = _copy(source, root, "cli")
    s = pg_db.settings
    for k, v in {
        "DB_HOST": s.host,
        "DB_PORT": str(s.port),
        "DB_NAME": s.name,
        "DB_USER": s.user,
        "DB_SSLMODE": "disable",
        "ML_MODELS_ROOT": str(root),
    }.items():
        monkeypatch.setenv(k, str(v))
    runner = CliRunner()
    res = runner.invoke(app, ["activate", "--models", str(d), "--weight", "0.3", "--version", "x1"])
    assert res.exit_code == 0, res.output
    assert "active: row 1, version x1, weight 0.3" in res.output
    # a broken copy is refused before the database is touched
    bad = _copy(source, root, "bad", BROKEN["NaN outputs"])
    res = runner.invoke(app, ["activate", "--models", str(bad)])
    assert res.exit_code != 0 and isinstance(res.exception, ModelError)
    # outside the models root
    res = runner.invoke(app, ["activate", "--models", str(source)])
    assert isinstance(res.exception, ConfigError) and "outside the models root" in str(
        res.exception
    )

    async def active() -> EnsembleRow | None:
        db = Database(s)
        try:
            async with db.acquire() as conn:
                return await fetch_active(conn)
        finally:
            await db.close()

    row = asyncio.run(active())
    assert row is not None and (row.id, row.version, row.mamba_weight) == (1, "x1", 0.3)
    assert row.mamba_path == str(d / "mamba.pt")
    assert row.norm_params_path == str(d / "normalization_params_v1.json")
    assert (row.horizons, row.seq_len) == (
        tuple(models.load_ensemble(d).horizons),
        models.load_ensemble(d).seq_len,
    )

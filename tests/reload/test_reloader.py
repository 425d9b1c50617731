"""Start-up resolution and hot reload against the real server, with a fake model loader."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from stream_infer.config import EnsembleConfig, ServiceSettings
from stream_infer.db import Backoff, Database, EnsembleRow, activate_row, deactivate
from stream_infer.reload import ModelManager, Reloader, check_hot_reload, initialize
from tests.fixtures_pg import settings_for
from tests.reload._fakes import FakeLoader, make_model_dir, row_paths
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.services


async def _activate(db: Database, d: Path, **kw: Any) -> EnsembleRow:
    fields: dict[str, Any] = {
        "version": d.name,
        "mamba_weight": 0.5,
        "horizons": (1, 5, 15),
        "seq_len": 64,
        "feature_version": 1,
        **row_paths(d),
    }
    fields.update(kw)
    async with db.acquire() as conn:
        return await activate_row(conn, **fields)


async def _until(cond: Callable[[], bool], timeout: float, step: float = 0.005) -> float:
    """Seconds until ``cond()`` held; fails the test after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - t0


def _serving(manager: ModelManager) -> str | None:
    cur = manager.current
    return None if cur is None else cur.model_dir.name


async def _init(
    db: Database | None,
    root: Path,
    loader: FakeLoader,
    env: dict[str, str] | None = None,
    toml: Path | None = None,
    **kw: Any,
) -> tuple[EnsembleConfig, ModelManager]:
    settings = ServiceSettings(models_root=str(root))
    return await initialize(db, toml, settings=settings, env=env or {}, loader=loader, **kw)


# -- start-up: the four levels ------------------------------------------------------------


async def test_priority_database_env_toml_default(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader()
    d_db, d_env, d_toml = (
        make_model_dir(tmp_path, n) for n in ("from-db", "from-env", "from-toml")
    )
    toml = tmp_path / "c.toml"
    toml.write_text(f'[ml]\nlgbm_models_dir = "{d_toml}"\nmamba_weight = 0.2\n')
    env = {"ML_LGBM_MODELS_DIR": str(d_env), "ML_ENSEMBLE_VERSION": "e1"}

    # 4. nothing anywhere: disabled, nothing loaded, no crash
    config, manager = await _init(pg_db, tmp_path, loader)
    assert (config.enabled, config.source, manager.current) == (False, "default", None)
    # 3. TOML only
    config, manager = await _init(pg_db, tmp_path, loader, toml=toml)
    assert (config.source, _serving(manager), config.mamba_weight) == ("toml", "from-toml", 0.2)
    # 2. environment over TOML, field by field (weight still from TOML)
    config, manager = await _init(pg_db, tmp_path, loader, env=env, toml=toml)
    assert (config.source, _serving(manager), config.version) == ("environment", "from-env", "e1")
    assert config.mamba_weight == 0.2 and config.sources["mamba_weight"] == "toml"
    assert manager.current.version == "e1"
    # 1. an active row wins over everything
    row = await _activate(pg_db, d_db, mamba_weight=0.7)
    config, manager = await _init(pg_db, tmp_path, loader, env=env, toml=toml)
    assert (config.source, _serving(manager), config.row_id) == ("database", "from-db", row.id)
    assert config.mamba_weight == 0.7 and manager.current.mamba_weight == 0.7
    assert manager.current.ensemble_id == str(row.id)
    assert manager.active_row_id == row.id


async def test_bad_row_at_start_falls_back(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader()
    good = make_model_dir(tmp_path, "env-good")
    bad = make_model_dir(tmp_path, "db-bad", broken="load")
    row = await _activate(pg_db, bad)
    config, manager = await _init(pg_db, tmp_path, loader, env={"ML_LGBM_MODELS_DIR": str(good)})
    assert config.source == "environment" and _serving(manager) == "env-good"
    assert manager.failed_ids == {row.id} and manager.reloads_failed == 1


async def test_database_down_at_start(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader()
    d_env, d_db = make_model_dir(tmp_path, "env"), make_model_dir(tmp_path, "db")
    await _activate(pg_db, d_db)
    with TcpProxy("127.0.0.1", pg_db.settings.port) as proxy:
        proxy.cut()
        db = Database(settings_for(pg_db.settings.name, port=proxy.port), connect_timeout=1)
        t0 = time.monotonic()
        config, manager = await _init(
            db, tmp_path, loader, env={"ML_LGBM_MODELS_DIR": str(d_env)}, db_timeout=1.0
        )
        assert time.monotonic() - t0 < 3
        assert config.source == "environment" and _serving(manager) == "env"
        # ...and the database is retried in the background until it answers
        reloader = Reloader(db, manager, poll_s=30, backoff=Backoff(0.05, 0.2))
        async with reloader:
            await asyncio.sleep(0.5)
            assert _serving(manager) == "env"
            proxy.restore()
            await _until(lambda: _serving(manager) == "db", 3)
        await db.close()


# -- hot reload ---------------------------------------------------------------------------


async def _started(
    pg_db: Database, tmp_path: Path, loader: FakeLoader, **kw: Any
) -> tuple[ModelManager, Reloader]:
    await _activate(pg_db, make_model_dir(tmp_path, "v1"))
    _, manager = await _init(pg_db, tmp_path, loader)
    assert _serving(manager) == "v1"
    reloader = Reloader(pg_db, manager, **kw)
    reloader.start()
    await asyncio.wait_for(reloader.connected.wait(), 5)
    return manager, reloader


async def test_notify_switches_within_a_second(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader()
    # polling every 60 s: only the NOTIFY can make the switch this fast
    manager, reloader = await _started(pg_db, tmp_path, loader, poll_s=60)
    swaps: list[tuple[str | None, str | None]] = []
    manager.on_swap(lambda ens, cfg: swaps.append((ens and ens.model_dir.name, cfg.version)))
    try:
        latencies = []
        for name in ("v2", "v3", "v4"):
            d = make_model_dir(tmp_path, name)
            t0 = time.monotonic()
            await _activate(pg_db, d)
            await _until(lambda name=name: _serving(manager) == name, 1.0)
            latencies.append(time.monotonic() - t0)
        print(f"\nactivate -> serving, NOTIFY path: {[f'{x * 1e3:.1f} ms' for x in latencies]}")
        assert reloader.notifications >= 3 and reloader.last_latency_s is not None
        assert swaps == [("v2", "v2"), ("v3", "v3"), ("v4", "v4")]
        assert (manager.reloads_ok, manager.reloads_failed) == (3, 0)
        # every load ran in a worker thread, never on the event loop's
        assert all(t != threading.main_thread().name for t in loader.threads[1:])
    finally:
        await reloader.stop()


async def test_polling_alone_switches_within_one_interval(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader()
    poll = 0.4
    manager, reloader = await _started(pg_db, tmp_path, loader, poll_s=poll, listen=False)
    try:
        await _activate(pg_db, make_model_dir(tmp_path, "v2"))
        waited = await _until(lambda: _serving(manager) == "v2", poll + 0.3)
        print(f"\nactivate -> serving, polling every {poll} s: {waited * 1e3:.0f} ms")
        assert reloader.notifications == 0
    finally:
        await reloader.stop()


@pytest.mark.parametrize(
    ("what", "manifest", "row"),
    [
        ("load fails", {"broken": "load"}, {}),
        ("check fails", {"broken": "check"}, {}),
        ("loader crashes", {"broken": "crash"}, {}),
        ("wrong feature version", {"feature_version": 2}, {}),
        ("row disagrees on horizons", {}, {"horizons": (1, 5)}),
        ("files missing", None, {}),
    ],
)
async def test_broken_version_never_serves_and_is_not_retried(
    pg_db: Database, tmp_path: Path, what: str, manifest: dict[str, Any] | None, row: dict[str, Any]
) -> None:
    loader = FakeLoader()
    manager, reloader = await _started(pg_db, tmp_path, loader, poll_s=0.1)
    served: list[str | None] = []
    manager.on_swap(lambda ens, cfg: served.append(ens and ens.model_dir.name))
    try:
        if manifest is None:
            bad = tmp_path / "bad"
            bad.mkdir()
        else:
            bad = make_model_dir(tmp_path, "bad", **manifest)
        await _activate(pg_db, bad, **row)
        await _until(lambda: manager.reloads_failed == 1, 2)
        calls = loader.calls.count(bad)
        await asyncio.sleep(0.5)  # five polls and the NOTIFY: no second try of the same row
        assert loader.calls.count(bad) == calls == 1
        assert _serving(manager) == "v1" and served == [], what
        assert manager.last_error
        # a new activation is tried again, and a good one serves
        await _activate(pg_db, make_model_dir(tmp_path, "v2"))
        await _until(lambda: _serving(manager) == "v2", 1)
        assert served == ["v2"]
    finally:
        await reloader.stop()


async def test_row_outside_models_root_is_refused(pg_db: Database, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    loader = FakeLoader()
    manager, reloader = await _started(pg_db, root, loader, poll_s=0.1)
    try:
        outside = make_model_dir(tmp_path, "outside")
        await _activate(pg_db, outside)
        await _until(lambda: manager.reloads_failed == 1, 2)
        assert "outside the models root" in (manager.last_error or "")
        assert outside not in loader.calls and _serving(manager) == "v1"
    finally:
        await reloader.stop()


async def test_swap_hook_can_veto(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader()
    manager, reloader = await _started(pg_db, tmp_path, loader, poll_s=0.1)

    def refuse(ens: Any, cfg: EnsembleConfig) -> None:
        raise ValueError("pipeline cannot take 128-long windows")

    manager.on_swap(refuse)
    try:
        await _activate(pg_db, make_model_dir(tmp_path, "v2"))
        await _until(lambda: manager.reloads_failed == 1, 2)
        assert _serving(manager) == "v1"
    finally:
        await reloader.stop()


async def test_event_loop_keeps_serving_during_a_slow_load(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader()
    manager, reloader = await _started(pg_db, tmp_path, loader, poll_s=60)
    loader.delay = 0.6
    gaps: list[float] = []
    seen: list[str | None] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            seen.append(_serving(manager))
            last = now

    task = asyncio.create_task(ticker())
    try:
        await _activate(pg_db, make_model_dir(tmp_path, "v2"))
        await _until(lambda: _serving(manager) == "v2", 2)
        await asyncio.sleep(0.05)  # let the ticker see the new one too
    finally:
        task.cancel()
        await reloader.stop()
    assert max(gaps) < 0.1, max(gaps)
    # old until the swap, new after it: never a mix, never nothing
    first_new = seen.index("v2")
    assert set(seen[:first_new]) == {"v1"} and set(seen[first_new:]) == {"v2"}
    assert first_new > 50  # the old one served through the 0.6 s load


async def test_reconnects_after_connection_loss(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader()
    await _activate(pg_db, make_model_dir(tmp_path, "v1"))
    with TcpProxy("127.0.0.1", pg_db.settings.port) as proxy:
        db = Database(settings_for(pg_db.settings.name, port=proxy.port), connect_timeout=1)
        _, manager = await _init(db, tmp_path, loader)
        reloader = Reloader(db, manager, poll_s=60, backoff=Backoff(0.05, 0.2))
        async with reloader:
            await asyncio.wait_for(reloader.connected.wait(), 5)
            proxy.cut()
            await _until(lambda: not reloader.connected.is_set(), 2)
            # activated while the reloader is away: its NOTIFY is lost...
            await _activate(pg_db, make_model_dir(tmp_path, "v2"))
            await asyncio.sleep(0.3)
            assert _serving(manager) == "v1"  # the old one keeps serving meanwhile
            proxy.restore()
            # ...but the reloader reads the active row as soon as it is back
            await _until(lambda: _serving(manager) == "v2", 2)
            assert reloader.reconnects >= 1
            # and LISTENs again: the next switch comes by NOTIFY
            await _activate(pg_db, make_model_dir(tmp_path, "v3"))
            await _until(lambda: _serving(manager) == "v3", 1)
            assert reloader.notifications >= 1
        await db.close()


async def test_deactivate_goes_back_to_env_then_disabled(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader()
    await _activate(pg_db, make_model_dir(tmp_path, "v1"))
    env_dir = make_model_dir(tmp_path, "env")
    _, manager = await _init(pg_db, tmp_path, loader, env={"ML_LGBM_MODELS_DIR": str(env_dir)})
    assert _serving(manager) == "v1"
    async with Reloader(pg_db, manager, poll_s=60) as reloader:
        await asyncio.wait_for(reloader.connected.wait(), 5)
        async with pg_db.acquire() as conn:
            await deactivate(conn)
        await _until(lambda: _serving(manager) == "env", 1)
        assert manager.config.source == "environment"
    _, manager = await _init(pg_db, tmp_path, loader)
    await _activate(pg_db, make_model_dir(tmp_path, "v2"))
    assert await check_hot_reload(pg_db, manager)
    async with pg_db.acquire() as conn:
        await deactivate(conn)
    assert await check_hot_reload(pg_db, manager)
    assert manager.current is None and not manager.config.enabled
    assert not await check_hot_reload(pg_db, manager)


async def test_concurrent_checks_load_once(pg_db: Database, tmp_path: Path) -> None:
    loader = FakeLoader(delay=0.2)
    _, manager = await _init(pg_db, tmp_path, loader)
    d = make_model_dir(tmp_path, "v1")
    await _activate(pg_db, d)
    checks: list[Awaitable[bool]] = [check_hot_reload(pg_db, manager) for _ in range(4)]
    assert sorted(await asyncio.gather(*checks)) == [False, False, False, True]
    assert loader.calls.count(d) == 1


async def test_stop_returns_even_if_a_cancel_is_swallowed(
    pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncio.wait_for on 3.11 can swallow a cancel that lands as its wait completes (seen
    as a test hung in stop() with the reloader still polling); stop() must not rely on the
    cancel alone. Here every check swallows the cancel, the worst case of that race."""
    import stream_infer.reload._reloader as mod

    real = mod.check_hot_reload
    swallowed = 0

    async def stubborn(*args: Any, **kw: Any) -> bool:
        nonlocal swallowed
        try:
            await asyncio.sleep(0.5)  # stop() below lands in here
        except asyncio.CancelledError:
            swallowed += 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        return await real(*args, **kw)

    monkeypatch.setattr(mod, "check_hot_reload", stubborn)
    _, reloader = await _started(pg_db, tmp_path, FakeLoader(), poll_s=0.01)
    await asyncio.sleep(0.1)
    await asyncio.wait_for(asyncio.shield(reloader.stop()), 5)
    assert swallowed >= 1, "the test did not exercise a swallowed cancel"
    assert reloader._task is None

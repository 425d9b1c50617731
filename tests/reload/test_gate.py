"""BatchGate: a hot reload's load steps take turns with the service's batches.

A step never runs while a batch is in flight; a batch that arrives during a step waits for
that one step only (never for two in a row); after a step, the next one waits for a second
batch end; an idle service does not hold steps back.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from stream_infer import ModelError
from stream_infer.config import EnsembleConfig
from stream_infer.reload import BatchGate, ModelManager, load_checked_steps
from tests.reload._fakes import FakeLoader, make_model_dir

Span = tuple[str, float, float]  # (kind, start, end), perf_counter seconds


def _steps(n: int, seconds: float, spans: list[Span], value: str = "done") -> Generator[str]:
    for i in range(n):
        t0 = time.perf_counter()
        time.sleep(seconds)  # a long C++ step, in the worker thread
        spans.append((f"step{i}", t0, time.perf_counter()))
        yield f"step{i}"
    return value


async def _service(
    gate: BatchGate, spans: list[Span], stop: asyncio.Event, period: float, work: float
) -> None:
    """Batches on a fixed schedule, like a consumer of a steady stream."""
    t_next = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
        t_next += period
        async with gate.batch():
            t0 = time.perf_counter()
            await asyncio.sleep(work)
            spans.append(("batch", t0, time.perf_counter()))


def _overlaps(a: Span, b: Span) -> bool:
    return a[1] < b[2] and b[1] < a[2]


async def test_steps_go_between_batches_one_at_a_time() -> None:
    gate = BatchGate(quiet_s=0.2)
    spans: list[Span] = []
    stop = asyncio.Event()
    service = asyncio.create_task(_service(gate, spans, stop, period=0.02, work=0.004))
    await asyncio.sleep(0.05)
    try:
        # Each step (30 ms) is longer than the batch period (20 ms): without turns, batches
        # would queue behind several steps in a row.
        result = await gate.run_steps(_steps(4, 0.03, spans))
    finally:
        stop.set()
        await service
    # a turn per yield, and one for what follows the last yield (here: nothing)
    assert result == "done" and gate.steps == 5
    steps = sorted((s for s in spans if s[0] != "batch"), key=lambda s: s[1])
    batches = sorted((s for s in spans if s[0] == "batch"), key=lambda s: s[1])
    assert len(steps) == 4
    for st in steps:
        assert not any(_overlaps(st, b) for b in batches), st
    for a, b in itertools.pairwise(steps):
        between = [x for x in batches if a[2] <= x[1] and x[2] <= b[1]]
        # the batch the step held up, then one more: the next step starts after the second
        assert len(between) >= 2, (a, b, between)
    # a batch waited for at most one step (30 ms, with some slack for a busy machine)
    assert gate.max_batch_wait_s < 0.05


async def test_an_idle_service_does_not_hold_steps_back() -> None:
    gate = BatchGate(quiet_s=0.01)
    spans: list[Span] = []
    t0 = time.perf_counter()
    assert await gate.run_steps(_steps(3, 0.0, spans, value="x")) == "x"
    # four turns (three yields and the return), each after quiet_s without a batch
    assert time.perf_counter() - t0 < 1.0 and gate.steps == 4 and gate.batches == 0


async def test_a_failing_step_propagates_and_frees_the_gate() -> None:
    gate = BatchGate(quiet_s=0.0)

    def bad() -> Generator[str, None, None]:
        yield "fine"
        raise RuntimeError("broken archive")

    with pytest.raises(RuntimeError, match="broken archive"):
        await gate.run_steps(bad())
    async with asyncio.timeout(1):
        async with gate.batch():
            pass
    assert gate.batches == 1


async def test_release_drops_the_reference_in_a_worker_thread() -> None:
    gate = BatchGate(quiet_s=0.0)
    dropped_in: list[str] = []

    class Heavy:
        def __del__(self) -> None:
            dropped_in.append(threading.current_thread().name)

    holder: list[Any] = [Heavy()]
    await gate.release(holder)
    assert holder == [] and dropped_in and dropped_in[0] != threading.current_thread().name


async def test_manager_loads_in_turns_once_serving(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path, "m")
    config = EnsembleConfig(enabled=True, source="default", lgbm_models_dir=str(d))
    manager = ModelManager(config, loader=FakeLoader(), gate=BatchGate(quiet_s=0.0), starting=True)
    await manager.load(config)  # at start: nothing serves, no turns
    assert manager.gate.steps == 0
    manager.finish_start()
    ens = await manager.load(config)
    # a plain loader is one step, then check() and the row's promises are another
    assert ens.model_dir == d and manager.gate.steps == 2


def test_load_checked_steps_checks_after_the_loader(tmp_path: Path) -> None:
    d = make_model_dir(tmp_path, "m", seq_len=64)
    config = EnsembleConfig(enabled=True, source="default", lgbm_models_dir=str(d), seq_len=7)

    def loader(model_dir: Path, **kw: Any) -> Generator[str, None, Any]:
        yield "one"
        yield "two"
        return FakeLoader()(Path(model_dir), **kw)

    steps = load_checked_steps(loader, config)
    assert [next(steps), next(steps)] == ["one", "two"]
    with pytest.raises(ModelError, match="seq_len"):
        next(steps)  # the loaded model disagrees with the row (seq_len 64, row 7)

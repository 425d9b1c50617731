"""Turns between the service's batches and the steps of a hot reload.

Why: the new ensemble loads in a worker thread beside the serving event loop, and two of
its steps are long C++ calls that hold the GIL throughout (torch.jit.load and
torch.jit.freeze: ~10 ms each here, 17-30 ms on a busy machine). A live batch releases the
GIL in every torch/ONNX Runtime call and socket operation; left to the GIL alone, the
loading thread takes it for a whole step each time, and one batch can wait for several
steps in a row. Measured before this gate (2 cores, a candle stream at 250/s): batches held
up 20-30 ms while jit.load and freeze ran, 26-35 ms from produce to the broker's ack.

So the service holds the gate around each batch (``Service(gate=...)``) and a step holds it
while it runs: no step starts while a batch is in flight, and a batch that arrives during a
step waits for that one step, then runs alone. A step starts right after a batch ended,
the longest gap before the next one; after a step, the batch it held up does not count
(the next records may already be waiting when it ends): the step after waits for the
second batch end. An idle service (no batch end for ``quiet_s``) does not hold steps back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Generator
from typing import Any, TypeVar, cast

from stream_infer._steps import advance

__all__ = ["BatchGate"]

T = TypeVar("T")


class BatchGate:
    """Alternates the service's batches with background steps (see the module docstring).

    ``batch()`` is what the service holds around a batch; ``run_steps(gen)`` runs a step
    generator (``stream_infer.models.load_ensemble_steps``) in a worker thread, one step per
    turn; ``release(holder)`` drops a reference in a turn. Counters: ``batches``, ``steps``,
    and ``max_batch_wait_s``, the longest a batch waited for a step to finish.
    """

    def __init__(self, *, quiet_s: float = 0.025) -> None:
        if quiet_s < 0:
            raise ValueError("quiet_s must be >= 0")
        self.quiet_s = quiet_s
        self.batches = 0
        self.steps = 0
        self.max_batch_wait_s = 0.0
        # Held by a batch or by a step. asyncio.Lock wakes waiters in FIFO order, so a batch
        # that waits for a step gets the gate before the step after it.
        self._lock = asyncio.Lock()
        self._ended: asyncio.Event | None = None
        self._batches_after_step = -2  # ``batches`` when the last step ended

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Around one batch of the service: waits for a step in progress, if any."""
        t0 = time.perf_counter()
        async with self._lock:
            waited = time.perf_counter() - t0
            if waited > self.max_batch_wait_s:
                self.max_batch_wait_s = waited
            yield
        self.batches += 1
        if self._ended is not None:
            self._ended.set()

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[None]:
        """One background step's turn (the rule is in the module docstring); no batch starts
        until the body is done."""
        target = max(self.batches + 1, self._batches_after_step + 2)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.quiet_s
        try:
            while self.batches < target:
                ended = self._ended = asyncio.Event()
                try:
                    async with asyncio.timeout_at(deadline):
                        await ended.wait()
                except TimeoutError:
                    break  # idle: no batch ended for quiet_s
                deadline = loop.time() + self.quiet_s
        finally:
            self._ended = None
        async with self._lock:
            try:
                yield
            finally:
                self.steps += 1
                self._batches_after_step = self.batches

    async def run_steps(self, steps: Generator[Any, None, T]) -> T:
        """Drive ``steps`` to its end in a worker thread, one step per turn; its return value.

        What a step raises propagates. Cancelled mid-step, the thread finishes that step
        alone (a thread cannot be interrupted) and the generator is not advanced again.
        """
        while True:
            async with self.step():
                done, value = await asyncio.to_thread(advance, steps)
            if done:
                return cast(T, value)

    async def release(self, holder: list[Any]) -> None:
        """Empty ``holder`` in a worker thread, in a turn: when it held the last reference to
        an ensemble, its TorchScript module and ONNX Runtime session are destroyed there
        (3-10 ms holding the GIL), not in the service's next batch."""
        async with self.step():
            await asyncio.to_thread(holder.clear)

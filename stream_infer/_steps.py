"""Step generators, driven: a long job written as a generator that yields between its steps
(``stream_infer.models.load_ensemble_steps``) and returns its result.

``run_steps`` runs one to its end at once; ``advance`` runs one step (what
``stream_infer.reload.BatchGate`` does in a worker thread, one step per turn).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar, cast

__all__ = ["advance", "run_steps"]

T = TypeVar("T")


def advance(steps: Generator[Any, None, T]) -> tuple[bool, T | None]:
    """Run the next step: (False, None), or (True, the result) once the generator returned.

    StopIteration cannot travel through a Future (asyncio refuses it): it becomes a value.
    """
    try:
        next(steps)
    except StopIteration as stop:
        return True, cast(T, stop.value)
    return False, None


def run_steps(steps: Generator[Any, None, T]) -> T:
    """Run a step generator to its end; returns what it returns."""
    while True:
        done, value = advance(steps)
        if done:
            return cast(T, value)

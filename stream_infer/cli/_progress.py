"""A live status line for long commands whose work reports in steps (train, evaluate)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import typer
from rich.console import Console


@contextlib.contextmanager
def status(label: str) -> Iterator[Callable[[str], None]]:
    """Yields a ``progress(message)`` callback: a spinner with the latest step on a terminal,
    and every step as a plain line (so logs and CI keep the record)."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield typer.echo
        return
    with console.status(label) as live:

        def progress(message: str) -> None:
            live.update(f"{label}: {message}")
            console.log(message)

        yield progress

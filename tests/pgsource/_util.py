"""Helpers: klines files cut from the real months, the CLI against a test database, and
replay's predictions to compare with."""

from __future__ import annotations

import asyncio
import gzip
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from stream_infer.config import DatabaseSettings

HEADER_START = "open_time"


def klines_lines(src: Path) -> tuple[str, list[str]]:
    """(header line, data lines) of a klines file."""
    with gzip.open(src, "rt") as f:
        lines = f.read().splitlines(keepends=True)
    if lines and lines[0].startswith(HEADER_START):
        return lines[0], lines[1:]
    return "", lines


def cut(src: Path, dst_dir: Path, rows: Iterable[int], tag: str) -> Path:
    """A klines file of the given rows (0-based) of ``src``, named so that ``read_klines``
    finds its symbol and interval (``SYMBOL-1m-<tag>.csv``)."""
    header, lines = klines_lines(src)
    symbol, interval = src.name.split("-")[:2]
    dst = dst_dir / f"{symbol}-{interval}-{tag}.csv"
    dst.write_text(header + "".join(lines[i] for i in rows))
    return dst


def count_rows(src: Path) -> int:
    return len(klines_lines(src)[1])


def db_env(settings: DatabaseSettings) -> dict[str, str]:
    return {
        "DB_HOST": str(settings.host),
        "DB_PORT": str(settings.port),
        "DB_NAME": settings.name,
        "DB_USER": settings.user,
        "DB_SSLMODE": "disable",
    }


async def cli(monkeypatch: pytest.MonkeyPatch, settings: DatabaseSettings, *args: str) -> Result:
    """``stream-infer ARGS`` against the test database, in a thread (commands run their own
    event loop); stdout and stderr apart."""
    from stream_infer.cli import app

    for k, v in db_env(settings).items():
        monkeypatch.setenv(k, v)
    runner = CliRunner(mix_stderr=False) if _has_mix_stderr() else CliRunner()
    return await asyncio.to_thread(runner.invoke, app, list(args))


def _has_mix_stderr() -> bool:
    import inspect

    return "mix_stderr" in inspect.signature(CliRunner.__init__).parameters


def replay(paths: Sequence[Path], ensemble: Any) -> dict[tuple[str, int], Any]:
    """{(symbol, open_time): Prediction} of ``replay_klines`` over ``paths`` (the offline
    twin of the service: same decoder, rules, streams and model call)."""
    from stream_infer.events import decode_prediction
    from stream_infer.pipeline import Pipeline, replay_klines

    out = io.BytesIO()
    replay_klines(list(paths), Pipeline(ensemble), out)
    preds = [decode_prediction(line) for line in out.getvalue().splitlines()]
    got = {(p.symbol, p.open_time): p for p in preds}
    assert len(got) == len(preds), "replay predicted a candle twice"
    return got


def assert_same(got: Any, want: Any, tol: float = 1e-6) -> None:
    """The same event (symbol, interval, open_time, ensemble, horizons); every probability
    and component within ``tol``."""
    assert (got.symbol, got.interval, got.open_time) == (want.symbol, want.interval, want.open_time)
    assert (got.ensemble_id, got.version, tuple(got.horizons)) == (
        want.ensemble_id,
        want.version,
        tuple(want.horizons),
    )
    for a, b in zip(got.predictions, want.predictions, strict=True):
        assert abs(a - b) <= tol, (got.symbol, got.open_time, got.predictions, want.predictions)
    for a, b in zip(got.confidences, want.confidences, strict=True):
        assert abs(a - b) <= tol
    for name, comp in want.components.items():
        for a, b in zip(got.components[name], comp, strict=True):
            assert abs(a - b) <= tol, (name, got.symbol, got.open_time)

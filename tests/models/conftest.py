"""Fixtures: a short real stream and a tiny ensemble trained on it (once per session)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tests.conftest import DATA

NEAR = DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz"
HEAD_ROWS = 3000


def head_file(src: Path, dst_dir: Path, rows: int, name: str) -> Path:
    """The first ``rows`` candles of ``src`` as a plain CSV named for klines_meta."""
    with gzip.open(src, "rt") as f:
        lines = [next(f) for _ in range(rows + 1)]
    # Keep the header line when there is one.
    lines = lines[: rows + 1] if not lines[0][0].isdigit() else lines[:rows]
    dst = dst_dir / name
    dst.write_text("".join(lines))
    return dst


@pytest.fixture(scope="session")
def near_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return head_file(NEAR, tmp_path_factory.mktemp("klines"), HEAD_ROWS, "NEARUSDT-1m-head.csv")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, near_head: Path):  # type: ignore[no-untyped-def]
    """A tiny ensemble trained on 3000 real candles: its TrainResult (models in memory)."""
    from stream_infer.models import TrainConfig, train_ensemble

    out = tmp_path_factory.mktemp("tiny") / "ens"
    return train_ensemble([near_head], out, TrainConfig.tiny(version="tiny-test"))

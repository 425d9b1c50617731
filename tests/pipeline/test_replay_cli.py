"""``stream-infer replay`` wiring, with a fake ensemble standing in for load_ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from typer.testing import CliRunner

from stream_infer.cli import _replay as replay_cli
from stream_infer.cli import app
from tests.conftest import DATA
from tests.pipeline.fakes import FakeEnsemble

NEAR = DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz"


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    loaded: list[Path] = []

    def load(path: Path, ensemble_id: str | None, threads: int) -> Any:
        loaded.append(path)
        return FakeEnsemble(seq_len=8)

    monkeypatch.setattr(replay_cli, "_load_ensemble", load)
    return loaded


def test_replay_command_writes_predictions_and_dead_letters(
    tmp_path: Path, fake_models: list[Path]
) -> None:
    df = pd.read_csv(NEAR).iloc[:500]
    df.loc[450, "low"] = -1.0
    a = tmp_path / "NEARUSDT-1m-2023-02.csv"
    df.to_csv(a, index=False)
    b = tmp_path / "ABCUSDT-1m-2023-02.csv"
    df.iloc[:430].to_csv(b, index=False)
    out, dlq = tmp_path / "out" / "p.jsonl", tmp_path / "dead.jsonl"
    args = ["replay", "--models", str(tmp_path / "m"), "--out", str(out), "--dlq", str(dlq)]
    result = CliRunner().invoke(app, [*args, "--data", str(a), str(b), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert fake_models == [tmp_path / "m"]
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    # readiness: index first_prediction_index(8) on; the bad candle (index 450) is a gap of one, filled
    near = [x for x in lines if x["symbol"] == "NEARUSDT"]
    assert len(near) == 500 - 406 - 1 and near[0]["open_time"] == int(df["open_time"].iloc[406])
    assert len([x for x in lines if x["symbol"] == "ABCUSDT"]) == 430 - 406
    (dead,) = [orjson.loads(x) for x in dlq.read_bytes().splitlines()]
    assert dead["reason"] == "rule:price_positive"
    assert "replayed 930 candles from 2 files" in result.output


def test_replay_command_needs_files(tmp_path: Path, fake_models: list[Path]) -> None:
    result = CliRunner().invoke(
        app, ["replay", "--models", str(tmp_path), "--out", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code != 0

"""``stream-infer features``: writes Parquet or CSV equal to batch_features; bad rows end in one line."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from stream_infer.candles import read_klines
from stream_infer.cli import app, main
from stream_infer.features import FEATURE_NAMES, batch_features
from tests.conftest import DATA

BTC = DATA / "klines" / "BTCUSDT-1m-2023-01-head.csv.gz"


@pytest.fixture(scope="module")
def btc_batch() -> pd.DataFrame:
    return batch_features(read_klines(BTC))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_writes_the_batch_features(tmp_path: Path, suffix: str, btc_batch: pd.DataFrame) -> None:
    out = tmp_path / f"f{suffix}"
    res = CliRunner().invoke(app, ["features", str(BTC), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "5738 candles" in res.output
    got = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out, index_col="open_time")
    assert list(got.columns) == [*FEATURE_NAMES, "synthetic"]
    assert not got["synthetic"].any()
    np.testing.assert_array_equal(got.index.to_numpy(), btc_batch.index.to_numpy())
    # CSV floats are written as shortest round-trip reprs: equality is exact either way
    np.testing.assert_array_equal(got[list(FEATURE_NAMES)].to_numpy(), btc_batch.to_numpy())


def test_ready_only_and_bad_suffix(tmp_path: Path, btc_batch: pd.DataFrame) -> None:
    out = tmp_path / "ready.csv.gz"
    res = CliRunner().invoke(app, ["features", str(BTC), "-o", str(out), "--ready-only"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out)) == len(btc_batch.dropna())
    res = CliRunner().invoke(app, ["features", str(BTC), "-o", str(tmp_path / "x.json")])
    assert res.exit_code != 0


def test_a_bad_row_ends_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with gzip.open(BTC, "rt") as fh:
        lines = fh.read().splitlines()
    cells = lines[5].split(",")
    cells[3] = str(float(cells[4]) + 100)  # low above close
    lines[5] = ",".join(cells)
    bad = tmp_path / "BTCUSDT-1m-2023-01-bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(
        sys, "argv", ["stream-infer", "features", str(bad), "-o", str(tmp_path / "o.csv")]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: row 6: low <= min(open, close)") and "rule=low_bound" in err[0]
    assert not (tmp_path / "o.csv").exists()

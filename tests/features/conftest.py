"""Real candles and the golden file for the feature tests (loaded once per session)."""

from __future__ import annotations

import pandas as pd
import pytest

from stream_infer.candles import read_klines
from tests.conftest import DATA

NEAR_MONTH = DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz"
GOLDEN = DATA / "golden" / "NEARUSDT-1m-2023-02-first3000.features_v1.csv.gz"


@pytest.fixture(scope="session")
def near_month() -> pd.DataFrame:
    """The whole of NEARUSDT 1m 2023-02 (40,320 real candles, no gaps)."""
    return read_klines(NEAR_MONTH)


@pytest.fixture(scope="session")
def golden() -> pd.DataFrame:
    """Feature rows from an independent implementation for the month's first 3000 candles."""
    return pd.read_csv(GOLDEN, index_col="open_time")

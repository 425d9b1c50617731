"""Per-candle cost of the core without the model (run with ``pytest -m slow -s``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from stream_infer.candles import read_klines
from stream_infer.events import Prediction, decode_candle, encode_prediction
from stream_infer.pipeline import Inbound, Pipeline
from tests.conftest import DATA
from tests.events.test_candle_codec import KLINE, OURS
from tests.events.test_prediction_dead_letter import FIELDS
from tests.pipeline.fakes import FakeEnsemble, FakeResult

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def median_us(f: Callable[[], object], number: int, repeat: int = 7) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            f()
        runs.append((time.perf_counter() - t) / number * 1e6)
    return statistics.median(runs)


class ConstantModel(FakeEnsemble):
    """A model that costs nothing: what remains is the pipeline's own cost."""

    def predict(self, windows: np.ndarray) -> FakeResult:
        z = np.full((len(windows), len(self.horizons)), 0.6)
        return FakeResult(z, z, z, z)


def test_bench_codec() -> None:
    ours, kline = orjson.dumps(OURS), orjson.dumps(KLINE)
    p = Prediction(**FIELDS)
    rows = {
        "decode_candle (our JSON)": median_us(lambda: decode_candle(ours), 20000),
        "decode_candle (Binance kline)": median_us(lambda: decode_candle(kline), 20000),
        "encode_prediction (orjson)": median_us(lambda: encode_prediction(p), 20000),
        "Prediction.model_dump_json": median_us(lambda: p.model_dump_json(), 20000),
        "Prediction(...) (validated)": median_us(lambda: Prediction(**FIELDS), 20000),
    }
    for name, us in rows.items():
        print(f"{name:34s} median {us:7.2f} us")
    assert rows["decode_candle (our JSON)"] < 100


def test_bench_core_per_candle() -> None:
    df = read_klines(DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz").iloc[:3000]
    values = []
    for r in df.to_dict("records"):
        r["spread_bps"] = None
        values.append(orjson.dumps(r))
    warm, live = values[:2000], values[2000:]
    for batch_size in (1, 16, 64):
        for ens in (None, ConstantModel(seq_len=64)):
            runs = []
            for _ in range(5):
                pipe = Pipeline(ens)
                pipe.process([Inbound(v, 0, i, 0.0) for i, v in enumerate(warm)])
                t = time.perf_counter()
                for k in range(0, len(live), batch_size):
                    pipe.process(
                        [Inbound(v, 0, k + i, 0.0) for i, v in enumerate(live[k : k + batch_size])]
                    )
                runs.append((time.perf_counter() - t) / len(live) * 1e6)
            label = "inference disabled" if ens is None else "constant model, seq_len 64"
            print(
                f"core, batch {batch_size:2d}, {label:28s} median {statistics.median(runs):7.2f} us/candle"
            )

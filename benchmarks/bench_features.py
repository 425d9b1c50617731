"""Per-candle cost of StreamingFeatures.update against recomputing features naively.

Run ``python benchmarks/bench_features.py`` (or import and call ``run()``). Streaming: a real
month of 1m candles, warmed on the first ``tail`` candles, then every other candle timed on
its own (``update`` includes ``check_candle``). Naive, measured in the same run on evenly
spaced candles: (a) ``batch_features`` over the last ``tail`` candles, (b) a pandas
rolling/ewm implementation over the same tail, as a service without a streaming path would do.
Times are medians (the machine is shared); p99 is reported for the streaming path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baseline import pandas_features  # noqa: E402

from stream_infer.candles import Candle, check_candle, read_klines  # noqa: E402
from stream_infer.features import (  # noqa: E402
    FEATURE_NAMES,
    StreamingFeatures,
    batch_features,
)

DEFAULT_FILE = REPO / "tests" / "data" / "klines" / "NEARUSDT-1m-2023-02.csv.gz"


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def run(
    file: str | Path = DEFAULT_FILE,
    tail: int = 512,
    samples: int = 150,
    keep_rows: int = 64,
) -> dict[str, Any]:
    """Measure and return the numbers (microseconds); see the module docstring."""
    candles = read_klines(file)
    records = candles.to_dict("records")
    ns = time.perf_counter_ns

    sf = StreamingFeatures(keep_rows=keep_rows)
    sf.warm(records[:tail])
    stream_us: list[float] = []
    rows = {}
    for i in range(tail, len(records)):
        rec = records[i]
        t0 = ns()
        vec = sf.update(rec)
        stream_us.append((ns() - t0) / 1e3)
        rows[i] = vec
    objects = [Candle(**{**rec, "spread_bps": None}) for rec in records]
    sf_obj = StreamingFeatures(keep_rows=keep_rows)
    sf_obj.warm(objects[:tail])
    object_us: list[float] = []
    for obj in objects[tail:]:
        t0 = ns()
        sf_obj.update(obj)
        object_us.append((ns() - t0) / 1e3)
    check_us: list[float] = []
    for rec in records[tail:]:
        t0 = ns()
        check_candle(rec)
        check_us.append((ns() - t0) / 1e3)

    picks = np.linspace(tail, len(records) - 1, samples).astype(int)
    batch_us: list[float] = []
    pandas_us: list[float] = []
    pandas_err = np.zeros(len(FEATURE_NAMES))
    batch_err = np.zeros(len(FEATURE_NAMES))
    for i in picks:
        t0 = ns()
        window = candles.iloc[i - tail + 1 : i + 1]
        b = batch_features(window).to_numpy()[-1]
        batch_us.append((ns() - t0) / 1e3)
        t0 = ns()
        window = candles.iloc[i - tail + 1 : i + 1]
        p = pandas_features(window)
        pandas_us.append((ns() - t0) / 1e3)
        want = rows[i]
        assert want is not None
        scale = np.maximum(1.0, np.abs(want))
        pandas_err = np.maximum(pandas_err, np.abs(p - want) / scale)
        batch_err = np.maximum(batch_err, np.abs(b - want) / scale)

    med = statistics.median
    out: dict[str, Any] = {
        "file": Path(file).name,
        "candles": len(records),
        "timed_updates": len(stream_us),
        "keep_rows": keep_rows,
        "stream_update_us_median": med(stream_us),
        "stream_update_us_p99": _pct(stream_us, 99),
        "stream_update_us_mean": statistics.fmean(stream_us),
        "stream_update_candle_objects_us_median": med(object_us),
        "check_candle_us_median": med(check_us),
        "naive_tail": tail,
        "naive_samples": len(picks),
        "naive_batch_features_us_median": med(batch_us),
        "naive_pandas_rolling_us_median": med(pandas_us),
        "ratio_batch_features_over_stream": med(batch_us) / med(stream_us),
        "ratio_pandas_rolling_over_stream": med(pandas_us) / med(stream_us),
        "naive_batch_features_max_err": float(batch_err.max()),
        "naive_pandas_max_err": float(pandas_err.max()),
        "naive_pandas_worst_feature": FEATURE_NAMES[int(pandas_err.argmax())],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    return out


def report(res: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"features benchmark: {res['file']}, {res['candles']} candles, python {res['python']}, {res['cpus']} cpus",
            f"StreamingFeatures.update (keep_rows={res['keep_rows']}, {res['timed_updates']} updates, warm):",
            f"  median {res['stream_update_us_median']:.1f} us   p99 {res['stream_update_us_p99']:.1f} us"
            f"   mean {res['stream_update_us_mean']:.1f} us   (of which check_candle median {res['check_candle_us_median']:.1f} us)",
            f"  the same with Candle (pydantic) objects instead of dicts: median {res['stream_update_candle_objects_us_median']:.1f} us",
            f"naive, recompute the last {res['naive_tail']} candles per new candle ({res['naive_samples']} samples):",
            f"  batch_features on the tail   median {res['naive_batch_features_us_median']:.0f} us"
            f"   = {res['ratio_batch_features_over_stream']:.0f}x streaming   (max err vs streaming {res['naive_batch_features_max_err']:.1e})",
            f"  pandas rolling/ewm           median {res['naive_pandas_rolling_us_median']:.0f} us"
            f"   = {res['ratio_pandas_rolling_over_stream']:.0f}x streaming   (max err vs streaming {res['naive_pandas_max_err']:.1e}, worst {res['naive_pandas_worst_feature']})",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--file", default=str(DEFAULT_FILE))
    ap.add_argument("--tail", type=int, default=512)
    ap.add_argument("--samples", type=int, default=150)
    ap.add_argument("--keep-rows", type=int, default=64)
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args()
    res = run(args.file, args.tail, args.samples, args.keep_rows)
    print(json.dumps(res, indent=2) if args.json else report(res))


if __name__ == "__main__":
    main()

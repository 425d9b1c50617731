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
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stream_infer.candles import Candle, check_candle, read_klines  # noqa: E402
from stream_infer.features import (  # noqa: E402
    FEATURE_NAMES,
    StreamingFeatures,
    batch_features,
)

DEFAULT_FILE = REPO / "tests" / "data" / "klines" / "NEARUSDT-1m-2023-02.csv.gz"


def _z(x: pd.Series, n: int) -> pd.Series:
    mean = x.rolling(n).mean()
    sd = x.rolling(n).std()
    return ((x - mean) / sd).where(sd > 1e-10 * np.maximum(1.0, mean.abs()), 0.0)


def naive_pandas_features(df: pd.DataFrame, rows: int = 1) -> np.ndarray:
    """The 27 features of the last ``rows`` candles of ``df`` with pandas rolling/ewm (naive
    service): shape (27,) for one row, (rows, 27) otherwise."""
    o, h, lo, c = df["open"], df["high"], df["low"], df["close"]
    v, q, n, tb = df["volume"], df["quote_volume"], df["trades"].astype(float), df["taker_buy_base"]
    c1 = c.shift(1)
    r = np.log(c / c1)
    d = c.diff()
    g = d.clip(lower=0).iloc[1:].ewm(alpha=1 / 14, adjust=False).mean()
    los = (-d).clip(lower=0).iloc[1:].ewm(alpha=1 / 14, adjust=False).mean()
    e12 = c.ewm(alpha=2 / 13, adjust=False).mean()
    e26 = c.ewm(alpha=2 / 27, adjust=False).mean()
    m = e12 - e26
    sig = m.ewm(alpha=0.2, adjust=False).mean()
    tr = pd.concat([h - lo, (h - c1).abs(), (lo - c1).abs()], axis=1).max(axis=1)
    atr = tr.iloc[1:].ewm(alpha=1 / 14, adjust=False).mean()
    tbr = (tb / v).where(v > 0, 0.5)
    r0, r1 = np.log(h.shift(1) / lo.shift(1)), np.log(h / lo)
    beta = r0**2 + r1**2
    gamma = np.log(np.maximum(h.shift(1), h) / np.minimum(lo.shift(1), lo)) ** 2
    k = 3 - 2 * np.sqrt(2)
    alpha = (np.sqrt(2 * beta) - np.sqrt(beta)) / k - np.sqrt(gamma / k)
    s = (2 * (np.exp(alpha) - 1) / (1 + np.exp(alpha))).clip(lower=0) * 1e4
    s = df["spread_bps"].where(df["spread_bps"].notna(), s).fillna(0.0)
    a = np.log1p(q / np.maximum(n, 1))
    sv = v.rolling(15).sum()
    den = d.abs().rolling(10).sum()
    mv = v.rolling(15).mean()
    cols = [
        r,
        np.log(c / c.shift(5)),
        np.log(c / c.shift(15)),
        np.log(c / c.shift(60)),
        r.rolling(15).std(),
        r.rolling(60).std(),
        np.log(h / lo),
        ((c - lo) / (h - lo)).where(h != lo, 0.5),
        np.log(c / o),
        np.log(h / np.maximum(o, c)),
        np.log(np.minimum(o, c) / lo),
        (g / (g + los)).where(g + los != 0, 0.5),
        np.log(c / e12),
        np.log(c / e26),
        (m - sig) / c,
        _z(c, 20),
        atr / c,
        _z(np.log1p(v), 60),
        (v / mv).where(mv != 0, 1.0),
        tbr,
        (2 * tbr - 1).rolling(15).mean(),
        s,
        _z(s, 60),
        _z(np.log1p(n), 60),
        a - a.rolling(60).mean(),
        np.log(c / (q.rolling(15).sum() / sv)).where(sv != 0, 0.0),
        ((c - c.shift(10)).abs() / den).where(den != 0, 0.0),
    ]
    if rows == 1:
        return np.array([float(x.iloc[-1]) for x in cols])
    return np.column_stack([np.asarray(x.iloc[-rows:], dtype=np.float64) for x in cols])


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
        p = naive_pandas_features(window)
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

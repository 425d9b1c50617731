"""Latency of the ensemble's parts and of ``Ensemble.predict`` on CPU.

Run ``python benchmarks/bench_models.py`` (or import and call ``run()``). Uses the committed
artifacts (artifacts/ensemble-v1) and real windows from a klines file. Times are medians of
repeated calls after a warm-up (the machine is shared: medians, not means); p99 for batch 1.

* Mamba: the TorchScript file as the runtime runs it (loaded, frozen), seq_len 64, at batch
  1, 64 and 256 (cost per window for the batches).
* LightGBM: every horizon for one row: the runtime's merged graph (one ONNX Runtime call) and,
  for comparison, the per-horizon files one call each.
* ``Ensemble.predict`` at batch 1, 64 and 256 (both models, ensemble, confidences; the
  runtime gives the Mamba at most 32 windows per call on CPU).

glibc's allocator returns large blocks to the OS after every batched torch call and faults
them in again on the next (docs/design.md, PyTorch notes); ``tune_malloc`` (on by default, see
--no-malloc-tune) raises its mmap and trim thresholds in-process, as the service can.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_MODELS = REPO / "artifacts" / "ensemble-v1"
DEFAULT_DATA = REPO / "tests" / "data" / "klines" / "NEARUSDT-1m-2023-04.csv.gz"


def _times(fn: Callable[[], object], repeats: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t
    return out


def _us(x: float) -> float:
    return round(x * 1e6, 1)


def run(
    models: Path = DEFAULT_MODELS,
    data: Path = DEFAULT_DATA,
    *,
    repeats: int = 300,
    threads: int = 1,
    malloc_tune: bool = True,
    candles: int = 3000,
) -> dict[str, Any]:
    """Measure and return medians in microseconds (``*_us``) with the conditions."""
    import onnxruntime as ort
    import torch

    from stream_infer.candles import klines_meta, read_klines
    from stream_infer.models import load_ensemble, make_samples, stream_from_frame, tune_malloc
    from stream_infer.models._lgbm import INPUT_NAME, PROBA_NAME
    from stream_infer.models._manifest import lgbm_file

    tuned = tune_malloc() if malloc_tune else False
    ens = load_ensemble(models, threads=threads)
    # Real windows: the first `candles` candles of the file.
    frame = read_klines(data).iloc[:candles]
    symbol, interval = klines_meta(data)
    stream = stream_from_frame(frame, symbol, interval)
    samples = make_samples([stream], ens.horizons, ens.seq_len, split=False)["all"]
    windows = samples.windows(np.arange(min(len(samples), 512)))
    out: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}",
        "threads": threads,
        "malloc_tuned": tuned,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "models": str(Path(models).resolve().relative_to(REPO))
        if Path(models).resolve().is_relative_to(REPO)
        else str(models),
        "mamba_params": ens.manifest["mamba"]["parameters"],
    }
    mamba = ens._mamba  # the frozen TorchScript module, as predict runs it

    def mamba_call(b: int) -> Callable[[], object]:
        x = torch.from_numpy(np.ascontiguousarray(windows[:b]))

        def call() -> object:
            with torch.inference_mode():
                return torch.sigmoid(mamba(x))

        return call

    t1 = _times(mamba_call(1), repeats, 50)
    out["mamba_b1_median_us"] = _us(float(np.median(t1)))
    out["mamba_b1_p99_us"] = _us(float(np.percentile(t1, 99)))
    for b in (64, 256):
        tb = _times(mamba_call(b), max(10, repeats // 20), 3)
        out[f"mamba_b{b}_median_us"] = _us(float(np.median(tb)))
        out[f"mamba_b{b}_per_window_us"] = _us(float(np.median(tb)) / b)

    row = np.ascontiguousarray(windows[:1, -1, :], dtype=np.float32)
    sess, names = ens._session, ens._out_names
    t = _times(lambda: sess.run(names, {INPUT_NAME: row}), repeats * 3, 100)
    out["lgbm_all_horizons_1row_merged_median_us"] = _us(float(np.median(t)))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sessions = [
        ort.InferenceSession(str(models / lgbm_file(h)), opts, providers=["CPUExecutionProvider"])
        for h in ens.horizons
    ]

    def per_file() -> object:
        return [s.run([PROBA_NAME], {INPUT_NAME: row}) for s in sessions]

    t = _times(per_file, repeats * 3, 100)
    out["lgbm_all_horizons_1row_per_file_median_us"] = _us(float(np.median(t)))

    for b in (1, 64, 256):
        w = np.ascontiguousarray(windows[:b])
        t = _times(lambda w=w: ens.predict(w), repeats if b == 1 else max(10, repeats // 10), 20)
        out[f"ensemble_predict_b{b}_median_us"] = _us(float(np.median(t)))
        if b > 1:
            out[f"ensemble_predict_b{b}_per_window_us"] = _us(float(np.median(t)) / b)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-malloc-tune", action="store_true")
    args = ap.parse_args()
    res = run(
        args.models,
        args.data,
        repeats=args.repeats,
        threads=args.threads,
        malloc_tune=not args.no_malloc_tune,
    )
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

"""Memory per warm stream: RSS with N warm (symbol, interval) streams, minus the baseline.

Each count is measured in a fresh process (memory freed by earlier work would be reused and
hide the growth). Baseline: the process with the ensemble loaded and an empty ``Pipeline``.
Then N streams are built through ``Pipeline.warm`` (the path a service rebuilds state on),
each with ``ready_candles(seq_len)`` real candles (the stream is ready: it predicts on its next
candle). Every stream gets its own float objects, as candles decoded from Kafka would (a
per-stream price factor; ``Candle.model_construct``, the data is real and valid already):
streams sharing one template's floats would under-count by a few KB.
Reported: KB per stream = (VmRSS after - baseline) / N, after ``gc.collect()``.

``trace``: a tracemalloc run over a smaller count says where the bytes are (top allocation
sites, bytes per stream) and what one stream holds, object by object.

``python benchmarks/bench_memory.py [N ...]`` prints the JSON; ``--one N`` / ``--trace N``
are the child modes.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHIPPED, missing, rss_kb, symbol_candles

from stream_infer.candles import NUMERIC_FIELDS, Candle

_SCALED = NUMERIC_FIELDS


def _stream_candles(records: list[dict[str, Any]], k: int) -> Iterator[Candle]:
    sym = f"M{k:06d}USDT"
    f = 1.0 + (k + 1) * 1e-7  # never exactly 1: every stream gets new float objects
    for r in records:
        yield Candle.model_construct(**{**r, **{c: r[c] * f for c in _SCALED}, "symbol": sym})


def _setup(models: Path, made: list[Any] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """A Pipeline with the ensemble loaded, and one stream's candles as records.
    ``made``: collects every feature stream the pipeline creates (its public factory hook)."""
    from stream_infer.features import WARMUP, StreamingFeatures
    from stream_infer.models import load_ensemble
    from stream_infer.pipeline import Pipeline

    def factory(interval_ms: int, keep_rows: int) -> Any:
        f = StreamingFeatures(interval_ms, keep_rows=keep_rows)
        if made is not None:
            made.append(f)
        return f

    ensemble = load_ensemble(models, ensemble_id="bench")
    records = [c.model_dump() for c in symbol_candles(1, WARMUP + ensemble.seq_len)[0]]
    return Pipeline(ensemble, features=factory), records


def measure(n: int, models: Path = SHIPPED) -> dict[str, Any]:
    """In this process: RSS growth for ``n`` warm streams."""
    pipeline, records = _setup(models)
    gc.collect()
    base = rss_kb()
    t0 = time.perf_counter()
    for k in range(n):
        pipeline.warm(_stream_candles(records, k))
    seconds = time.perf_counter() - t0
    gc.collect()
    after = rss_kb()
    return {
        "streams": n,
        "ready_streams": sum(1 for s in pipeline.stream_states() if s.ready),
        "candles_per_stream": len(records),
        "rss_baseline_kb": base,
        "rss_after_kb": after,
        "kb_per_stream": round((after - base) / n, 2),
        "warm_seconds": round(seconds, 1),
    }


def _deep(obj: Any, seen: set[int]) -> int:
    """Bytes reachable from ``obj`` (objects not seen before), numpy buffers included."""
    import enum

    import numpy as np

    if id(obj) in seen or obj is None or isinstance(obj, type | enum.Enum):
        return 0  # shared by every stream
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, np.ndarray):
        return size  # getsizeof counts an owned buffer
    if isinstance(obj, dict):
        return size + sum(_deep(k, seen) + _deep(v, seen) for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset) or type(obj).__name__ == "deque":
        return size + sum(_deep(x, seen) for x in obj)
    for slot in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, slot):
            size += _deep(getattr(obj, slot), seen)
    if hasattr(obj, "__dict__"):
        size += _deep(vars(obj), seen)
    return size


def trace(n: int, models: Path = SHIPPED, top: int = 10) -> dict[str, Any]:
    """In this process: where the bytes of ``n`` warm streams are (tracemalloc, and one
    stream's objects by attribute)."""
    import tracemalloc

    made: list[Any] = []
    pipeline, records = _setup(models, made)
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    for k in range(n):
        pipeline.warm(_stream_candles(records, k))
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = after.compare_to(before, "lineno")
    total = sum(s.size_diff for s in stats)
    repo = str(Path(__file__).resolve().parent.parent) + "/"
    sites = [
        {
            "site": f"{str(s.traceback[0].filename).replace(repo, '')}:{s.traceback[0].lineno}",
            "bytes_per_stream": round(s.size_diff / n),
            "blocks_per_stream": round(s.count_diff / n, 1),
        }
        for s in stats[:top]
    ]
    # One stream, attribute by attribute (floats shared between attributes counted once).
    f = made[0]
    seen: set[int] = {id(f)}
    parts = {"features_object": sys.getsizeof(f)}
    for slot in type(f).__slots__:
        if hasattr(f, slot):
            b = _deep(getattr(f, slot), seen)
            if b >= 64:
                parts[slot] = b
    return {
        "traced_streams": n,
        "traced_bytes_per_stream": round(total / n),
        "top_sites": sites,
        "one_stream_bytes_by_attribute": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
        "one_stream_bytes_total": sum(parts.values()),
    }


def _child(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench_memory {' '.join(args)} failed: {done.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def run(
    counts: tuple[int, ...] = (1_000, 10_000), *, trace_streams: int = 100, models: Path = SHIPPED
) -> dict[str, Any]:
    """Each count in its own process; then, if ``trace_streams``, the tracemalloc breakdown."""
    why = missing("models")
    if why:
        return {"skipped": why}
    extra = [] if models == SHIPPED else ["--models", str(models)]
    res: dict[str, Any] = {"results": [_child("--one", str(n), *extra) for n in counts]}
    if trace_streams:
        res["where"] = _child("--trace", str(trace_streams), *extra)
    return res


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("counts", nargs="*", type=int)
    ap.add_argument("--one", type=int, help="measure N streams in this process")
    ap.add_argument("--trace", type=int, help="tracemalloc breakdown of N streams")
    ap.add_argument("--models", type=Path, default=SHIPPED)
    a = ap.parse_args()
    if a.one is not None:
        out = measure(a.one, a.models)
    elif a.trace is not None:
        out = trace(a.trace, a.models)
    else:
        from _common import machine

        out = {"machine": machine(), **run(tuple(a.counts) or (1_000, 10_000), models=a.models)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

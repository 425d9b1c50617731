"""``stream-infer bench``: every benchmark in ``benchmarks/`` in one run, JSON + BENCHMARKS.md.

Each benchmark module exposes ``run(...) -> dict``; the ones not written yet, or whose parts
(the Kafka service, the trained ensemble, Postgres) are missing, are recorded as skipped,
and one that fails is recorded with its error: the others still run.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from stream_infer._errors import ConfigError
from stream_infer.cli._app import app

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
NAMES = ("features", "models", "e2e", "burst", "throughput", "memory", "naive", "library")
#: The benchmarks that go through a broker: run once on each broker of the run.
BROKER_NAMES = ("e2e", "burst", "throughput")
#: The brokers one run measures side by side (``--kafka``): the embedded Tansu, Apache Kafka.
BROKERS = ("tansu", "apache")


def result_key(name: str, broker: str) -> str:
    """Where a broker benchmark's results go: ``e2e`` on Tansu (or ``--bootstrap``),
    ``e2e@apache`` on Apache Kafka."""
    return name if broker in ("tansu", "custom") else f"{name}@{broker}"


def _load(name: str) -> Any:
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


def _have(module: str) -> bool:
    return (BENCH_DIR / f"{module}.py").is_file()


def _plan(
    quick: bool, bootstrap: str | None = None
) -> dict[str, tuple[str, Callable[[Any], dict[str, Any]]]]:
    """name -> (module, how to call its run) at full or quick sizes; the broker ones on
    ``bootstrap`` (None: the embedded broker, started by each of them)."""
    q, kafka = quick, bootstrap
    return {
        "features": ("bench_features", lambda m: m.run(samples=30 if q else 150)),
        "models": (
            "bench_models",
            lambda m: m.run(repeats=30 if q else 300, candles=1500 if q else 3000),
        ),
        "e2e": (
            "bench_e2e",
            lambda m: m.run(
                bootstrap=kafka,
                single=40 if q else 300,
                symbols=20 if q else 100,
                bursts=2 if q else 3,
                fetch_max_wait_ms=(5,) if q else (5, 1),
                uvloop_modes=(True,),
            ),
        ),
        "burst": (
            "bench_burst",
            lambda m: m.run(
                sizes=(20, 100) if q else (100, 1000), trials=2 if q else 5, bootstrap=kafka
            ),
        ),
        "throughput": (
            "bench_throughput",
            lambda m: m.run(symbols=20 if q else 200, per_symbol=30 if q else 250, bootstrap=kafka),
        ),
        "memory": (
            "bench_memory",
            lambda m: m.run((300,) if q else (1_000, 10_000), trace_streams=30 if q else 100),
        ),
        "naive": (
            "bench_naive",
            lambda m: m.run(candles=20 if q else 200, symbols=16 if q else 64),
        ),
        "library": (
            "bench_library",
            lambda m: m.run(
                calls=30 if q else 300,
                symbols=20 if q else 100,
                calls_many=5 if q else 40,
                cold_trials=2 if q else 5,
            ),
        ),
    }


def run_suite(
    names: tuple[str, ...],
    quick: bool,
    echo: Callable[[str], None] = lambda _: None,
    bootstrap: str | None = None,
    brokers: tuple[str, ...] = BROKERS,
) -> dict[str, Any]:
    """Run the named benchmarks in order; their results keyed by name, with the machine.

    The broker benchmarks run once per broker of ``brokers`` (Tansu: each starts its own
    embedded broker; Apache Kafka: one node started here for the run), keyed by
    ``result_key``. ``bootstrap``: a Kafka of yours instead, for them all.
    """
    from stream_infer.models import tune_malloc

    tune_malloc()  # as `stream-infer run` does when models serve
    if not BENCH_DIR.is_dir():
        raise ConfigError(
            f"no benchmarks folder at {BENCH_DIR}: run from a checkout of the repository"
        )
    if bootstrap is not None:
        brokers = ("custom",)
    results: dict[str, Any] = {
        "machine": _load("_common").machine(),
        "quick": quick,
        "broker": bootstrap or "embedded",
        "brokers": list(brokers),
    }
    steps = [(n, "tansu") for n in names if n not in BROKER_NAMES]
    steps += [(n, b) for b in brokers for n in names if n in BROKER_NAMES]
    with contextlib.ExitStack() as stack:
        started: dict[str, str | None] = {"tansu": None, "custom": bootstrap}
        for name, broker in steps:
            key = result_key(name, broker)
            if broker not in started:
                try:
                    started[broker] = _start_apache(stack, echo)
                except Exception as exc:  # recorded like any failed benchmark
                    started[broker] = f"error: {exc}"
            where = started[broker]
            if where is not None and where.startswith("error: "):
                results[key] = {"error": f"Apache Kafka did not start: {where[7:]}"}
                continue
            module, call = _plan(quick, where)[name]
            _run_one(results, key, module, call, echo)
    results["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    return results


def _start_apache(stack: contextlib.ExitStack, echo: Callable[[str], None]) -> str:
    from stream_infer.kafka import ApacheKafka

    echo("bench: starting Apache Kafka (one node) ...")
    kafka = stack.enter_context(ApacheKafka(1, progress=echo))
    echo(f"bench: Apache Kafka at {kafka.bootstrap}")
    return kafka.bootstrap


def _run_one(
    results: dict[str, Any],
    key: str,
    module: str,
    call: Callable[[Any], dict[str, Any]],
    echo: Callable[[str], None],
) -> None:
    if not _have(module):
        results[key] = {"skipped": f"benchmarks/{module}.py is not there yet"}
        echo(f"bench: {key} skipped ({results[key]['skipped']})")
        return
    echo(f"bench: {key} ...")
    t0 = time.perf_counter()
    try:
        results[key] = call(_load(module))
    except Exception as exc:  # one broken benchmark must not lose the others' numbers
        results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        echo(traceback.format_exc())
    results[key]["bench_seconds"] = round(time.perf_counter() - t0, 1)
    echo(f"bench: {key} done in {time.perf_counter() - t0:.1f} s")


# -- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    benchmark: str
    metric: str
    median: float | None
    p99: float | None = None
    target: str = ""
    passed: bool | None = None  # None: no target, or not measured
    fmt: str = ",.1f"


def _get(d: Any, *path: Any) -> float | None:
    for p in path:
        try:
            d = d[p]
        except (KeyError, IndexError, TypeError):
            return None
    if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d):
        return None
    return float(d)


def _check(value: float | None, ok: Callable[[float], bool]) -> bool | None:
    return None if value is None else ok(value)


def _at_most(limit: float) -> Callable[[float], bool]:
    return lambda v: v <= limit


def rows(r: dict[str, Any]) -> list[Row]:
    """The table's rows from the results (a missing number shows as not run)."""
    out: list[Row] = []
    f = r.get("features") or {}
    out.append(
        Row(
            "(1) feature update per candle",
            "StreamingFeatures.update, warm, µs",
            _get(f, "stream_update_us_median"),
            _get(f, "stream_update_us_p99"),
            fmt=",.2f",
        )
    )
    m = r.get("models") or {}
    b1 = _get(m, "mamba_b1_median_us")
    out.append(
        Row(
            "(2) model inference, batch 1",
            "Mamba TorchScript, µs",
            b1,
            _get(m, "mamba_b1_p99_us"),
            "<= 2,000 µs (models issue)",
            _check(b1, lambda v: v <= 2000),
        )
    )
    lg = _get(m, "lgbm_all_horizons_1row_merged_median_us")
    out.append(
        Row(
            "(2) model inference, batch 1",
            "LightGBM ONNX, 3 horizons, µs",
            lg,
            target="<= 50 µs (models issue)",
            passed=_check(lg, lambda v: v <= 50),
        )
    )
    for b in (1, 64, 256):
        key = "ensemble_predict_b1_median_us" if b == 1 else f"ensemble_predict_b{b}_per_window_us"
        out.append(
            Row(
                f"(2) model inference, batch {b}",
                "Ensemble.predict" + (", µs" if b == 1 else ", µs per window"),
                _get(m, key),
            )
        )
    for broker in r.get("brokers") or ["tansu"]:
        out += _broker_rows(r, broker)
    for res in (r.get("memory") or {}).get("results") or []:
        kb = _get(res, "kb_per_stream")
        out.append(
            Row(
                f"(6) memory, {res.get('streams', 0):,} warm streams",
                "RSS beyond the baseline, KB per stream",
                kb,
                target="<= 32 KB",
                passed=_check(kb, lambda v: v <= 32),
            )
        )
    nv = r.get("naive") or {}
    ratio = _get(nv, "ratio")
    out.append(
        Row(
            "(7) vs naive baseline",
            f"naive per candle (Postgres + pandas + predict), µs; ours {_get(nv, 'ours_median_us') or float('nan'):,.0f} µs",
            _get(nv, "naive_median_us"),
            _get(nv, "naive_p99_us"),
            fmt=",.0f",
        )
    )
    out.append(
        Row(
            "(7) vs naive baseline",
            "ratio of medians, one candle at a time (no broker), x",
            ratio,
            target=">= 20x",
            passed=_check(ratio, lambda v: v >= 20),
        )
    )
    rb = _get(nv, "ratio_batched")
    out.append(
        Row(
            "(7) vs naive baseline",
            f"ratio of medians, {nv.get('ours_batched_symbols')} symbols closing at once, x",
            rb,
            target=">= 20x",
            passed=_check(rb, lambda v: v >= 20),
        )
    )
    e = r.get("e2e") or {}
    single = [s for s in e.get("single") or [] if _get(s, "median_ms") is not None]
    naive_us = _get(nv, "naive_median_us")
    if single and naive_us is not None:
        best = min(single, key=lambda s: s["median_ms"])
        out.append(
            Row(
                "(7) vs naive baseline",
                "ratio, ours through the broker (one symbol end to end, fetch wait "
                f"{best.get('fetch_max_wait_ms')} ms) vs naive without one, x",
                round(naive_us / 1000 / best["median_ms"], 1),
            )
        )
    lib = r.get("library") or {}
    one = lib.get("one") or {}
    med, p99 = _get(one, "median_ms"), _get(one, "p99_ms")
    out.append(
        Row(
            "(8) library call from Postgres",
            "run_inference_pipeline, one symbol, warm manager, a new candle per call, ms",
            med,
            p99,
            "median <= 10 ms, p99 <= 25 ms",
            None if med is None or p99 is None else (med <= 10 and p99 <= 25),
            ",.2f",
        )
    )
    many = lib.get("many") or {}
    n = many.get("streams", 100)
    med = _get(many, "median_ms")
    out.append(
        Row(
            "(8) library call from Postgres",
            f"the same, {n} symbols in one call, ms",
            med,
            _get(many, "p99_ms"),
            "<= 150 ms" if n == 100 else "",
            _check(med, _at_most(150)) if n == 100 else None,
        )
    )
    fp = lib.get("many_fingerprint") or {}
    if fp:
        out.append(
            Row(
                "(8) library call from Postgres",
                f"the same, {n} symbols, without the change count (each held stream's "
                f"fingerprint read every call), ms; / with it {lib.get('ratio_count', '?')}x",
                _get(fp, "median_ms"),
                _get(fp, "p99_ms"),
            )
        )
    for part, what in ((one, "one symbol"), (many, f"{n} symbols")):
        out.append(
            Row(
                "(8) library call from Postgres",
                f"the model alone (Ensemble.predict), {what}, timed beside each call, ms",
                _get(part, "model_floor_ms_median"),
                fmt=",.2f",
            )
        )
    for key, what in (("cold_one", "one symbol"), ("cold_many", f"{n} symbols")):
        cold = lib.get(key) or {}
        ratio = _get(lib, "ratio_one" if key == "cold_one" else "ratio_many")
        out.append(
            Row(
                "(8) library call from Postgres",
                f"cold (a manager that holds no stream: reads and warms each from its newest "
                f"candle back), {what}, ms; cold / warm {ratio if ratio is not None else '?'}x",
                _get(cold, "median_ms"),
                _get(cold, "p99_ms"),
            )
        )
    return out


_BROKER_LABEL = {"tansu": "Tansu", "apache": "Apache Kafka", "custom": "your Kafka"}
# One symbol end to end: (median, p99) bounds in ms per broker. Tansu does not wake a
# waiting fetch, so its bound is the older, looser one; Apache Kafka's is the product's.
_E2E_BOUNDS = {"tansu": (5.0, 25.0), "apache": (3.0, 10.0), "custom": (3.0, 10.0)}


def _broker_rows(r: dict[str, Any], broker: str) -> list[Row]:
    """The rows of the broker benchmarks (e2e, burst, throughput) on one broker."""
    out: list[Row] = []
    on = f", {_BROKER_LABEL.get(broker, broker)}"
    e = r.get(result_key("e2e", broker)) or {}
    lo_med, lo_p99 = _E2E_BOUNDS.get(broker, (3.0, 10.0))
    for s in e.get("single") or []:
        med, p99 = _get(s, "median_ms"), _get(s, "p99_ms")
        ok = None if med is None or p99 is None else (med <= lo_med and p99 <= lo_p99)
        out.append(
            Row(
                f"(3) one symbol end to end{on}",
                f"produce -> prediction consumed, ms; fetch wait {s.get('fetch_max_wait_ms')} ms; "
                f"max {_get(s, 'max_ms') or float('nan'):.1f} ms",
                med,
                p99,
                f"median <= {lo_med:g} ms, p99 <= {lo_p99:g} ms",
                ok,
                ",.2f",
            )
        )
    floors = (
        ("single_floor", "the same with a model that costs nothing (broker + service I/O)"),
        (
            "single_echo",
            "the same two hops through a bare aiokafka echo, no stream_infer code "
            "(the broker's floor)",
        ),
    )
    for key, what in floors:
        fl = e.get(key) or {}
        if fl:
            out.append(
                Row(
                    f"(3) one symbol end to end{on}",
                    f"{what}, ms; fetch wait {fl.get('fetch_max_wait_ms')} ms",
                    _get(fl, "median_ms"),
                    _get(fl, "p99_ms"),
                    fmt=",.2f",
                )
            )
    burst = r.get(result_key("burst", broker)) or {}
    for n, bound in ((100, 150.0), (1000, 1000.0)):
        bk = (burst.get("broker") or {}).get(str(n)) or {}
        med = _get(bk, "last_in_to_last_out", "median_ms")
        out.append(
            Row(
                f"(4) burst of {n:,} symbols{on}",
                "last candle acked -> last prediction consumed, ms (broker)",
                med,
                _get(bk, "last_in_to_last_out", "p99_ms"),
                f"<= {bound:,.0f} ms",
                _check(med, _at_most(bound)),
            )
        )
        core = (burst.get("core") or {}).get(str(n)) or {}
        out.append(
            Row(
                f"(4) burst of {n:,} symbols{on}",
                "pure core: Pipeline.process of the batch + encoding, ms",
                _get(core, "total", "median_ms"),
                _get(core, "total", "p99_ms"),
            )
        )
    t = r.get(result_key("throughput", broker)) or {}
    tb = _get(t, "broker", "candles_per_s")
    floor: float = 2000.0
    target: str = ">= 2,000 /s"
    tansu = _get(r.get("throughput") or {}, "broker", "candles_per_s")
    if broker == "apache" and tansu is not None:
        # Apache Kafka must carry at least what the embedded broker did in the same run.
        floor, target = max(floor, tansu), f">= 2,000 /s and >= Tansu's {tansu:,.0f} /s"
    out.append(
        Row(
            f"(5) sustained throughput{on}",
            "full inference through the broker, candles/s",
            tb,
            target=target,
            passed=_check(tb, lambda v: v >= floor),
            fmt=",.0f",
        )
    )
    out.append(
        Row(
            f"(5) sustained throughput{on}",
            "pure core (Pipeline.process, batches of 2,000), candles/s",
            _get(t, "core", "candles_per_s"),
            fmt=",.0f",
        )
    )
    return out


def _cell(v: float | None, fmt: str) -> str:
    return "not run" if v is None else format(v, fmt)


def _broker_line(broker: str, brokers: list[str] | None = None) -> str:
    if broker != "embedded":
        where = f"the Kafka at {broker} (`--bootstrap`)"
    else:
        known = {
            "tansu": "the embedded Tansu broker (it does not wake a waiting fetch, so every "
            "hop waits up to the fetch wait stated)",
            "apache": f"Apache Kafka {_kafka_version()} (KRaft, one node on loopback, started "
            "by the run)",
        }
        where = "; ".join(known.get(b, b) for b in brokers or ["tansu"])
    return (
        f"Brokers: {where}. Service: `stream_infer.kafka.Service` in its own process, one "
        "model thread, the shipped ensemble (artifacts/ensemble-v1)."
    )


def _kafka_version() -> str:
    from stream_infer.kafka import KAFKA_VERSION

    return KAFKA_VERSION


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `stream-infer bench` (code: `benchmarks/`; raw numbers: the JSON file it",
        "writes, `bench-results.json` by default). Medians over repeated trials; the machine",
        "was shared with other jobs while this ran, so single numbers move by tens of percent",
        "between runs: compare ratios within one run.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"{m.get('os', '')}; Python {m['python']}, torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime']}, numpy {m.get('numpy', '?')}; {m['date']}; "
        f"load average {m['load_avg_1m']} at the start, "
        f"{results.get('load_avg_1m_end', '?')} at the end; "
        f"mode: {'quick (small sizes: a smoke run)' if results['quick'] else 'full'}.",
        _broker_line(results.get("broker", "embedded"), results.get("brokers")),
        "",
        "| benchmark | metric | median | p99 | target | pass |",
        "|---|---|---:|---:|---|---|",
    ]
    for row in rows(results):
        verdict = "" if row.passed is None else ("yes" if row.passed else "**no**")
        lines.append(
            f"| {row.benchmark} | {row.metric} | {_cell(row.median, row.fmt)} | "
            f"{'' if row.p99 is None else _cell(row.p99, row.fmt)} | {row.target} | {verdict} |"
        )
    keys = [
        result_key(n, b) if n in BROKER_NAMES else n
        for n in NAMES
        for b in (results.get("brokers") or ["tansu"] if n in BROKER_NAMES else ["tansu"])
    ]
    notes = [
        f"* {name}: {what} ({results[name][what]})"
        for name in keys
        if isinstance(results.get(name), dict)
        for what in ("skipped", "error")
        if what in results[name]
    ]
    if notes:
        lines += ["", "Not measured:", "", *notes]
    lines += [
        "",
        "What each line measures: the docstring of its module in `benchmarks/` "
        "(bench_features, bench_models, bench_e2e, bench_burst, bench_throughput, "
        "bench_memory, bench_naive, bench_library).",
        "",
    ]
    return "\n".join(lines)


@app.command("bench")
def bench_cmd(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: a smoke run (a couple of minutes).")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help=f"Run only these (repeatable): {', '.join(NAMES)}."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="The JSON results file.")] = Path(
        "bench-results.json"
    ),
    markdown: Annotated[Path, typer.Option("--markdown", help="The table to (re)write.")] = Path(
        "BENCHMARKS.md"
    ),
    bootstrap: Annotated[
        str | None,
        typer.Option(
            "--bootstrap",
            help="HOST:PORT of a Kafka to run the broker benchmarks (e2e, burst, throughput) "
            "on, instead of the brokers of --kafka. They create their own bench.* topics.",
        ),
    ] = None,
    kafka: Annotated[
        list[str] | None,
        typer.Option(
            "--kafka",
            help="The brokers the broker benchmarks run on, side by side (repeatable): "
            f"{', '.join(BROKERS)} (default: both; Apache Kafka needs Java 17+).",
        ),
    ] = None,
) -> None:
    """Run the benchmark suite in one process: feature update, model inference, end to end
    through the embedded broker, minute-boundary bursts, sustained throughput, memory per
    warm stream, and the naive baseline (Postgres + pandas) side by side. Writes the JSON
    and a Markdown table with the machine it ran on; exit code 1 if a benchmark failed."""
    unknown = sorted(set(only or ()) - set(NAMES))
    if unknown:
        raise ConfigError(f"unknown benchmark(s) {unknown}; choose from {list(NAMES)}")
    names = tuple(n for n in NAMES if not only or n in only)
    bad = sorted(set(kafka or ()) - set(BROKERS))
    if bad:
        raise ConfigError(f"unknown broker(s) {bad}; choose from {list(BROKERS)}")
    brokers = tuple(b for b in BROKERS if not kafka or b in kafka)
    results = run_suite(
        names,
        quick,
        echo=lambda s: typer.echo(s, err=True),
        bootstrap=bootstrap,
        brokers=brokers,
    )
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = render(results)
    markdown.write_text(table)
    typer.echo(table)
    typer.echo(f"wrote {out} and {markdown}")
    failed = [
        k
        for k, v in results.items()
        if k.split("@")[0] in names and isinstance(v, dict) and "error" in v
    ]
    if failed:
        typer.echo(f"error: benchmark(s) failed: {', '.join(failed)}", err=True)
        raise typer.Exit(1)

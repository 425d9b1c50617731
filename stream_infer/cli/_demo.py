"""``stream-infer demo``: the bundled candles through the embedded broker and the service, live."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from stream_infer.cli._app import app


@app.command()
def demo(
    duration: Annotated[
        float | None,
        typer.Option(help="seconds of live candles after the history prefix [60; --quick 8]"),
    ] = None,
    speed: Annotated[
        float | None, typer.Option(help="live candles per second per symbol [20; --quick 25]")
    ] = None,
    symbols: Annotated[
        str | None,
        typer.Option(help="comma-separated symbols (default: every bundled one; --quick: 3)"),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="where the chart, predictions.jsonl and summary.json go")
    ] = Path("demo-out"),
    quick: Annotated[
        bool, typer.Option("--quick", help="short run for CI: 3 symbols, 8 s live (~20 s)")
    ] = False,
    models: Annotated[
        Path | None, typer.Option(help="ensemble directory [artifacts/ensemble-v1]")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="klines directory [tests/data/klines]")] = None,
    prefix: Annotated[
        int,
        typer.Option(
            help="candles per symbol sent at once first (to predict at once: the features' warm-up + seq_len - 1)"
        ),
    ] = 500,
    db: Annotated[
        bool | None,
        typer.Option(
            "--db/--no-db",
            help="Postgres config with a hot reload mid-run [on when DB_HOST is set]",
        ),
    ] = None,
    plain: Annotated[
        bool, typer.Option("--plain", help="plain progress lines even on a terminal")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="show the service's log")] = False,
) -> None:
    """Replay bundled real candles through Kafka and the service, with a live view.

    Starts the embedded broker, loads the committed models, sends each symbol's first candles at once (history), then SPEED candles/s per symbol; shows per symbol the last close, P(up) per horizon, confidence, ensemble version and latency.

    Ends with a summary line, predictions.jsonl and a PNG chart in OUT. Ctrl-C stops early; everything it started is stopped. With DB_HOST set the ensemble comes from Postgres and is hot-reloaded mid-run. See docs/demo.md.
    """
    from stream_infer.demo import QUICK, DemoOptions, main

    opts = QUICK if quick else DemoOptions()
    chosen = tuple(s.strip().upper() for s in symbols.split(",") if s.strip()) if symbols else ()
    opts = replace(
        opts,
        duration_s=duration if duration is not None else opts.duration_s,
        speed=speed if speed is not None else opts.speed,
        symbols=chosen,
        max_symbols=None if chosen else opts.max_symbols,
        out_dir=out,
        models_dir=models,
        data_dir=data,
        prefix=prefix,
        use_db=db,
        live_view=False if plain else None,
        verbose=verbose,
    )
    code = main(opts)
    if code:
        raise typer.Exit(code)

"""``stream-infer features FILE --out OUT.parquet|OUT.csv``: the batch path over a klines file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from stream_infer.cli._app import app


@app.command("features")
def features_cmd(
    file: Annotated[
        Path,
        typer.Argument(
            help="Exchange klines CSV (.csv or .csv.gz), e.g. NEARUSDT-1m-2023-02.csv.gz."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output file: .parquet, .csv or .csv.gz.")
    ],
    interval_ms: Annotated[
        int | None,
        typer.Option(help="Candle interval in ms (default: from the file name, e.g. 1m)."),
    ] = None,
    ready_only: Annotated[
        bool, typer.Option(help="Write only rows whose features are ready (no NaN rows).")
    ] = False,
) -> None:
    """Compute the 27 features (docs/feature-spec.md v1) of one klines file.

    One row per candle of the stream: open_time, the 27 features, synthetic (gap filler).

    Rows not yet ready are NaN. A bad candle ends the command with one line naming its line.
    """
    from stream_infer.candles import interval_to_ms, klines_meta, read_klines
    from stream_infer.features import batch_features, prepare_stream

    name = out.name.lower()
    if not name.endswith((".parquet", ".csv", ".csv.gz")):
        raise typer.BadParameter("must end in .parquet, .csv or .csv.gz", param_hint="--out")
    started = time.perf_counter()
    if interval_ms is None:
        interval_ms = interval_to_ms(klines_meta(file)[1])
        candles = read_klines(file)
    else:
        symbol = file.name.split("-")[0] or "UNKNOWN"
        candles = read_klines(file, symbol=symbol, interval=f"{interval_ms}ms")
    # read_klines names bad rows by their line in the file; batch_features re-checks by position.
    feats = batch_features(candles, interval_ms)
    feats["synthetic"] = prepare_stream(candles, interval_ms)["synthetic"].to_numpy()
    if ready_only:
        feats = feats[feats.drop(columns="synthetic").notna().all(axis=1)]
    out.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        feats.to_parquet(out)
    else:
        feats.to_csv(out)  # shortest repr: floats round-trip exactly
    ready = int(feats.drop(columns="synthetic").notna().all(axis=1).sum())
    typer.echo(
        f"{file.name}: {len(candles)} candles -> {len(feats)} rows "
        f"({ready} ready, {int(feats['synthetic'].sum())} synthetic) in "
        f"{time.perf_counter() - started:.2f} s -> {out}"
    )

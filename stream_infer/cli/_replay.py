"""``stream-infer replay``: klines files through the pipeline with no broker (the offline twin of run)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stream_infer._errors import ConfigError
from stream_infer.cli._app import app

if TYPE_CHECKING:
    from stream_infer.pipeline import EnsembleLike


def _load_ensemble(path: Path, ensemble_id: str | None, threads: int) -> EnsembleLike:
    # imported at call time: the models (torch, onnxruntime) are heavy
    from stream_infer.models import load_ensemble

    if ensemble_id is None:
        from stream_infer.config import file_ensemble_id, manifest_version

        # what `run` calls a file-configured ensemble of this version (ML_ENSEMBLE_VERSION)
        ensemble_id = file_ensemble_id(manifest_version(path))
    return load_ensemble(path, ensemble_id=ensemble_id, threads=threads)


@app.command()
def replay(
    models: Annotated[
        Path,
        typer.Option("--models", help="ensemble artifacts directory (as written by train)"),
    ],
    out: Annotated[Path, typer.Option("--out", help="predictions, one JSON object per line")],
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="klines files (.csv/.csv.gz); repeat, or list them after"),
    ] = None,
    files: Annotated[list[Path] | None, typer.Argument(help="more klines files")] = None,
    interval: Annotated[
        str | None,
        typer.Option("--interval", help="interval of the files when their names lack it"),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="messages per micro-batch")] = 64,
    dlq: Annotated[
        Path | None, typer.Option("--dlq", help="also write dead letters here (JSON lines)")
    ] = None,
    ensemble_id: Annotated[
        str | None,
        typer.Option(
            "--ensemble-id",
            help="the predictions' ensemble_id (default: file:<manifest version>, as run names it)",
        ),
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="model threads")] = 1,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Replay klines files through the same pipeline as `run`: merged in open_time order
    across symbols, micro-batched, predictions written as JSON lines (deterministic apart
    from latency_ms and produced_at)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from stream_infer.pipeline import BatchResult, Pipeline, replay_klines

    paths = [*(data or []), *(files or [])]
    if not paths:
        raise ConfigError("no klines files: give --data FILE (or list files after the options)")
    pipeline = Pipeline(_load_ensemble(models, ensemble_id, threads))
    console = Console(stderr=True)
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(out.open("wb"))
        dead = stack.enter_context(dlq.open("wb")) if dlq is not None else None
        bar = stack.enter_context(
            Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                disable=not progress,
                transient=True,
            )
        )
        task = bar.add_task("replay", total=None)

        def advance(result: BatchResult) -> None:
            bar.advance(task, result.counts.messages)

        stats = replay_klines(
            paths,
            pipeline,
            sink,
            interval=interval,
            batch_size=batch,
            dead_letters=dead,
            on_start=lambda total: bar.update(task, total=total),
            on_batch=advance,
        )
    c = stats.counts
    took = time.perf_counter() - started
    console.print(
        f"replayed {c.messages} candles from {stats.files} files in {took:.1f} s "
        f"({c.messages / max(took, 1e-9):,.0f}/s): {c.predictions} predictions -> {out}; "
        f"duplicates {c.duplicates}, late {c.late}, gap-filled {c.gap_filled}, "
        f"restarts {c.restarts}, dead letters {sum(c.dead_letters.values())}"
        + (f" {c.dead_letters}" if c.dead_letters else "")
    )

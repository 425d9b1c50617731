"""``stream-infer train`` and ``stream-infer evaluate`` (docs/models.md)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from stream_infer._errors import ModelError
from stream_infer.cli._app import app
from stream_infer.cli._progress import status

DataOpt = Annotated[
    list[str],
    typer.Option(
        "--data",
        help="Klines files (.csv / .csv.gz, name SYMBOL-INTERVAL-...). Repeat the option or "
        "separate files with commas.",
    ),
]


def _files(values: list[str]) -> list[Path]:
    out = [Path(p) for v in values for p in v.split(",") if p.strip()]
    missing = [str(p) for p in out if not p.is_file()]
    if missing:
        raise ModelError(f"data file(s) not found: {', '.join(missing)}", path=missing[0])
    return out


def _horizons(text: str) -> tuple[int, ...]:
    try:
        hs = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise ModelError(f"--horizons must be comma-separated ints, got {text!r}") from exc
    return hs


@app.command("train")
def train_cmd(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Artifact directory to write.")],
    horizons: Annotated[str, typer.Option(help="Candles ahead, comma-separated.")] = "1,5,15",
    seq_len: Annotated[
        int | None, typer.Option("--seq-len", help="Window length (rows) [default: 32].")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Mamba epochs (default 3; tiny 1).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    mamba_weight: Annotated[
        float, typer.Option("--mamba-weight", help="Default ensemble weight w of the Mamba.")
    ] = 0.5,
    version: Annotated[
        str | None, typer.Option(help="Ensemble version (default: the --out folder's name).")
    ] = None,
    tiny: Annotated[
        bool, typer.Option("--tiny", help="Tiny models in seconds (tests, demos).")
    ] = False,
) -> None:
    """Train the Mamba + LightGBM ensemble, export it, check the exports, write the manifest."""
    import logging

    from stream_infer.models import TrainConfig, train_ensemble, tune_malloc

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tune_malloc()  # batched torch calls: no page faults per call (speed only, not results)
    files = _files(data)
    base = TrainConfig.tiny() if tiny else TrainConfig()
    cfg = TrainConfig(
        **{
            **base.__dict__,
            "horizons": _horizons(horizons),
            "seq_len": base.seq_len if seq_len is None else seq_len,
            "seed": seed,
            "mamba_weight": mamba_weight,
            "version": version,
            **({"epochs": epochs} if epochs is not None else {}),
        }
    )
    # Rebuilt from the options, not sys.argv: the manifest must name this command however
    # it was invoked (console script, python -m, a test runner), defaults left out.
    given = [
        ("--horizons", horizons, "1,5,15"),
        ("--seq-len", seq_len, None),
        ("--epochs", epochs, None),
        ("--seed", seed, 0),
        ("--mamba-weight", mamba_weight, 0.5),
        ("--version", version, None),
    ]
    argv = ["stream-infer", "train"]
    for d in data:
        argv += ["--data", str(d)]
    argv += ["--out", str(out)]
    argv += [a for flag, v, default in given if v != default for a in (flag, str(v))]
    argv += ["--tiny"] if tiny else []
    command = shlex.join(argv)
    with status("training") as progress:
        manifest = train_ensemble(files, out, cfg, command=command, progress=progress).manifest
    for h in manifest["horizons"]:
        aucs = manifest["metrics"]["test"][f"h{h}"]
        line = ", ".join(f"{k} {_fmt(v['auc'])}" for k, v in aucs.items())
        typer.echo(f"test AUC h={h}: {line}")


@app.command("evaluate")
def evaluate_cmd(
    models: Annotated[Path, typer.Option("--models", help="Artifact directory to load.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json and plots.")],
    mamba_weight: Annotated[
        float | None, typer.Option("--mamba-weight", help="Override the manifest's weight.")
    ] = None,
) -> None:
    """Score the loaded ensemble on klines files: metrics.json, ROC and calibration plots."""
    from stream_infer.models import evaluate, tune_malloc

    tune_malloc()
    with status(f"evaluating {models}"):
        result = evaluate(models, _files(data), out, mamba_weight=mamba_weight)
    for h, per in result["metrics"].items():
        line = ", ".join(f"{k} {_fmt(v['auc'])}" for k, v in per.items())
        typer.echo(f"AUC {h}: {line} (n={next(iter(per.values()))['n']})")
    typer.echo(f"wrote {out / 'metrics.json'} and {len(result['plots'])} plots")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"

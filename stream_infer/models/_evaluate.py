"""Scoring a saved ensemble on klines files, through the serving runtime (what is deployed).

Every sample of the files is scored (the same sample rules as training, no split): use data
the models were not trained on. Writes ``metrics.json``, ``roc.png`` and ``calibration.png``.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream_infer.models._dataset import load_streams, make_samples
from stream_infer.models._manifest import sha256_file, write_json
from stream_infer.models._metrics import model_metrics
from stream_infer.models._runtime import combine, load_ensemble

__all__ = ["evaluate"]

MODELS = ("mamba", "lgbm", "ensemble")
MIN_BIN = 100
_COLORS = {"mamba": "tab:blue", "lgbm": "tab:green", "ensemble": "tab:red"}


def evaluate(
    model_dir: str | Path,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    mamba_weight: float | None = None,
    batch: int = 256,
) -> dict[str, Any]:
    """Metrics per horizon and model (mamba, lgbm, ensemble), overall and per symbol."""
    ens = load_ensemble(model_dir, mamba_weight=mamba_weight)
    ens.check()
    streams = load_streams(paths)
    samples = make_samples(streams, ens.horizons, ens.seq_len, split=False)["all"]
    n = len(samples)
    h = len(ens.horizons)
    pm = np.empty((n, h))
    pl = np.empty((n, h))
    for i in range(0, n, batch):
        sl = slice(i, i + batch)
        pm[sl], pl[sl] = ens.predict_components(samples.windows(sl))
    res = combine(pm, pl, ens.mamba_weight)
    probs = {"mamba": pm, "lgbm": pl, "ensemble": res.probabilities}
    metrics = model_metrics(samples.y, probs, ens.horizons)
    per_symbol = {}
    for i, s in enumerate(streams):
        sel = samples.stream == i
        per_symbol[f"{s.symbol}-{s.interval}"] = model_metrics(
            samples.y[sel],
            {k: v[sel] for k, v in probs.items()},
            ens.horizons,
            with_calibration=False,
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = [
        _plot_roc(out / "roc.png", samples.y, probs, ens.horizons, metrics),
        _plot_calibration(out / "calibration.png", metrics, ens.horizons),
    ]
    result: dict[str, Any] = {
        "models": str(model_dir),
        "version": ens.version,
        "mamba_weight": ens.mamba_weight,
        "horizons": list(ens.horizons),
        "samples": n,
        "data": [
            {
                "symbol": s.symbol,
                "interval": s.interval,
                "files": [
                    {"path": Path(f).as_posix(), "sha256": sha256_file(Path(f))} for f in s.files
                ],
                "samples": int((samples.stream == i).sum()),
                "first_open_time": int(samples.open_time[samples.stream == i].min())
                if (samples.stream == i).any()
                else None,
                "last_open_time": int(samples.open_time[samples.stream == i].max())
                if (samples.stream == i).any()
                else None,
            }
            for i, s in enumerate(streams)
        ],
        "metrics": metrics,
        "per_symbol": per_symbol,
        "plots": [p.name for p in plots],
        "python": platform.python_version(),
    }
    write_json(out / "metrics.json", result)
    return result


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_roc(
    path: Path,
    y: np.ndarray,
    probs: dict[str, np.ndarray],
    horizons: tuple[int, ...],
    metrics: dict[str, Any],
) -> Path:
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(horizons), figsize=(4.2 * len(horizons), 4.2), squeeze=False)
    for j, h in enumerate(horizons):
        ax = axes[0, j]
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="chance")
        for name in MODELS:
            yj = y[:, j]
            if 0 < yj.sum() < yj.size:
                fpr, tpr, _ = roc_curve(yj, probs[name][:, j])
                auc = metrics[f"h{h}"][name]["auc"]
                ax.plot(fpr, tpr, color=_COLORS[name], lw=1.4, label=f"{name} AUC {auc:.3f}")
        ax.set_title(f"ROC, h = {h} (n = {y.shape[0]})")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_aspect("equal")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_calibration(path: Path, metrics: dict[str, Any], horizons: tuple[int, ...]) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(horizons), figsize=(4.2 * len(horizons), 4.2), squeeze=False)
    for j, h in enumerate(horizons):
        ax = axes[0, j]
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="perfect")
        lo, hi = 1.0, 0.0
        for name in MODELS:
            cal = metrics[f"h{h}"][name]["calibration"]
            # A bin of a handful of samples says nothing: plot bins of >= MIN_BIN samples
            # (metrics.json and the ECE keep every bin).
            pts = [
                (p, f)
                for p, f, c in zip(
                    cal["mean_predicted"], cal["fraction_positive"], cal["count"], strict=True
                )
                if p is not None and c >= MIN_BIN
            ]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=3,
                color=_COLORS[name],
                lw=1.2,
                label=f"{name} ECE {cal['ece']:.3f}",
            )
        # Predictions of 1m direction sit near 0.5: zoom on the range they use.
        pad = 0.02
        lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
        if hi > lo:
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        ax.set_title(
            f"calibration, h = {h}\n(10 bins; bins of >= {MIN_BIN} samples shown)", fontsize=10
        )
        ax.set_xlabel("mean predicted P(up)")
        ax.set_ylabel("observed fraction up")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

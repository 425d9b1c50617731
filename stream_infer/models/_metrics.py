"""Scores of probabilistic binary predictions: AUC, log loss, accuracy, base rate, calibration."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["binary_metrics", "calibration", "model_metrics"]

_EPS = 1e-15


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability over ``bins`` equal-width bins of p, and the expected calibration error."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / np.maximum(count, 1), np.nan)
        frac = np.where(count > 0, sum_y / np.maximum(count, 1), np.nan)
    n = max(int(count.sum()), 1)
    ece = float(np.nansum(count / n * np.abs(frac - mean_p)))
    return {
        "bin_edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "mean_predicted": [None if np.isnan(v) else float(v) for v in mean_p],
        "fraction_positive": [None if np.isnan(v) else float(v) for v in frac],
        "ece": ece,
    }


def binary_metrics(
    y: np.ndarray, p: np.ndarray, *, with_calibration: bool = True
) -> dict[str, Any]:
    """AUC (None with one class only), log loss, accuracy at 0.5, base rate, mean p, n."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n = int(y.size)
    out: dict[str, Any] = {"n": n}
    if n == 0:
        return out | {"auc": None, "log_loss": None, "accuracy": None, "base_rate": None}
    pc = np.clip(p, _EPS, 1 - _EPS)
    both = 0 < y.sum() < n
    out["auc"] = float(roc_auc_score(y, p)) if both else None
    out["log_loss"] = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc)))
    out["accuracy"] = float(np.mean((p > 0.5) == (y > 0.5)))
    out["base_rate"] = float(y.mean())
    out["mean_p"] = float(p.mean())
    out["brier"] = float(np.mean((p - y) ** 2))
    if with_calibration:
        out["calibration"] = calibration(y, p)
    return out


def model_metrics(
    y: np.ndarray,
    probs: dict[str, np.ndarray],
    horizons: tuple[int, ...],
    *,
    with_calibration: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"h1": {"mamba": {...}, "lgbm": {...}, "ensemble": {...}}, ...}`` for (n, H) arrays."""
    return {
        f"h{h}": {
            name: binary_metrics(y[:, j], p[:, j], with_calibration=with_calibration)
            for name, p in probs.items()
        }
        for j, h in enumerate(horizons)
    }

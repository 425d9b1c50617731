"""The spec's tolerance, shared by the feature tests."""

from __future__ import annotations

import numpy as np

TOL = 1e-9


def rel_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| / max(1, |b|) elementwise; NaN in exactly one of them counts as infinite error."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        err = np.abs(a - b) / np.maximum(1.0, np.abs(b))
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    err = np.where(both_nan | same_inf, 0.0, err)
    return np.where(np.isnan(err), np.inf, err)


def assert_close(a: np.ndarray, b: np.ndarray, what: str = "") -> float:
    """Assert the spec's tolerance on every element; return the max error."""
    err = rel_err(a, b)
    worst = float(err.max()) if err.size else 0.0
    if worst > TOL:
        idx = np.unravel_index(int(np.argmax(err)), err.shape)
        raise AssertionError(
            f"{what}: max error {worst:.3e} at {idx}: {np.asarray(a)[idx]!r} vs {np.asarray(b)[idx]!r}"
        )
    return worst

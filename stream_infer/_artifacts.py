"""The file names of an ensemble directory, in one place (the contract: models/_manifest.py).

Light on purpose: the configuration checks paths against these names without importing
the models (torch, onnxruntime).
"""

from __future__ import annotations

__all__ = ["MAMBA_FILE", "MANIFEST_FILE", "NORM_FILE", "REFERENCE_FILE", "lgbm_file"]

MANIFEST_FILE = "manifest.json"
MAMBA_FILE = "mamba.pt"
NORM_FILE = "normalization_params_v1.json"
REFERENCE_FILE = "reference_window.npy"


def lgbm_file(h: int) -> str:
    """The LightGBM model of horizon ``h`` (minutes)."""
    return f"lgbm_h{h}.onnx"

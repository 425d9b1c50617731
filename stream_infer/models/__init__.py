"""The ensemble: a Mamba state-space model (TorchScript) and LightGBM (ONNX) per horizon.

Training and export (``train_ensemble``), evaluation (``evaluate``) and the serving runtime
(``load_ensemble`` -> ``Ensemble.predict``). The artifact contract is in docs/models.md.
Importing this package imports torch.
"""

from __future__ import annotations

from stream_infer.models._dataset import (
    Samples,
    StreamData,
    load_streams,
    make_samples,
    stream_from_frame,
)
from stream_infer.models._evaluate import evaluate
from stream_infer.models._mamba import MambaClassifier, MambaConfig
from stream_infer.models._runtime import (
    CHECK_TOL,
    FROZEN_CACHE_DIR,
    Ensemble,
    EnsembleResult,
    cache_frozen,
    frozen_cache_path,
    load_ensemble,
    load_ensemble_steps,
    run_steps,
    tune_malloc,
)
from stream_infer.models._train import TrainConfig, TrainResult, train_ensemble

__all__ = [
    "CHECK_TOL",
    "FROZEN_CACHE_DIR",
    "Ensemble",
    "EnsembleResult",
    "MambaClassifier",
    "MambaConfig",
    "Samples",
    "StreamData",
    "TrainConfig",
    "TrainResult",
    "cache_frozen",
    "evaluate",
    "frozen_cache_path",
    "load_ensemble",
    "load_ensemble_steps",
    "load_streams",
    "make_samples",
    "run_steps",
    "stream_from_frame",
    "train_ensemble",
    "tune_malloc",
]

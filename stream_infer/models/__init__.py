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
    Ensemble,
    EnsembleResult,
    load_ensemble,
    tune_malloc,
)
from stream_infer.models._train import TrainConfig, TrainResult, train_ensemble

__all__ = [
    "CHECK_TOL",
    "Ensemble",
    "EnsembleResult",
    "MambaClassifier",
    "MambaConfig",
    "Samples",
    "StreamData",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "load_ensemble",
    "load_streams",
    "make_samples",
    "stream_from_frame",
    "train_ensemble",
    "tune_malloc",
]

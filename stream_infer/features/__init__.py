"""The 27 features of docs/feature-spec.md (version 1), computed two ways that agree to 1e-9.

``batch_features`` computes whole streams (training, replay); ``StreamingFeatures`` computes
one closed candle at a time in O(1) (serving). Both apply the same stream rules
(``prepare_stream``: duplicates, late candles, gaps, restarts).
"""

from __future__ import annotations

from stream_infer.features._batch import (
    batch_features,
    compute_extended_features,
    cs_spread,
)
from stream_infer.features._gaps import Outcome, prepare_stream
from stream_infer.features._spec import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    MAX_GAP,
    N_FEATURES,
    WARMUP,
)
from stream_infer.features._streaming import StreamingFeatures

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "MAX_GAP",
    "N_FEATURES",
    "WARMUP",
    "Outcome",
    "StreamingFeatures",
    "batch_features",
    "compute_extended_features",
    "cs_spread",
    "prepare_stream",
]

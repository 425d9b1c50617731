"""The pipeline's inputs, outputs and the two collaborators it is written against."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from stream_infer.candles import Candle
from stream_infer.events import DeadLetter, Prediction

__all__ = [
    "BatchResult",
    "Counts",
    "EnsembleLike",
    "EnsembleOutput",
    "FeatureStream",
    "HeldStream",
    "Inbound",
    "StageTimes",
    "StreamState",
]


class Inbound(NamedTuple):
    """One consumed message. ``received`` is in the pipeline clock's units (seconds)."""

    value: bytes | None
    partition: int
    offset: int
    received: float
    topic: str = "candles"
    timestamp_ms: int | None = None
    key: bytes | None = None


class FeatureStream(Protocol):
    """What the pipeline needs of ``stream_infer.features.StreamingFeatures``."""

    def update(self, candle: Candle) -> np.ndarray | None: ...
    def warm(self, candles: Iterable[Candle]) -> Any: ...
    def window(self, n: int) -> np.ndarray: ...
    @property
    def last_outcome(self) -> Any: ...
    @property
    def last_filled(self) -> int: ...
    @property
    def ready(self) -> bool: ...
    @property
    def rows_available(self) -> int: ...
    @property
    def last_open_time(self) -> int | None: ...


class EnsembleOutput(Protocol):
    """``Ensemble.predict``'s result: (B, H) arrays."""

    @property
    def probabilities(self) -> np.ndarray: ...
    @property
    def confidences(self) -> np.ndarray: ...
    @property
    def mamba(self) -> np.ndarray: ...
    @property
    def lgbm(self) -> np.ndarray: ...


class EnsembleLike(Protocol):
    """What the pipeline needs of ``stream_infer.models.Ensemble``."""

    @property
    def ensemble_id(self) -> Any: ...
    @property
    def version(self) -> Any: ...
    @property
    def horizons(self) -> Sequence[int]: ...
    @property
    def seq_len(self) -> int: ...
    @property
    def feature_version(self) -> Any: ...
    def predict(self, windows: np.ndarray) -> EnsembleOutput: ...


@dataclass(slots=True)
class Counts:
    """What happened to the messages of one batch (or of a whole run, see ``add``)."""

    messages: int = 0
    candles: int = 0  # closed, valid candles that reached a stream (duplicates included)
    not_closed: int = 0
    duplicates: int = 0
    late: int = 0
    restarts: int = 0  # a gap > 60 candles ended a stream and started a new one
    gap_filled: int = 0  # synthetic candles inserted for gaps <= 60
    warming: int = 0  # in a stream, but no prediction: features or window not ready
    ready: int = 0  # candles whose window went to the model (or would, when disabled)
    predictions: int = 0
    not_finite: int = 0  # ready candles the model answered NaN/inf for: no prediction
    dead_letters: dict[str, int] = field(default_factory=dict)

    def add(self, other: Counts) -> None:
        """Accumulate ``other`` into this one."""
        for name in self.__slots__:
            if name == "dead_letters":
                for reason, n in other.dead_letters.items():
                    self.dead_letters[reason] = self.dead_letters.get(reason, 0) + n
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(slots=True)
class StageTimes:
    """Seconds spent per stage in one batch (pipeline clock), for the stage histograms."""

    decode: float = 0.0
    features: float = 0.0
    models: float = 0.0


class HeldStream(NamedTuple):
    """A stream ``Pipeline.process(hold=...)`` stopped for: its first closed candle in the
    rest of the batch, and where that candle came from."""

    partition: int
    offset: int
    candle: Candle


@dataclass(frozen=True, slots=True)
class BatchResult:
    """The outcome of ``Pipeline.process``.

    ``offsets`` maps each partition seen to the highest offset processed in the batch
    (commit ``offset + 1`` once the predictions and dead letters are acknowledged).
    ``ensemble`` is the one that served the batch (None when inference is disabled).
    ``held_at``: with ``hold``, the index of the first message not processed (None when
    the whole batch was); ``held`` the streams that need their history first.
    """

    predictions: list[Prediction]
    dead_letters: list[DeadLetter]
    counts: Counts
    offsets: dict[int, int]
    times: StageTimes
    ensemble: EnsembleLike | None
    held_at: int | None = None
    held: tuple[HeldStream, ...] = ()


class StreamState(NamedTuple):
    """A read-only view of one stream, for tests and metrics."""

    symbol: str
    interval: str
    partition: int | None
    ready: bool
    rows_available: int
    keep_rows: int
    last_open_time: int | None

"""One way to build the service from settings: ``stream-infer run``, the demo and the benchmarks.

What serves is either a fixed ensemble (``--models DIR``, a benchmark's model; None:
inference disabled) or a ``HotReload`` (``stream_infer.reload.EnsembleRuntime``), whose
ensemble the service reads between batches, whose gate it holds around each batch and
whose sink gets each batch's predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from stream_infer.config import KafkaSettings
from stream_infer.kafka._service import Service
from stream_infer.kafka._stream_history import StreamHistorySource
from stream_infer.pipeline import BatchResult, EnsembleLike, Pipeline

if TYPE_CHECKING:
    from stream_infer.ops import Metrics
    from stream_infer.reload import BatchGate

__all__ = ["HotReload", "ServiceOptions", "build_service"]


class HotReload(Protocol):
    """What the service needs of ``stream_infer.reload.EnsembleRuntime``."""

    @property
    def current(self) -> EnsembleLike | None: ...
    @property
    def provider(self) -> Callable[[], EnsembleLike | None]: ...
    @property
    def gate(self) -> BatchGate | None: ...
    def on_batch(self, result: BatchResult) -> None: ...
    def model_required(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """The service's knobs that are not settings (see ``Service``)."""

    client_id: str = "stream-infer"
    session_timeout_ms: int = 10_000
    # None: wait for the broker until stopped (a service); 0: one attempt.
    start_timeout_s: float | None = 0.0


def build_service(
    kafka: KafkaSettings,
    ensemble: EnsembleLike | None = None,
    *,
    reload: HotReload | None = None,
    metrics: Metrics | None = None,
    stream_history: StreamHistorySource | None = None,
    options: ServiceOptions | None = None,
) -> Service:
    """The service for ``kafka`` serving ``ensemble`` (None: inference disabled) or, with
    ``reload``, whatever the hot reload serves. A model is required (the service holds
    consumption while none is loaded) when ``ensemble`` is given, or when ``reload`` says so.
    """
    if reload is not None and ensemble is not None:
        raise ValueError("give an ensemble or a hot reload, not both")
    opts = options or ServiceOptions()
    serving = ensemble if reload is None else reload.current
    required: bool | Callable[[], bool] = (
        ensemble is not None if reload is None else reload.model_required
    )
    return Service(
        Pipeline(serving, max_bytes=kafka.kafka_max_message_bytes),
        kafka,
        ensemble=None if reload is None else reload.provider,
        on_batch=None if reload is None else reload.on_batch,
        gate=None if reload is None else reload.gate,  # reload steps go between batches
        model_required=required,
        metrics=metrics,
        stream_history=stream_history,
        client_id=opts.client_id,
        session_timeout_ms=opts.session_timeout_ms,
        start_timeout_s=opts.start_timeout_s,
    )

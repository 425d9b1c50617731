"""Operations surface: Prometheus metrics and the /metrics, /healthz, /readyz HTTP server."""

from __future__ import annotations

from stream_infer.ops._http import OpsServer
from stream_infer.ops._logging import JsonFormatter, configure_logging
from stream_infer.ops._metrics import DEAD_LETTER_REASONS, SKIP_REASONS, STAGES, Metrics

__all__ = [
    "DEAD_LETTER_REASONS",
    "SKIP_REASONS",
    "STAGES",
    "JsonFormatter",
    "Metrics",
    "OpsServer",
    "configure_logging",
]

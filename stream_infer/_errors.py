"""The exception tree of stream_infer.

Every error the package raises on purpose derives from ``StreamInferError`` and
carries fields that say where it happened, not only a message::

    StreamInferError            symbol, interval, offset, version, path
    ├── CandleError             bad input; it goes to the dead-letter topic
    │   ├── DecodeError         undecodable bytes, not JSON, wrong schema
    │   └── InvalidCandle       breaks a rule of docs/feature-spec.md (``rule``, ``row``)
    ├── ModelError              the models and their artifacts
    │   ├── ArtifactError       a missing, corrupt or mismatched file (``path``)
    │   └── ExportCheckError    an exported artifact disagrees with its source model
    ├── ConfigError             a configuration value or source is unusable
    ├── DatabaseError           Postgres is unreachable or answered an error
    ├── BrokerError             Kafka is unreachable or answered an error
    └── StreamNotReady          a stream's stored candles cannot make a prediction
                                (``reason``, ``need``, ``have``)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArtifactError",
    "BrokerError",
    "CandleError",
    "ConfigError",
    "DatabaseError",
    "DecodeError",
    "ExportCheckError",
    "InvalidCandle",
    "ModelError",
    "StreamInferError",
    "StreamNotReady",
]


class StreamInferError(Exception):
    """Root of every error stream_infer raises on purpose."""

    def __init__(
        self,
        message: str,
        *,
        symbol: str | None = None,
        interval: str | None = None,
        offset: int | None = None,
        version: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.symbol = symbol
        self.interval = interval
        self.offset = offset
        self.version = version
        self.path = path

    def context(self) -> dict[str, Any]:
        """The fields that are set, for logs and dead letters."""
        keys = ("symbol", "interval", "offset", "version", "path")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def __str__(self) -> str:
        ctx = self.context()
        if not ctx:
            return self.message
        where = ", ".join(f"{k}={v}" for k, v in ctx.items())
        return f"{self.message} ({where})"


class CandleError(StreamInferError):
    """A candle that cannot enter a stream. ``reason`` is a short stable code."""

    reason: str = "invalid"


class DecodeError(CandleError):
    """The message is not a candle at all: bytes, JSON or schema."""

    def __init__(self, message: str, *, reason: str = "decode", **ctx: Any) -> None:
        super().__init__(message, **ctx)
        self.reason = reason


class InvalidCandle(CandleError):
    """The candle breaks a rule of docs/feature-spec.md.

    ``rule`` names the rule, ``row`` locates the candle in a file.
    """

    def __init__(self, message: str, *, rule: str, row: int | None = None, **ctx: Any) -> None:
        super().__init__(message, **ctx)
        self.rule = rule
        self.row = row
        self.reason = f"rule:{rule}"

    def context(self) -> dict[str, Any]:
        ctx = super().context()
        ctx["rule"] = self.rule
        if self.row is not None:
            ctx["row"] = self.row
        return ctx


class ModelError(StreamInferError):
    """Loading, checking or running the models failed."""


class ArtifactError(ModelError):
    """A model artifact is missing, corrupt or does not match its manifest."""


class ExportCheckError(ModelError):
    """An exported artifact disagrees with the in-memory model it came from."""


class ConfigError(StreamInferError):
    """A configuration value or source is unusable."""


class DatabaseError(StreamInferError):
    """Postgres is unreachable or answered an error."""


class BrokerError(StreamInferError):
    """Kafka is unreachable or answered an error."""


class StreamNotReady(StreamInferError):
    """A stream's stored candles cannot make a prediction for its newest candle.

    ``reason`` is a short stable code: ``no_candles`` (the stream has none), ``too_few``
    (fewer than readiness needs), ``gap`` (a gap longer than the feature spec bridges
    restarted the stream too recently), ``newest_invalid`` (the newest row breaks a rule).
    ``need`` and ``have`` count candles of the stream as the features see it (gap-filled
    candles included): how many readiness needs, how many there are since its last restart.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        need: int | None = None,
        have: int | None = None,
        **ctx: Any,
    ) -> None:
        super().__init__(message, **ctx)
        self.reason = reason
        self.need = need
        self.have = have

    def context(self) -> dict[str, Any]:
        ctx = super().context()
        ctx["reason"] = self.reason
        if self.need is not None:
            ctx["need"] = self.need
        if self.have is not None:
            ctx["have"] = self.have
        return ctx

"""The dead-letter record: a message that could not become a candle, and why.

Choice: the record is one self-contained JSON value (``schemas/dead_letter.schema.json``)
with the original bytes in base64, rather than the raw bytes with metadata in headers,
so that it survives any tool that drops headers and can be read without Kafka. The
original message key is kept as the dead letter's key, and ``headers()`` repeats the
reason so a consumer can filter without parsing the value.
"""

from __future__ import annotations

import base64

import orjson
from pydantic import BaseModel, ConfigDict, Field

from stream_infer._errors import CandleError, DecodeError

__all__ = ["DeadLetter", "decode_dead_letter", "encode_dead_letter"]

_MAX_ERROR = 500


class DeadLetter(BaseModel):
    """One message sent to ``candles.dlq``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str = Field(
        description='short stable code: "not_json", "schema:<field>", "rule:<name>", ...'
    )
    error: str = Field(description="the error message, for people")
    topic: str = Field(description="the topic the message came from")
    partition: int
    offset: int
    timestamp_ms: int | None = Field(default=None, description="the message's broker timestamp")
    symbol: str | None = Field(default=None, description="when it could be read")
    interval: str | None = None
    value: str = Field(
        description="the original message value, standard base64 (RFC 4648, padded)",
        json_schema_extra={"contentEncoding": "base64"},
    )
    failed_at: int = Field(description="when it was rejected, ms since the epoch")

    @classmethod
    def from_error(
        cls,
        exc: CandleError,
        *,
        value: bytes | bytearray | memoryview | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int | None,
        failed_at: int,
    ) -> DeadLetter:
        """The record for a message that raised ``exc``."""
        return cls(
            reason=exc.reason,
            error=exc.message[:_MAX_ERROR],
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp_ms=timestamp_ms,
            symbol=exc.symbol,
            interval=exc.interval,
            value=base64.b64encode(bytes(value) if value is not None else b"").decode(),
            failed_at=failed_at,
        )

    @property
    def original(self) -> bytes:
        """The original message value (to inspect or re-drive it)."""
        return base64.b64decode(self.value)

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers that repeat the reason and the source, for filtering."""
        return [
            ("reason", self.reason.encode()),
            ("source", f"{self.topic}/{self.partition}/{self.offset}".encode()),
        ]


def encode_dead_letter(dl: DeadLetter) -> bytes:
    """The dead letter as JSON (the original value in base64)."""
    return orjson.dumps(dl.__dict__)


def decode_dead_letter(value: bytes) -> DeadLetter:
    """A dead-letter message back to the model (e.g. to inspect or re-drive it)."""
    try:
        return DeadLetter.model_validate_json(value)
    except ValueError as exc:
        raise DecodeError(f"not a dead letter: {str(exc)[:200]}", reason="dead_letter") from None

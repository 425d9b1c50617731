"""JSON Schemas of the events, generated from the models (``schemas/*.json`` in the repo).

Regenerate with ``python -m stream_infer.events [DIR]``; a test fails when the committed
files drift from the models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from stream_infer.candles import Candle
from stream_infer.events._dead_letter import DeadLetter
from stream_infer.events._prediction import Prediction

__all__ = ["BinanceKlineEvent", "event_schemas", "schema_bytes", "write_schemas"]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class BinanceKline(BaseModel):
    """The ``k`` object of the exchange's kline event (numbers as strings, as it sends them)."""

    model_config = ConfigDict(extra="allow")

    t: int = Field(description="open_time, ms")
    T: int = Field(description="close_time, ms")
    s: str | None = Field(default=None, description="symbol (else the event's s)")
    i: str = Field(description="interval")
    o: str | float = Field(description="open")
    c: str | float = Field(description="close")
    h: str | float = Field(description="high")
    l: str | float = Field(description="low")  # noqa: E741  (the exchange's name)
    v: str | float = Field(description="volume (base asset)")
    n: int = Field(description="trades")
    x: bool = Field(default=True, description="is_closed: a candle not closed updates nothing")
    q: str | float = Field(description="quote_volume")
    V: str | float = Field(description="taker_buy_base")
    Q: str | float = Field(description="taker_buy_quote")


class BinanceKlineEvent(BaseModel):
    """The exchange's websocket kline event, accepted unchanged on the candles topic.

    Also accepted inside the combined-stream wrapper ``{"stream": ..., "data": <this>}``.
    """

    model_config = ConfigDict(extra="allow")

    e: str = Field(description='"kline"')
    E: int | None = Field(default=None, description="event time, ms")
    s: str | None = Field(default=None, description="symbol")
    k: BinanceKline


_MODELS: dict[str, tuple[type[BaseModel], str]] = {
    "candle": (Candle, "validation"),
    "binance_kline": (BinanceKlineEvent, "validation"),
    "prediction": (Prediction, "serialization"),
    "dead_letter": (DeadLetter, "serialization"),
}


def event_schemas() -> dict[str, dict[str, Any]]:
    """``{name: JSON Schema}`` for every event, as written to ``<name>.schema.json``."""
    out: dict[str, dict[str, Any]] = {}
    for name, (model, mode) in _MODELS.items():
        schema = model.model_json_schema(mode=mode)  # type: ignore[arg-type]
        out[name] = {"$schema": _DIALECT, "$id": f"{name}.schema.json", **schema}
    return out


def _dump(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_schemas(directory: str | Path) -> list[Path]:
    """Write ``<name>.schema.json`` for every event into ``directory``; returns the paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in event_schemas().items():
        p = d / f"{name}.schema.json"
        p.write_bytes(_dump(schema))
        paths.append(p)
    return paths


def schema_bytes(name: str) -> bytes:
    """The exact file content ``write_schemas`` writes for one event (for the drift test)."""
    return _dump(event_schemas()[name])

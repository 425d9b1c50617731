from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from stream_infer._errors import DecodeError

# Binance's interval names; anything else is refused at decode time.
INTERVAL_MS: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
}

# The numeric fields a stream is computed from, in a fixed order.
CANDLE_FIELDS: tuple[str, ...] = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trades",
    "taker_buy_base",
    "taker_buy_quote",
    "spread_bps",
)

# The float fields: prices and volumes (``trades`` is a count, ``spread_bps`` optional).
NUMERIC_FIELDS: tuple[str, ...] = tuple(
    f for f in CANDLE_FIELDS if f not in ("open_time", "trades", "spread_bps")
)

# A whole candle row: frames, the Postgres ``candles`` table and replay use this order.
CANDLE_COLUMNS: tuple[str, ...] = (
    "symbol",
    "interval",
    "open_time",
    "close_time",
    *CANDLE_FIELDS[1:],
)


def interval_to_ms(interval: str) -> int:
    """Milliseconds of an interval name such as ``"1m"``."""
    try:
        return INTERVAL_MS[interval]
    except KeyError:
        raise DecodeError(
            f"unknown interval {interval!r}; expected one of {', '.join(INTERVAL_MS)}",
            reason="interval",
            interval=interval,
        ) from None


class Candle(BaseModel):
    """One candle event (docs/design.md, Events). Schema checks only; rules: ``check_candle``."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=True)

    symbol: str = Field(min_length=1, max_length=64)
    interval: str = Field(min_length=1, max_length=8)
    open_time: int = Field(description="candle open time, ms since the epoch")
    close_time: int = Field(description="candle close time, ms since the epoch")
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float
    trades: int
    taker_buy_base: float
    taker_buy_quote: float
    spread_bps: float | None = None
    is_closed: bool = True

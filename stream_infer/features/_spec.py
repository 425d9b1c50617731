"""Constants of the feature spec (docs/feature-spec.md, version 1), defined once for both paths."""

from __future__ import annotations

import math

FEATURE_VERSION = 1

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",
    "ret_5",
    "ret_15",
    "ret_60",
    "vol_15",
    "vol_60",
    "range_hl",
    "close_loc",
    "body",
    "upper_wick",
    "lower_wick",
    "rsi_14",
    "ema_dev_12",
    "ema_dev_26",
    "macd_hist",
    "bb_z_20",
    "atr_14",
    "vol_z_60",
    "vol_ratio_15",
    "taker_buy_ratio",
    "taker_imb_15",
    "spread_bps",
    "spread_z_60",
    "trades_z_60",
    "trade_size_dev_60",
    "vwap_dev_15",
    "eff_ratio_10",
)
N_FEATURES = len(FEATURE_NAMES)

# Row t of a stream is ready when t >= WARMUP - 1 ("Readiness").
WARMUP = 400
# A gap of at most MAX_GAP missing candles is filled with flat candles; a longer one restarts.
MAX_GAP = 60

# z_N is 0 when std <= Z_EPS * max(1, |mean|).
Z_EPS = 1e-10

# EMA factors; the recursions are e = A * x + B * e_prev with B = 1 - A computed once.
A_EMA12 = 2.0 / 13.0
B_EMA12 = 1.0 - A_EMA12
A_EMA26 = 2.0 / 27.0
B_EMA26 = 1.0 - A_EMA26
A_SIGNAL = 2.0 / 10.0
B_SIGNAL = 1.0 - A_SIGNAL
A_WILDER = 1.0 / 14.0
B_WILDER = 1.0 - A_WILDER

# Corwin–Schultz: k = 3 - 2*sqrt(2).
CS_K = 3.0 - 2.0 * math.sqrt(2.0)
BPS = 10_000.0

# Rules this package adds to the candle rules (open_time is not checked by check_candle).
RULE_OPEN_TIME = "open_time_integer"
RULE_GRID = "open_time_grid"

"""The streaming path: one closed candle at a time, O(1) state, same numbers as the batch path.

Window moments come from ``Moments`` (running shifted sums with a rounding-error bound and an
exact two-pass fallback, see _moments.py); plain window sums are Python's ``sum`` over a
bounded deque, oldest first, the batch path's order. Closes are kept unboxed in a 61-slot
circular array (memory: thousands of streams). The recursions (EMA, Wilder) and the
per-candle formulas use the batch loop's operations in the same order, so they are
bit-identical to it.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from stream_infer._errors import InvalidCandle
from stream_infer.candles import check_candle
from stream_infer.features._gaps import Outcome, as_open_time, step
from stream_infer.features._moments import Moments
from stream_infer.features._spec import (
    A_EMA12,
    A_EMA26,
    A_SIGNAL,
    A_WILDER,
    B_EMA12,
    B_EMA26,
    B_SIGNAL,
    B_WILDER,
    BPS,
    CS_K,
    N_FEATURES,
    WARMUP,
)

_log = math.log
_log1p = math.log1p
_exp = math.exp
_sqrt = math.sqrt
_INF = math.inf
_NAN = math.nan
_fromiter = np.fromiter
_F64 = np.dtype(np.float64)
_READY = Outcome.READY
_NC = 61  # closes kept: the newest and 60 back (ret_60)
_WARMING = Outcome.WARMING


def _ln(x: float) -> float:
    # A ratio of valid prices can only underflow to 0 in absurd inputs; follow IEEE, not raise.
    return _log(x) if x > 0.0 else -_INF


class StreamingFeatures:
    """Features of one (symbol, interval) stream, one closed candle at a time.

    ``update`` validates the candle (``check_candle``, then open_time) before anything
    changes, applies the stream rules (docs/feature-spec.md, Gaps) and returns the (27,) float64
    features of the newest candle once the stream holds WARMUP candles, else None;
    ``last_outcome`` and ``last_filled`` say why. With ``keep_rows=N`` the last N ready rows
    (synthetic gap rows included) are kept for ``window``; a restart clears them.
    """

    __slots__ = (
        "_a60",
        "_ad10",
        "_atr",
        "_c",
        "_c20",
        "_c61",
        "_ci",
        "_e12",
        "_e26",
        "_gain",
        "_h",
        "_i15",
        "_interval",
        "_keep",
        "_l",
        "_last_ot",
        "_ln60",
        "_loss",
        "_lv60",
        "_q15",
        "_r15",
        "_r60",
        "_ri",
        "_rng",
        "_rows",
        "_rows_n",
        "_s60",
        "_sig",
        "_t",
        "_v15",
        "last_filled",
        "last_outcome",
    )

    def __init__(self, interval_ms: int = 60_000, keep_rows: int = 0) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        if keep_rows < 0:
            raise ValueError(f"keep_rows must be >= 0, got {keep_rows}")
        self._interval = int(interval_ms)
        self._keep = int(keep_rows)
        self._rows = np.empty((self._keep, N_FEATURES), dtype=np.float64)
        self.last_outcome: Outcome | None = None
        self.last_filled = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream (the next candle starts a new one) and the kept rows."""
        self._t = 0
        self._last_ot: int | None = None
        self._c = self._h = self._l = self._rng = _NAN
        self._e12 = self._e26 = self._sig = _NAN
        self._gain = self._loss = self._atr = _NAN
        self._c61 = array("d", bytes(8 * _NC))
        self._ci = 0  # next slot of _c61 to write; it holds the newest close at _ci - 1
        self._v15: deque[float] = deque(maxlen=15)
        self._q15: deque[float] = deque(maxlen=15)
        self._i15: deque[float] = deque(maxlen=15)
        self._ad10: deque[float] = deque(maxlen=10)
        self._c20 = Moments(20)
        self._r15 = Moments(15)
        self._r60 = Moments(60)
        self._lv60 = Moments(60)
        self._s60 = Moments(60)
        self._ln60 = Moments(60)
        self._a60 = Moments(60)
        self._ri = 0
        self._rows_n = 0

    # -- public state -------------------------------------------------------------------

    @property
    def interval_ms(self) -> int:
        return self._interval

    @property
    def keep_rows(self) -> int:
        return self._keep

    @property
    def ready(self) -> bool:
        """True once the stream holds WARMUP candles (features are returned)."""
        return self._t >= WARMUP

    @property
    def stream_length(self) -> int:
        """Candles in the current stream, synthetic gap candles included."""
        return self._t

    @property
    def last_open_time(self) -> int | None:
        return self._last_ot

    @property
    def last_close(self) -> float | None:
        return None if self._t == 0 else self._c

    @property
    def rows_available(self) -> int:
        return self._rows_n

    def window(self, n: int | None = None) -> np.ndarray:
        """The last ``n`` kept feature rows (all when None), oldest first, as a new (n, 27) array."""
        avail = self._rows_n
        if n is None:
            n = avail
        if not 0 <= n <= avail:
            raise ValueError(f"window({n}): {avail} rows available (keep_rows={self._keep})")
        keep = self._keep
        start = (self._ri - n) % keep if keep else 0
        if start + n <= keep:
            return self._rows[start : start + n].copy()
        return np.concatenate((self._rows[start:], self._rows[: start + n - keep]))

    # -- updates --------------------------------------------------------------------------

    def update(self, candle: Any) -> np.ndarray | None:
        """Feed one closed candle; the (27,) features of the newest candle when ready, else None."""
        return self._update(candle, True)

    def warm(self, candles: Iterable[Any]) -> None:
        """Feed history without returning features (kept rows are still recorded)."""
        for candle in candles:
            self._update(candle, False)

    def _update(self, candle: Any, want: bool) -> np.ndarray | None:
        try:
            check_candle(candle)
        except (TypeError, ValueError) as exc:  # e.g. a non-numeric spread_bps
            raise InvalidCandle(f"a number is not a number: {exc}", rule="finite") from exc
        if type(candle) is dict or isinstance(candle, Mapping):
            ot = candle.get("open_time")
            if type(ot) is not int:
                ot = as_open_time(ot)
            o = float(candle["open"])
            h = float(candle["high"])
            lo = float(candle["low"])
            c = float(candle["close"])
            v = float(candle["volume"])
            q = float(candle["quote_volume"])
            n = float(candle["trades"])
            tb = float(candle["taker_buy_base"])
            s_in = candle.get("spread_bps")
        else:
            ot = getattr(candle, "open_time", None)
            if type(ot) is not int:
                ot = as_open_time(ot)
            o = float(candle.open)
            h = float(candle.high)
            lo = float(candle.low)
            c = float(candle.close)
            v = float(candle.volume)
            q = float(candle.quote_volume)
            n = float(candle.trades)
            tb = float(candle.taker_buy_base)
            s_in = getattr(candle, "spread_bps", None)
        s = None if s_in is None or s_in != s_in else float(s_in)  # NaN spread = absent
        filled = 0
        outcome: Outcome | None = None
        last = self._last_ot
        if last is not None and ot - last != self._interval:
            outcome, filled = step(ot, last, self._interval)  # may raise: nothing changed yet
            if outcome is Outcome.DUPLICATE or outcome is Outcome.LATE:
                self.last_outcome = outcome
                self.last_filled = 0
                return None
            if outcome is Outcome.RESTARTED:
                self.reset()
            elif filled:
                keep = self._keep > 0
                p = self._c
                step_ms = self._interval
                for i in range(1, filled + 1):
                    self._push(last + i * step_ms, p, p, p, p, 0.0, 0.0, 0.0, 0.0, None, keep)
        vec = self._push(ot, o, h, lo, c, v, q, n, tb, s, want or self._keep > 0)
        self.last_filled = filled
        self.last_outcome = outcome or (_READY if self._t >= WARMUP else _WARMING)
        return vec if want else None

    def _push(
        self,
        ot: int,
        o: float,
        h: float,
        lo: float,
        c: float,
        v: float,
        q: float,
        n: float,
        tb: float,
        s_in: float | None,
        emit: bool,
    ) -> np.ndarray | None:
        """Append one candle of the stream; its feature row when ready and ``emit``."""
        t = self._t
        rng = _log(h / lo)
        tbr = tb / v if v > 0.0 else 0.5
        a = _log1p(q / (n if n > 1.0 else 1.0))
        if t == 0:
            r = _NAN
            s = 0.0 if s_in is None else s_in
            e12 = e26 = c
            sig = 0.0
            gain = loss = atr = _NAN
        else:
            p = self._c
            r = _ln(c / p)
            if s_in is None:
                h0 = self._h
                l0 = self._l
                r0 = self._rng
                beta = r0 * r0 + rng * rng
                g = _log((h0 if h0 > h else h) / (l0 if l0 < lo else lo))
                gamma = g * g
                alpha = (_sqrt(2.0 * beta) - _sqrt(beta)) / CS_K - _sqrt(gamma / CS_K)
                e = _exp(alpha if alpha < 50.0 else 50.0)
                cs = 2.0 * (e - 1.0) / (1.0 + e)
                s = (cs if cs > 0.0 else 0.0) * BPS
            else:
                s = s_in
            e12 = A_EMA12 * c + B_EMA12 * self._e12
            e26 = A_EMA26 * c + B_EMA26 * self._e26
            sig = A_SIGNAL * (e12 - e26) + B_SIGNAL * self._sig
            up = c - p if c > p else 0.0
            dn = p - c if p > c else 0.0
            tr = max(h - lo, abs(h - p), abs(lo - p))
            if t == 1:
                gain, loss, atr = up, dn, tr
            else:
                gain = A_WILDER * up + B_WILDER * self._gain
                loss = A_WILDER * dn + B_WILDER * self._loss
                atr = A_WILDER * tr + B_WILDER * self._atr
            self._r60.push(r)
            self._r15.push(r)
            self._ad10.append(abs(c - p))
        self._t = t + 1
        self._last_ot = ot
        self._c = c
        self._h = h
        self._l = lo
        self._rng = rng
        self._e12 = e12
        self._e26 = e26
        self._sig = sig
        self._gain = gain
        self._loss = loss
        self._atr = atr
        cb = self._c61
        j = self._ci  # newest close's slot
        cb[j] = c
        self._ci = 0 if j == _NC - 1 else j + 1
        self._c20.push(c)
        self._lv60.push(_log1p(v))
        self._s60.push(s)
        self._ln60.push(_log1p(n))
        self._a60.push(a)
        self._v15.append(v)
        self._q15.append(q)
        self._i15.append(2.0 * tbr - 1.0)
        if t < WARMUP - 1 or not emit:
            return None

        gl = gain + loss
        sv = sum(self._v15)
        mv = sv / 15
        den = sum(self._ad10)
        # _c61 is full here (t >= WARMUP - 1 > 61): the close k candles back is at j - k
        vec = _fromiter(
            (
                r,
                _ln(c / cb[(j - 5) % _NC]),
                _ln(c / cb[(j - 15) % _NC]),
                _ln(c / cb[(j + 1) % _NC]),
                self._r15.std(),
                self._r60.std(),
                rng,
                0.5 if h == lo else (c - lo) / (h - lo),
                _ln(c / o),
                _log(h / (o if o > c else c)),
                _log((o if o < c else c) / lo),
                0.5 if gl == 0.0 else gain / gl,
                _ln(c / e12),
                _ln(c / e26),
                ((e12 - e26) - sig) / c,
                self._c20.z(),
                atr / c,
                self._lv60.z(),
                1.0 if mv == 0.0 else v / mv,
                tbr,
                sum(self._i15) / 15,
                s,
                self._s60.z(),
                self._ln60.z(),
                self._a60.dev(),
                0.0 if sv == 0.0 else (_ln(c / vw) if (vw := sum(self._q15) / sv) > 0.0 else _INF),
                0.0 if den == 0.0 else abs(c - cb[(j - 10) % _NC]) / den,
            ),
            _F64,
            N_FEATURES,
        )
        if self._keep:
            self._rows[self._ri] = vec
            self._ri = (self._ri + 1) % self._keep
            if self._rows_n < self._keep:
                self._rows_n += 1
        return vec

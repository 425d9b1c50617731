"""Sliding-window mean, std and z-score in O(1), proven against the window's values.

The running sums are of y = x - K for a recent window value K (S1 = sum y, S2 = sum y^2), so
the variance S2 - S1^2/n does not cancel the way raw sums of x and x^2 do (docs/feature-spec.md,
"Numerical notes"). Every update also adds a first-order bound of its rounding error; when
the bound could reach REL of the variance (or of z's numerator against the std) the moments
are recomputed from the window's values (``math.fsum`` and ``math.dist``, a two-pass) and the
sums restart at K = the newest value. The answer is therefore within ~REL of the exact one
whatever the history (spikes leaving the window, flat or near-flat windows, drift).

The window is a circular array of unboxed doubles: a service holds thousands of streams, and
a deque of Python floats costs 32 bytes a value against 8 here.
"""

from __future__ import annotations

import math
from array import array
from itertools import chain, repeat

from stream_infer.features._spec import Z_EPS

U = 2.0**-52  # twice the unit roundoff, so that first-order bounds stay bounds
U3 = 3.0 * U
REL = 2.0**-40  # ~9e-13: accepted relative error of the variance and of z's numerator

_sqrt = math.sqrt
_fsum = math.fsum
_dist = math.dist


class Moments:
    """Moments of the last ``n`` pushed values (ask only once ``full``)."""

    __slots__ = (
        "_buf",
        "_count",
        "_e1",
        "_e2",
        "_i",
        "_k",
        "_live",
        "_n1",
        "_s1",
        "_s2",
        "_y",
        "n",
    )

    def __init__(self, n: int) -> None:
        if n < 2:
            raise ValueError(f"a window of moments needs n >= 2, got {n}")
        self.n = n
        self._buf = array("d", bytes(8 * n))
        self._i = 0  # next slot to write: the oldest value once full
        self._count = 0
        self._n1 = n - 1.0
        self._live = False  # running sums valid (window full, restarted at least once)
        self._k = self._y = self._s1 = self._s2 = self._e1 = self._e2 = 0.0

    @property
    def full(self) -> bool:
        return self._count == self.n

    def window(self) -> array[float]:
        """The window's values, oldest first (a copy)."""
        b = self._buf
        i = self._i
        return b[:i] if self._count < self.n else b[i:] + b[:i]

    def push(self, x: float) -> None:
        buf = self._buf
        i = self._i
        if self._live:
            k = self._k
            yo = buf[i] - k  # the same rounding as when it entered: the sums cancel it exactly
            buf[i] = x
            yn = x - k
            s1 = self._s1 + (yn - yo)
            pn = yn * yn
            po = yo * yo
            s2 = self._s2 + (pn - po)
            self._e1 += U * (abs(yn) + abs(yo) + abs(s1))
            self._e2 += U * (pn + po + abs(s2))
            self._s1 = s1
            self._s2 = s2
            self._y = yn
        else:
            buf[i] = x
            if self._count < self.n:
                self._count += 1
        i += 1
        self._i = 0 if i == self.n else i

    def std(self) -> float:
        """Sample std (ddof 1) of the window."""
        if self._live:
            s1 = self._s1
            s2 = self._s2
            my = s1 / self.n
            t = s1 * my
            ss = s2 - t
            if ss > 0.0:
                e1 = self._e1 + U * _sqrt(self.n * s2)
                if self._e2 + U3 * s2 + U * t + 2.0 * abs(my) * e1 <= REL * ss:
                    return _sqrt(ss / self._n1)
            elif ss == 0.0 and self._e2 == 0.0 and self._e1 == 0.0:
                return 0.0  # every value equals K exactly
        return self.exact()[1]

    def z(self) -> float:
        """z of the newest value: (x_t - mean) / std, 0 when std <= Z_EPS * max(1, |mean|)."""
        if self._live:
            s1 = self._s1
            s2 = self._s2
            my = s1 / self.n
            t = s1 * my
            ss = s2 - t
            if ss > 0.0:
                e1 = self._e1 + U * _sqrt(self.n * s2)
                if self._e2 + U3 * s2 + U * t + 2.0 * abs(my) * e1 <= REL * ss:
                    sd = _sqrt(ss / self._n1)
                    mean = self._k + my
                    if sd <= (
                        Z_EPS * mean if mean > 1.0 else -Z_EPS * mean if mean < -1.0 else Z_EPS
                    ):
                        return 0.0
                    y = self._y
                    dev = y - my
                    if U * (abs(y) + abs(dev) + abs(my)) + e1 / self.n <= REL * sd:
                        return dev / sd
            elif ss == 0.0 and self._e2 == 0.0 and self._e1 == 0.0:
                return 0.0
        dev, sd, mean = self.exact()
        return 0.0 if sd <= Z_EPS * max(1.0, abs(mean)) else dev / sd

    def dev(self) -> float:
        """x_t - mean of the window (exactly 0 on a flat window)."""
        if self._live:
            my = self._s1 / self.n
            y = self._y
            dev = y - my
            s2 = self._s2
            e1 = self._e1 + U * _sqrt(self.n * (s2 if s2 > 0.0 else -s2))
            if U * (abs(y) + abs(dev) + abs(my)) + e1 / self.n <= REL * (
                dev if dev > 1.0 else -dev if dev < -1.0 else 1.0
            ):
                return dev
        return self.exact()[0]

    def exact(self) -> tuple[float, float, float]:
        """(x_t - mean, std, mean) from the window's values; restarts the running sums at x_t.

        With K = x_t a member of the window, S2 / SS <= n, so SS = S2 - S1^2 / n loses at
        most a factor n of precision; S1 is exact (fsum) and S2 is a correctly rounded norm.
        """
        win = self.window()
        n = len(win)
        x = win[-1]
        s1 = _fsum(chain(win, repeat(-x, n)))  # sum(x_i - x_t), correctly rounded
        my = s1 / n
        d = _dist(win, [x] * n)
        s2 = d * d
        ss = s2 - s1 * my
        sd = _sqrt(ss / (n - 1)) if ss > 0.0 else 0.0
        if n == self.n:
            self._k = x
            self._y = 0.0
            self._s1 = s1
            self._s2 = s2
            self._e1 = U * abs(s1)
            self._e2 = 4.0 * U * s2
            self._live = True
        return -my, sd, x + my

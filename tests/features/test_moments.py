"""The O(1) window moments against exact arithmetic, on histories built to break them."""

from __future__ import annotations

import math
import random
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_infer.features._moments import Moments
from stream_infer.features._spec import Z_EPS


def exact(xs: list[float]) -> tuple[float, float, float]:
    """(std, z of the last value, last - mean) with exact sums, rounded once."""
    fr = [Fraction(x) for x in xs]
    mean = sum(fr, Fraction(0)) / len(fr)
    var = sum(((x - mean) ** 2 for x in fr), Fraction(0)) / (len(fr) - 1)
    sd = math.sqrt(float(var))
    z = 0.0 if sd <= Z_EPS * max(1.0, abs(float(mean))) else float(fr[-1] - mean) / sd
    return sd, z, float(fr[-1] - mean)


def close(a: float, b: float, tol: float = 1e-10) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


def rel_close(a: float, b: float, tol: float = 1e-11) -> bool:
    return abs(a - b) <= tol * abs(b) or a == b


# values that make naive running sums fail: big spikes, flat runs at large magnitude, ticks
base = st.sampled_from([0.0, 1.0, 2.33, 1e6, 16_500.25, 1e-4, 1e12])
pieces = st.tuples(
    base,
    st.sampled_from([0.0, 1e-8, 0.01, 1.0]),  # tick, relative to 1 (added, not scaled)
    st.integers(1, 90),  # run length
    st.floats(0.0, 1.0),  # chance a value moves one tick
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    runs=st.lists(pieces, min_size=1, max_size=6),
    n=st.sampled_from([15, 20, 60]),
    seed=st.integers(0, 2**16),
)
def test_running_moments_match_exact_arithmetic(
    runs: list[tuple[float, float, int, float]], n: int, seed: int
) -> None:
    rnd = random.Random(seed)
    xs: list[float] = []
    for level, tick, length, p_move in runs:
        x = level
        for _ in range(length):
            if rnd.random() < p_move:
                x = x + tick * rnd.choice((-1, 1)) * max(1.0, level) if tick else x
            xs.append(x)
    m = Moments(n)
    for i, x in enumerate(xs):
        m.push(x)
        if not m.full or i % 3:  # ask only sometimes: the sums must stay right unobserved too
            continue
        win = xs[i - n + 1 : i + 1]
        sd, z, dev = exact(win)
        assert rel_close(m.std(), sd), (i, m.std(), sd)
        assert close(m.z(), z), (i, m.z(), z)
        assert close(m.dev(), dev, 1e-12), (i, m.dev(), dev)


def test_flat_windows_are_exactly_zero() -> None:
    m = Moments(60)
    for x in [1e12] * 30 + [5.0] * 200:  # a spike leaves, then flat at another level
        m.push(x)
    assert m.std() == 0.0 and m.z() == 0.0 and m.dev() == 0.0


def test_near_flat_large_magnitude_z() -> None:
    """One 0.01 tick in 20 values at 1e6: naive sums give garbage, this gives the exact z."""
    m = Moments(20)
    xs = [1e6] * 100 + [1e6 + 0.01] + [1e6] * 5
    for x in xs:
        m.push(x)
    sd, z, _ = exact(xs[-20:])
    assert close(m.z(), z, 1e-12) and rel_close(m.std(), sd, 1e-12)
    assert abs(z) > 0.1


@given(st.integers(2, 70), st.lists(st.floats(-1e9, 1e9), min_size=0, max_size=300))
def test_window_holds_the_last_n_values_oldest_first(n: int, xs: list[float]) -> None:
    """The circular buffer wraps for every push count, live sums or not."""
    m = Moments(n)
    for i, x in enumerate(xs):
        m.push(x)
        assert list(m.window()) == xs[max(0, i + 1 - n) : i + 1]
        assert m.full == (i + 1 >= n)
        if m.full and i % 7 == 0:
            m.exact()  # turns the running sums on: push takes its other branch from here

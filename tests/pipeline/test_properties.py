"""Properties of Pipeline.process for every input (hypothesis), with the real features."""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_infer.candles import read_klines
from stream_infer.pipeline import Inbound, Pipeline
from tests.conftest import DATA
from tests.pipeline.fakes import FakeEnsemble

WARM, LIVE = 410, 40


@cache
def series() -> tuple[bytes, ...]:
    df = read_klines(DATA / "klines" / "NEARUSDT-1m-2023-02.csv.gz").iloc[: WARM + LIVE]
    out = []
    for r in df.to_dict("records"):
        r["spread_bps"] = None
        out.append(orjson.dumps(r))
    return tuple(out)


def _broken(good: bytes) -> st.SearchStrategy[bytes]:
    obj = orjson.loads(good)
    # not numbers in any spelling (numeric strings are accepted, as the exchange sends them)
    words = st.text(alphabet="xyz", min_size=1, max_size=5)
    garbage = st.one_of(
        st.none(), st.lists(st.integers(-9, 9), max_size=2), st.just(-1.0), st.just(True)
    )
    fields = ["open", "high", "low", "close", "volume", "trades", "interval", "open_time"]
    return st.one_of(
        st.tuples(st.sampled_from(fields), words).map(
            lambda kv: orjson.dumps({**obj, kv[0]: kv[1]})
        ),
        st.tuples(st.just("symbol"), garbage | st.just("")).map(
            lambda kv: orjson.dumps({**obj, kv[0]: kv[1]})
        ),
        st.binary(max_size=40).map(lambda b: b"\x00" + b),  # never JSON
        st.sampled_from([b"[]", b"1", b'"x"', b"null", b"{}"]),
        st.tuples(st.sampled_from(fields), garbage).map(
            lambda kv: orjson.dumps({**obj, kv[0]: kv[1]})
        ),
        st.floats(min_value=0.01, max_value=0.99).map(
            lambda f: orjson.dumps({**obj, "high": obj["low"] * f})  # high below low
        ),
    )


@st.composite
def stream_with_junk(draw: st.DrawFn) -> tuple[list[tuple[bytes, str]], list[int]]:
    """The live candles in order, with junk and redeliveries between them, and batch cuts."""
    items: list[tuple[bytes, str]] = []
    for value in series()[WARM:]:
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            kind = draw(st.sampled_from(["junk", "junk", "repeat"]))
            last_good = [v for v, k in items if k == "good"][-1:]
            if kind == "repeat" and last_good:
                items.append((last_good[0], "repeat"))  # a redelivery: a duplicate
            else:
                items.append((draw(_broken(value)), "junk"))
        items.append((value, "good"))
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=len(items) - 1), max_size=8)))
    return items, cuts


def _run(p: Pipeline, values: list[bytes], cuts: list[int]) -> tuple[list[Any], list[Any]]:
    preds, dead = [], []
    bounds = [0, *cuts, len(values)]
    for a, b in itertools.pairwise(bounds):
        out = p.process([Inbound(values[i], 0, i, 0.0) for i in range(a, b)])
        preds += out.predictions
        dead += out.dead_letters
    return preds, dead


def _warmed() -> Pipeline:
    p = Pipeline(FakeEnsemble(seq_len=4))
    p.process([Inbound(v, 0, -1, 0.0) for v in series()[:WARM]])
    return p


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_with_junk())
def test_junk_and_redeliveries_change_nothing(
    case: tuple[list[tuple[bytes, str]], list[int]],
) -> None:
    items, cuts = case
    a, b = _warmed(), _warmed()
    preds_a, dead_a = _run(a, [v for v, _ in items], cuts)
    good = [v for v, kind in items if kind == "good"]
    preds_b, dead_b = _run(b, good, [])
    assert dead_b == []
    # every junk message, and only those, became a dead letter, in order, with its offset
    assert [d.offset for d in dead_a] == [i for i, (_, k) in enumerate(items) if k == "junk"]
    # and the predictions are exactly those of the clean stream
    strip = [(p.open_time, p.predictions, p.components) for p in preds_a]
    assert strip == [(p.open_time, p.predictions, p.components) for p in preds_b]
    assert len(preds_b) == LIVE
    assert a.stream_state("NEARUSDT", "1m") == b.stream_state("NEARUSDT", "1m")

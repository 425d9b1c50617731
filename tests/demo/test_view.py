"""The live table and the plain lines show what the state holds."""

from __future__ import annotations

import io

from rich.console import Console

from stream_infer.demo import DemoState, Header, plain_symbol_line, render
from tests.demo._util import candles, prediction


def test_table_shows_close_probabilities_version_and_latency() -> None:
    btc = candles("BTCUSDT", 470)
    state = DemoState([("BTCUSDT", "1m"), ("NEARUSDT", "1m")])
    for c in btc:
        state.sent(c, at=0.0, live=True)
    state.predicted(prediction(btc[469], 0.61, version="v7", latency=1.23), at=0.0)
    console = Console(record=True, width=200, color_system=None, file=io.StringIO())
    console.print(render(state, Header(speed=20, config="file x", broker="pid 1")))
    text = console.export_text()
    assert "BTCUSDT" in text and "NEARUSDT" in text
    assert f"{btc[469].close:,.2f}" in text
    assert "0.610" in text and "0.390" in text  # P(up) per horizon
    assert "0.22" in text  # confidence |2p - 1|
    assert "v7" in text and "1.23" in text
    assert "#" not in text  # a file-configured ensemble has no row id to show
    state.predicted(prediction(btc[468], 0.5, version="v8", ensemble_id="2"), at=0.0)
    console.print(render(state, Header(speed=20, config="postgres", broker="pid 1")))
    assert "v8 #2" in console.export_text()
    assert "P(up) +1" in text and "P(up) +15" in text


def test_plain_line() -> None:
    btc = candles("BTCUSDT", 470)
    state = DemoState([("BTCUSDT", "1m")])
    board = state.boards["BTCUSDT"]
    assert plain_symbol_line(board).endswith("predictions=0 (warming up)")
    for c in btc:
        state.sent(c, at=0.0, live=True)
    state.predicted(prediction(btc[469], 0.61, version="v7", latency=1.23), at=0.0)
    line = plain_symbol_line(board)
    assert "P(up) h1=0.610 h5=0.390 h15=0.500" in line
    assert "version=v7" in line and "latency_ms=1.23" in line and "predictions=1" in line

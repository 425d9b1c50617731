"""The chart is a valid PNG of the expected size, with and without a reload, and when empty."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from stream_infer.demo import DemoState, write_chart
from tests.demo._util import candles, prediction


def _check_png(path: Path, min_height: int) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        img.load()  # decodes every pixel: a truncated file fails here
        assert img.format == "PNG"
        assert img.height >= min_height
        assert sum(1 for n in img.convert("L").histogram() if n) > 10, "a blank image"
        return img.size


def test_chart_two_symbols_and_a_reload(tmp_path: Path) -> None:
    btc, near = candles("BTCUSDT", 560), candles("NEARUSDT", 560)
    state = DemoState([("BTCUSDT", "1m"), ("NEARUSDT", "1m")])
    for i in range(560):
        state.sent(btc[i], at=0.0, live=i >= 500)
        state.sent(near[i], at=0.0, live=i >= 500)
    for i in range(462, 560):
        v = "v1" if i < 530 else "v1-b"
        state.predicted(prediction(btc[i], 0.3 + 0.4 * (i % 7) / 6, version=v), at=1.0)
        state.predicted(prediction(near[i], 0.5, version=v), at=1.0)
    out = write_chart(state, tmp_path / "sub" / "chart.png", title="test")
    assert out == tmp_path / "sub" / "chart.png"
    w, _ = _check_png(out, min_height=500)
    assert w >= 800


def test_chart_of_nothing_is_still_an_image(tmp_path: Path) -> None:
    out = write_chart(DemoState([("BTCUSDT", "1m")]), tmp_path / "empty.png")
    _check_png(out, min_height=100)

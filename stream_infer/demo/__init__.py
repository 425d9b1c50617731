"""``stream-infer demo``: bundled candles through the embedded broker and the service, live.

See docs/demo.md. ``run_demo`` is the orchestration (async), ``main`` the CLI's entry
(signals, exit status); ``DemoState`` (pure) what the view, the summary and the chart read.
"""

from __future__ import annotations

from stream_infer.demo._chart import write_chart
from stream_infer.demo._data import (
    SymbolFeed,
    bundled_klines,
    default_data_dir,
    default_models_dir,
    load_feeds,
)
from stream_infer.demo._run import QUICK, DemoOptions, DemoResult, main, run_demo
from stream_infer.demo._state import DemoState, DemoSummary, SymbolBoard, quantiles
from stream_infer.demo._view import Header, View, plain_symbol_line, render

__all__ = [
    "QUICK",
    "DemoOptions",
    "DemoResult",
    "DemoState",
    "DemoSummary",
    "Header",
    "SymbolBoard",
    "SymbolFeed",
    "View",
    "bundled_klines",
    "default_data_dir",
    "default_models_dir",
    "load_feeds",
    "main",
    "plain_symbol_line",
    "quantiles",
    "render",
    "run_demo",
    "write_chart",
]

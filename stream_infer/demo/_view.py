"""The terminal view: a rich live table on a terminal, plain progress lines otherwise (CI, pipes)."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING

from stream_infer.demo._state import DemoState, SymbolBoard, quantiles, version_label
from stream_infer.events import Prediction

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = ["Header", "View", "fmt_time", "plain_symbol_line", "render"]


@dataclass
class Header:
    """What the view says about the run besides the per-symbol rows."""

    speed: float
    config: str  # "file artifacts/ensemble-v1" or "postgres db@host"
    broker: str = ""  # "pid 123 at 127.0.0.1:PORT"
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def fmt_time(open_time_ms: int | None) -> str:
    if open_time_ms is None:
        return "-"
    return datetime.fromtimestamp(open_time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _price(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.2f}" if v >= 100 else f"{v:.4f}"


def _horizons(state: DemoState) -> tuple[int, ...]:
    for b in state.boards.values():
        if b.last is not None:
            return b.last.horizons
    return ()


def _ensemble(p: Prediction) -> str:
    """The version, and the database row id when the ensemble came from one."""
    label = version_label(p)
    return label if p.ensemble_id.startswith("file") else f"{label} #{p.ensemble_id}"


def _p_style(p: float) -> str:
    if p >= 0.52:
        return "bold green"
    if p <= 0.48:
        return "bold red"
    return "yellow"


def render(state: DemoState, header: Header) -> RenderableType:
    """The live table (a rich renderable) for the state as it is now."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    horizons = _horizons(state)
    table = Table(expand=True, header_style="bold cyan")
    table.add_column("symbol", style="bold", no_wrap=True)
    table.add_column("candle (UTC)", no_wrap=True)
    table.add_column("close", justify="right")
    for h in horizons or (None,):
        table.add_column(f"P(up) +{h}" if h is not None else "P(up)", justify="right")
    table.add_column("confidence", justify="right")
    table.add_column("ensemble", no_wrap=True)
    table.add_column("latency ms", justify="right")
    table.add_column("candles", justify="right")
    table.add_column("predictions", justify="right")
    for b in state.boards.values():
        p = b.last
        probs: list[Text | str]
        if p is None:
            probs = ["warming up" if b.candles_sent else "-"]
            probs += [""] * (max(len(horizons), 1) - 1)
            conf, ens, lat = "-", "-", "-"
        else:
            probs = [Text(f"{x:.3f}", style=_p_style(x)) for x in p.predictions]
            conf = " ".join(f"{c:.2f}" for c in p.confidences)
            ens, lat = _ensemble(p), f"{p.latency_ms:.2f}"
        table.add_row(
            b.symbol,
            fmt_time(p.open_time if p is not None else None),
            _price(b.last_close),
            *probs,
            conf,
            ens,
            lat,
            str(b.candles_sent),
            str(b.predictions),
        )
    p50, p99 = quantiles(state.latency_live or state.latency_catchup)
    status = Text.assemble(
        (f"{header.elapsed:6.1f} s", "bold"),
        f"  {state.phase}  ·  sent {state.candles_sent}  ·  processed {state.candles_processed}",
        f"  ·  predictions {state.predictions}  ·  dead letters {state.dead_letters}",
        f"  ·  latency ms p50 {_num(p50, 2)} p99 {_num(p99, 2)}",
    )
    lines: list[RenderableType] = [table, status]
    for sym, ot, old, new in state.version_changes[-3:]:
        lines.append(Text(f"hot reload: {old} -> {new} (first at {sym} {fmt_time(ot)})", "magenta"))
    title = (
        f"stream_infer demo · {len(state.boards)} symbols at {header.speed:g} candles/s each · "
        f"ensemble {state.version or '-'}"
    )
    subtitle = f"config: {header.config} · broker {header.broker} · Ctrl-C stops"
    return Panel(Group(*lines), title=title, subtitle=subtitle)


def plain_symbol_line(b: SymbolBoard) -> str:
    """One symbol as a plain line (the non-terminal view and the final report)."""
    p = b.last
    if p is None:
        return f"  {b.symbol}: candles={b.candles_sent} predictions=0 (warming up)"
    probs = " ".join(f"h{h}={x:.3f}" for h, x in zip(p.horizons, p.predictions, strict=True))
    conf = ",".join(f"{c:.3f}" for c in p.confidences)
    return (
        f"  {b.symbol}: candle={fmt_time(p.open_time)} close={_price(b.last_close)} "
        f"P(up) {probs} confidence={conf} version={version_label(p)} "
        f"ensemble_id={p.ensemble_id} latency_ms={p.latency_ms:.2f} "
        f"candles={b.candles_sent} predictions={b.predictions}"
    )


class View:
    """A rich ``Live`` table on a terminal (refreshed 4 times a second); plain lines otherwise.

    ``note`` prints an event line above the table (or as a plain line). ``run`` is the
    task that prints plain progress every ``every_s`` seconds (on a terminal it only
    watches for version changes: rich refreshes the table itself).
    """

    def __init__(
        self,
        console: Console,
        state: DemoState,
        header: Header,
        *,
        live: bool,
        every_s: float = 2.0,
    ) -> None:
        self.console = console
        self.state = state
        self.header = header
        self.live = live
        self.every_s = every_s
        self._live: Live | None = None
        self._changes_shown = 0

    def __enter__(self) -> View:
        if self.live:
            from rich.live import Live

            self._live = Live(
                get_renderable=lambda: render(self.state, self.header),
                console=self.console,
                refresh_per_second=4,
                transient=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.refresh()
            live.stop()

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def _changes(self) -> None:
        for sym, ot, old, new in self.state.version_changes[self._changes_shown :]:
            self.note(f"hot reload: serving {new} (was {old}), first at {sym} {fmt_time(ot)}")
        self._changes_shown = len(self.state.version_changes)

    def progress(self) -> None:
        """One plain progress block: a status line and a line per symbol."""
        s = self.state
        p50, p99 = quantiles(s.latency_live or s.latency_catchup)
        self.note(
            f"[{self.header.elapsed:6.1f}s] {s.phase}: sent={s.candles_sent} "
            f"processed={s.candles_processed} predictions={s.predictions} "
            f"dead_letters={s.dead_letters} latency_ms p50={_num(p50, 2)} p99={_num(p99, 2)} "
            f"version={s.version or '-'}"
        )
        for b in s.boards.values():
            self.note(plain_symbol_line(b))

    async def run(self) -> None:
        next_at = time.monotonic() + self.every_s
        while True:
            await asyncio.sleep(0.25)
            self._changes()
            if not self.live and time.monotonic() >= next_at:
                next_at += self.every_s
                self.progress()

    def flush(self) -> None:
        """Show what is left (version changes not noted yet)."""
        self._changes()

"""The PNG the demo ends with: per symbol the close price and P(up) over it (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream_infer.demo._state import DemoState

__all__ = ["write_chart"]

# Candles before the first prediction that are still drawn (context for the first points).
_LEAD = 60


def write_chart(state: DemoState, path: Path, *, title: str | None = None) -> Path:
    """Write the chart to ``path`` (PNG); returns it. Symbols without candles are left out."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and none is touched
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    boards = [b for b in state.boards.values() if b.closes]
    n = max(1, len(boards))
    fig, axes = plt.subplots(n, 1, figsize=(11, 2.9 * n + 0.8), squeeze=False)
    from matplotlib.colors import TwoSlopeNorm

    cmap = plt.get_cmap("RdYlGn")
    # Centred on 0.5: green says up, red says down, however far the model's range reaches.
    norm = TwoSlopeNorm(vcenter=0.5, vmin=0.3, vmax=0.7)
    colour = None
    legend: tuple[list[Any], list[str]] | None = None
    try:
        for ax, b in zip(axes[:, 0], boards, strict=False):
            times = np.array(sorted(b.closes), dtype=np.int64)
            if b.points:
                start = int(np.searchsorted(times, b.points[0][0]))
                times = times[max(0, start - _LEAD) :]
            closes = np.array([b.closes[t] for t in times])
            x = times.astype("datetime64[ms]")
            ax.plot(x, closes, color="black", linewidth=1.0, label="close")
            ax.set_ylabel(f"{b.symbol} close")
            ax.grid(alpha=0.3)
            if b.points:
                pt = np.array([t for t, _, _ in b.points], dtype=np.int64)
                pp = np.array([p for _, p, _ in b.points])
                px = pt.astype("datetime64[ms]")
                known = np.array([t in b.closes for t in pt])
                # The prediction's own candle close, coloured by P(up): green up, red down.
                pc = np.array([b.closes.get(int(t), np.nan) for t in pt])
                h = b.last.horizons[0] if b.last is not None else 1
                dots = ax.scatter(
                    px[known],
                    pc[known],
                    c=pp[known],
                    cmap=cmap,
                    norm=norm,
                    s=max(2.0, 14.0 * min(1.0, 300 / len(pt))),  # dots, not a smear, on long runs
                    zorder=3,
                    label=f"close at a prediction, coloured by P(up, +{h})",
                )
                twin = ax.twinx()
                twin.plot(px, pp, color="tab:blue", linewidth=0.8, alpha=0.7, label="P(up)")
                twin.axhline(0.5, color="tab:blue", linestyle=":", linewidth=0.8)
                twin.set_ylim(0.0, 1.0)
                twin.set_ylabel(f"P(up, +{h} candle)", color="tab:blue")
                if colour is None:
                    lines = ax.get_legend_handles_labels()
                    more = twin.get_legend_handles_labels()
                    legend = (lines[0] + more[0], lines[1] + more[1])
                colour = dots
                # The first prediction of each version after the first: where the reload landed.
                seen: set[str] = set()
                for t, _, label in b.points:
                    if label not in seen:
                        if seen:
                            ax.axvline(np.datetime64(t, "ms"), color="magenta", linestyle="--")
                            ax.text(
                                np.datetime64(t, "ms"),
                                0.03,
                                f" hot reload -> {label}",
                                transform=ax.get_xaxis_transform(),
                                color="magenta",
                                fontsize=8,
                                ha="left",
                                va="bottom",
                                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
                            )
                        seen.add(label)
            ax.set_title(
                f"{b.symbol} {b.interval}: {b.candles_sent} candles, {b.predictions} predictions",
                fontsize=10,
            )
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
        if not boards:
            axes[0, 0].text(0.5, 0.5, "no candles", ha="center", va="center")
        fig.suptitle(title or f"stream_infer demo · ensemble {state.version or '-'}")
        fig.tight_layout(rect=(0.0, 0.04 if legend else 0.0, 0.93, 1.0))
        if legend is not None:
            fig.legend(*legend, loc="lower center", ncol=3, fontsize=8, frameon=False)
        if colour is not None:
            bar = fig.add_axes((0.95, 0.15, 0.012, 0.7))
            fig.colorbar(colour, cax=bar, label="P(up)")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, format="png")
    finally:
        plt.close(fig)
    return path

"""What the demo replays: the klines files the repository carries, and the committed models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_infer._errors import ConfigError, DecodeError
from stream_infer.candles import Candle, klines_meta, read_klines

__all__ = [
    "SymbolFeed",
    "bundled_klines",
    "default_data_dir",
    "default_models_dir",
    "load_feeds",
]

_DATA = Path("tests") / "data" / "klines"
_MODELS = Path("artifacts") / "ensemble-v1"
# The first user watches BTCUSDT: it comes first, the others follow by name.
_FIRST = "BTCUSDT"


def _repo_root() -> Path:
    """The checkout this package was installed from (editable installs), if any."""
    return Path(__file__).resolve().parents[2]


def _first_existing(rel: Path) -> Path:
    for base in (Path.cwd(), _repo_root()):
        if (base / rel).exists():
            return base / rel
    return Path.cwd() / rel


def default_data_dir() -> Path:
    """``tests/data/klines`` of the working directory, else of the checkout."""
    return _first_existing(_DATA)


def default_models_dir() -> Path:
    """``artifacts/ensemble-v1`` of the working directory, else of the checkout."""
    return _first_existing(_MODELS)


def bundled_klines(data_dir: Path | None = None) -> dict[str, Path]:
    """One klines file per symbol in ``data_dir`` (the earliest month), BTCUSDT first."""
    root = data_dir or default_data_dir()
    if not root.is_dir():
        raise ConfigError(f"no klines directory at {root} (pass --data DIR)", path=str(root))
    found: dict[str, Path] = {}
    for path in sorted(root.glob("*.csv*")):
        try:
            symbol, _ = klines_meta(path)
        except DecodeError:  # not a klines file name
            continue
        found.setdefault(symbol, path)
    if not found:
        raise ConfigError(f"no klines files (SYMBOL-1m-....csv.gz) in {root}", path=str(root))
    order = sorted(found, key=lambda s: (s != _FIRST, s))
    return {s: found[s] for s in order}


@dataclass(frozen=True)
class SymbolFeed:
    """The candles of one symbol the demo will send, oldest first."""

    symbol: str
    interval: str
    path: Path
    candles: list[Candle]


def load_feeds(
    files: dict[str, Path], symbols: Sequence[str] | None, limit: int
) -> list[SymbolFeed]:
    """The first ``limit`` candles of each chosen symbol's file (validated on read)."""
    from stream_infer.kafka import frame_candles

    chosen = list(symbols) if symbols else list(files)
    unknown = [s for s in chosen if s not in files]
    if unknown:
        raise ConfigError(
            f"no bundled candles for {', '.join(unknown)}; available: {', '.join(files)}"
        )
    feeds = []
    for symbol in chosen:
        path = files[symbol]
        candles = frame_candles(read_klines(path), limit)
        feeds.append(SymbolFeed(symbol, candles[0].interval, path, candles))
    return feeds

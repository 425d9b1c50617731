"""The ``stream-infer`` command line. One module per concern registers its commands on ``app``.

Commands import their heavy dependencies (torch, onnxruntime) lazily so ``--help`` is fast.
"""

from __future__ import annotations

import sys

from stream_infer._errors import StreamInferError
from stream_infer.cli import _commands  # noqa: F401  (registers the commands)
from stream_infer.cli._app import app, db_app

__all__ = ["app", "db_app", "main"]


def main() -> None:
    """Entry point: errors a user can cause end with one line and exit code 1, not a traceback."""
    try:
        app()
    except StreamInferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)

"""``python -m stream_infer.cli``: the same as the ``stream-infer`` command."""

from __future__ import annotations

from stream_infer.cli import main

main()

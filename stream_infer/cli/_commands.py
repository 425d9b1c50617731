"""Imports every command module so that each registers itself on the app."""

from __future__ import annotations

import importlib

for _name in (
    "_features",
    "_models",
    "_service",
    "_db",
    "_ops",
    "_replay",
    "_demo",
    "_bench",
    "_pgsource",
):
    try:
        importlib.import_module(f"stream_infer.cli.{_name}")
    except ModuleNotFoundError as exc:
        # Only a command module not written yet may be absent; a missing dependency is a bug.
        if exc.name != f"stream_infer.cli.{_name}":
            raise

"""``python -m stream_infer.events [DIR]``: regenerate the JSON Schemas (default ``schemas/``)."""

from __future__ import annotations

import sys

from stream_infer.events._schemas import write_schemas

if __name__ == "__main__":
    for path in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "schemas"):
        print(path)

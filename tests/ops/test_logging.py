from __future__ import annotations

import logging

import orjson

from stream_infer.ops import JsonFormatter


def test_json_lines_carry_extra_fields() -> None:
    record = logging.makeLogRecord(
        {
            "name": "stream_infer.x",
            "levelname": "INFO",
            "msg": "reload %s",
            "args": ("ok",),
            "version": "v2",
        }
    )
    out = orjson.loads(JsonFormatter().format(record))
    assert out["msg"] == "reload ok"
    assert out["logger"] == "stream_infer.x"
    assert out["version"] == "v2"
    assert out["ts"].endswith("Z")

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stream_infer.events import event_schemas, schema_bytes, write_schemas
from tests.conftest import REPO

SCHEMAS = REPO / "schemas"


def test_committed_schemas_match_the_models() -> None:
    names = set(event_schemas())
    assert names == {"candle", "binance_kline", "prediction", "dead_letter"}
    on_disk = {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")}
    assert on_disk == names, "schemas/ has files no model generates, or lacks some"
    for name in names:
        committed = (SCHEMAS / f"{name}.schema.json").read_bytes()
        assert committed == schema_bytes(name), (
            f"schemas/{name}.schema.json drifted from the model: "
            "run `python -m stream_infer.events` and commit the result"
        )


def test_schemas_describe_the_fields() -> None:
    s = event_schemas()
    assert set(s["prediction"]["required"]) >= {"symbol", "open_time", "predictions", "components"}
    assert s["dead_letter"]["properties"]["value"]["contentEncoding"] == "base64"
    assert "k" in s["binance_kline"]["required"]
    assert "is_closed" in s["candle"]["properties"]


def test_regenerate_command(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "stream_infer.events", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(out.stdout.splitlines()) == len(written) == 4
    assert written == sorted(p.name for p in write_schemas(tmp_path / "again"))


def test_encoded_events_fit_their_schemas() -> None:
    """Keys of what the encoders write are the schema's properties, required ones present."""
    import orjson

    from stream_infer import DecodeError
    from stream_infer.events import (
        DeadLetter,
        Prediction,
        decode_candle,
        encode_candle,
        encode_dead_letter,
        encode_prediction,
    )
    from tests.events.test_candle_codec import OURS
    from tests.events.test_prediction_dead_letter import FIELDS

    c = decode_candle(orjson.dumps(OURS))
    assert c is not None
    dl = DeadLetter.from_error(
        DecodeError("x", reason="not_json"),
        value=b"x",
        topic="candles",
        partition=0,
        offset=1,
        timestamp_ms=None,
        failed_at=2,
    )
    schemas = event_schemas()
    for name, raw in (
        ("candle", encode_candle(c)),
        ("prediction", encode_prediction(Prediction(**FIELDS))),
        ("dead_letter", encode_dead_letter(dl)),
    ):
        obj = orjson.loads(raw)
        schema = schemas[name]
        assert set(obj) == set(schema["properties"]), name
        assert set(schema.get("required", [])) <= set(obj), name

from __future__ import annotations

import subprocess
import sys

import stream_infer


def test_every_public_name_resolves() -> None:
    for name in stream_infer.__all__:
        assert getattr(stream_infer, name) is not None, name


def test_import_is_light() -> None:
    # `stream-infer --help` and the pure core must not pay for torch or aiokafka.
    code = "import sys, stream_infer; print(sorted(m for m in ('torch', 'aiokafka', 'onnxruntime') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_share_one_root() -> None:
    for name in (
        "CandleError",
        "DecodeError",
        "InvalidCandle",
        "ModelError",
        "ArtifactError",
        "ExportCheckError",
        "ConfigError",
        "DatabaseError",
        "BrokerError",
    ):
        assert issubclass(getattr(stream_infer, name), stream_infer.StreamInferError)
    err = stream_infer.InvalidCandle("bad", rule="high_bound", symbol="BTCUSDT", offset=7)
    assert (err.rule, err.symbol, err.offset, err.reason) == (
        "high_bound",
        "BTCUSDT",
        7,
        "rule:high_bound",
    )
    assert "symbol=BTCUSDT" in str(err) and "offset=7" in str(err)

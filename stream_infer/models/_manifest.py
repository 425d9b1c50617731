"""The artifact directory's contract: file names, checksums, the manifest and its reading.

An ensemble directory holds::

    manifest.json                   what follows, plus metrics, data ranges, versions
    mamba.pt                        TorchScript; normalises RAW windows itself
    lgbm_h{h}.onnx                  one per horizon: input float32 (N, 27) -> probabilities (N, 2)
    normalization_params_v1.json    feature names, mean, std, clip (the model's own buffers)
    reference_window.npy            (1, seq_len, 27) float64; its outputs are in the manifest
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from stream_infer._artifacts import MAMBA_FILE, MANIFEST_FILE, NORM_FILE, REFERENCE_FILE, lgbm_file
from stream_infer._errors import ArtifactError

__all__ = [
    "MAMBA_FILE",
    "MANIFEST_FILE",
    "MANIFEST_FORMAT",
    "NORM_FILE",
    "REFERENCE_FILE",
    "lgbm_file",
    "read_json",
    "read_manifest",
    "sha256_file",
    "write_json",
]

MANIFEST_FORMAT = "stream_infer.ensemble/1"
# Default window rows of the Mamba. 32 rather than 64: out-of-sample AUC on April 2023 as
# good (docs/models.md, Results) at ~25% less per window and half the rows kept per stream.
SEQ_LEN = 32

_REQUIRED = {
    "format": str,
    "version": str,
    "feature_version": int,
    "feature_names": list,
    "horizons": list,
    "seq_len": int,
    "mamba_weight": float,
    "checksums": dict,
    "reference": dict,
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    """Stable JSON (sorted keys, fixed indent, newline) so that equal content is equal bytes."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"missing artifact {path.name}", path=str(path)) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"unreadable JSON in {path.name}: {exc}", path=str(path)) from exc


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The manifest, with its required fields type-checked (ArtifactError names the file)."""
    path = model_dir / MANIFEST_FILE
    data = read_json(path)
    if not isinstance(data, dict):
        raise ArtifactError("manifest is not a JSON object", path=str(path))
    for key, typ in _REQUIRED.items():
        value = data.get(key)
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            data[key] = value
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ArtifactError(
                f"manifest field {key!r} must be {typ.__name__}, got {value!r}", path=str(path)
            )
    if data["format"] != MANIFEST_FORMAT:
        raise ArtifactError(
            f"manifest format {data['format']!r}, expected {MANIFEST_FORMAT!r}", path=str(path)
        )
    hz = data["horizons"]
    if not hz or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hz):
        raise ArtifactError(f"manifest horizons {hz!r} are not positive ints", path=str(path))
    w = data["mamba_weight"]
    if not (math.isfinite(w) and 0.0 <= w <= 1.0):
        raise ArtifactError(f"manifest mamba_weight {w!r} is not in [0, 1]", path=str(path))
    if data["seq_len"] < 1:
        raise ArtifactError(f"manifest seq_len {data['seq_len']!r} < 1", path=str(path))
    return data

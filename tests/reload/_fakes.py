"""A stand-in for ``stream_infer.models.load_ensemble`` in unit tests of the reload logic.

A fake model directory holds ``manifest.json`` (version, horizons, seq_len,
feature_version, mamba_weight, and ``broken``: "load" | "check" to fail there, "crash"
for an undocumented exception) plus the
three files the database row names. Tests with the real loader live beside these.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_infer._errors import ArtifactError, ModelError


@dataclass
class FakeEnsemble:
    ensemble_id: str
    version: str | None
    horizons: tuple[int, ...]
    seq_len: int
    feature_version: int
    mamba_weight: float
    model_dir: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.manifest.get("broken") == "check":
            raise ModelError("outputs are not finite", path=str(self.model_dir))


class FakeLoader:
    """Callable like load_ensemble; records calls; ``delay`` simulates a slow load."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[Path] = []
        self.threads: list[str] = []
        self._lock = threading.Lock()

    def __call__(
        self,
        model_dir: Path,
        *,
        device: str = "cpu",
        mamba_weight: float | None = None,
        ensemble_id: str = "file",
        version: str | None = None,
        threads: int = 1,
    ) -> FakeEnsemble:
        with self._lock:
            self.calls.append(Path(model_dir))
            self.threads.append(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        path = Path(model_dir) / "manifest.json"
        if not path.is_file():
            raise ArtifactError("manifest.json missing", path=str(path))
        m = json.loads(path.read_text())
        if m.get("broken") == "load":
            raise ArtifactError("corrupt model file", path=str(model_dir))
        if m.get("broken") == "crash":
            raise KeyError("an error no loader documents")
        return FakeEnsemble(
            ensemble_id=ensemble_id,
            version=version or m["version"],
            horizons=tuple(m.get("horizons", (1, 5, 15))),
            seq_len=m.get("seq_len", 64),
            feature_version=m.get("feature_version", 1),
            mamba_weight=m.get("mamba_weight", 0.5) if mamba_weight is None else mamba_weight,
            model_dir=Path(model_dir),
            manifest=m,
        )


def make_model_dir(root: Path, name: str, **manifest: Any) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"version": name, **manifest}))
    for f in ("mamba.pt", "normalization_params_v1.json", "lgbm_h1.onnx"):
        (d / f).write_text("x")
    return d


def row_paths(d: Path) -> dict[str, str]:
    return {
        "mamba_path": str(d / "mamba.pt"),
        "lgbm_models_dir": str(d),
        "norm_params_path": str(d / "normalization_params_v1.json"),
    }

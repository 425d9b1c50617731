"""The frozen Mamba cache (``cache_frozen``) and the loader's steps.

The cache lets a hot reload load the frozen module in one short step instead of
torch.jit.load + torch.jit.freeze; it is an optimisation only: a stale, foreign or broken
cache is ignored and the loader freezes, as without one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from stream_infer.models import (
    cache_frozen,
    frozen_cache_path,
    load_ensemble,
    load_ensemble_steps,
    run_steps,
)
from stream_infer.models._manifest import MAMBA_FILE, read_manifest
from tests.conftest import REPO

SHIPPED = REPO / "artifacts" / "ensemble-v1"


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    # a copy: the cache goes beside the artifacts
    return Path(shutil.copytree(SHIPPED, tmp_path / "ens", ignore=shutil.ignore_patterns(".cache")))


def _steps(d: Path) -> list[str]:
    gen = load_ensemble_steps(d)
    names: list[str] = []
    while True:
        try:
            names.append(next(gen))
        except StopIteration:
            return names


def _windows(d: Path) -> np.ndarray:
    window = np.load(d / "reference_window.npy")
    rng = np.random.default_rng(0)
    return window + rng.normal(0.0, 0.1, size=(7, *window.shape[1:]))


def test_the_cache_replaces_load_and_freeze_with_one_step(model_dir: Path) -> None:
    assert _steps(model_dir) == ["torchscript", "freeze", "onnx"]
    plain = load_ensemble(model_dir)
    out = cache_frozen(model_dir)
    sha = read_manifest(model_dir)["checksums"][MAMBA_FILE]
    assert out == frozen_cache_path(model_dir, sha) and out.is_file()
    assert _steps(model_dir) == ["torchscript (frozen cache)", "onnx"]
    cached = run_steps(load_ensemble_steps(model_dir))
    # The same numbers as load + freeze on this machine. (Against the outputs recorded at
    # export they can differ by a float32 ulp when this CPU is not the exporting one:
    # 6e-8 on an Intel VM for a model exported on an AMD one; check() bounds that.)
    assert cached.check() == plain.check()
    x = _windows(model_dir)
    a, b = plain.predict(x), cached.predict(x)
    assert np.array_equal(a.mamba, b.mamba) and np.array_equal(a.probabilities, b.probabilities)


def test_a_foreign_or_broken_cache_is_ignored(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    path = cache_frozen(model_dir)
    sha = read_manifest(model_dir)["checksums"][MAMBA_FILE]
    module = torch.jit.load(str(path))
    # made from another file (its name collides on 16 hex digits), or by another torch
    for extra in (
        {"source_sha256": "0" * 64, "torch": torch.__version__},
        {"source_sha256": sha, "torch": "1.0"},
    ):
        torch.jit.save(module, str(path), _extra_files=extra)
        assert _steps(model_dir)[0] == "torchscript", extra
    path.write_bytes(b"not a TorchScript archive")
    with caplog.at_level(logging.WARNING, logger="stream_infer.models._runtime"):
        assert _steps(model_dir)[0] == "torchscript"
    assert "ignoring the frozen cache" in caplog.text
    load_ensemble(model_dir).check()


def test_cache_frozen_needs_a_writable_directory(model_dir: Path) -> None:
    (model_dir / ".cache").write_text("a file where the cache directory goes")
    with pytest.raises(OSError):
        cache_frozen(model_dir)
    load_ensemble(model_dir).check()  # loading does not need the cache

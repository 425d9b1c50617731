"""The runtime: round trip from training to load and predict, ensemble math, and every
way an artifact directory can be wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stream_infer._errors import ArtifactError, ModelError
from stream_infer.models import TrainResult, load_ensemble
from stream_infer.models._export import mamba_probabilities
from stream_infer.models._lgbm import as_float32_rows
from stream_infer.models._manifest import sha256_file
from stream_infer.models._runtime import combine


def test_round_trip_equals_the_in_memory_models(tiny: TrainResult) -> None:
    ens = load_ensemble(tiny.out_dir)
    assert ens.horizons == (1, 5, 15) and ens.seq_len == 32 and ens.version == "tiny-test"
    assert ens.feature_version == 1 and ens.mamba_weight == 0.5 and ens.ensemble_id == "file"
    test = tiny.splits["test"]
    windows = test.windows()
    res = ens.predict(windows)
    assert res.probabilities.shape == (len(test), 3)
    for arr in (res.probabilities, res.confidences, res.mamba, res.lgbm):
        assert arr.dtype == np.float64 and np.isfinite(arr).all()
    pm = mamba_probabilities(tiny.mamba, windows)
    pl = np.column_stack([b.predict(as_float32_rows(test.latest())) for b in tiny.boosters])
    assert np.abs(res.mamba - pm).max() <= 1e-5
    assert np.abs(res.lgbm - pl).max() <= 1e-6
    # Batch 1 equals the same window inside a batch.
    one = ens.predict(windows[5:6])
    assert np.abs(one.probabilities - res.probabilities[5:6]).max() <= 1e-6
    assert ens.check() == {"mamba_max_diff": pytest.approx(0, abs=1e-6), "lgbm_max_diff": 0.0}


def test_combine_by_hand() -> None:
    pm = np.array([[0.8, 0.2, 0.5]])
    pl = np.array([[0.4, 0.6, 0.5]])
    r = combine(pm, pl, 0.3)
    np.testing.assert_allclose(r.probabilities, [[0.52, 0.48, 0.5]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(r.confidences, [[0.04, 0.04, 0.0]], rtol=0, atol=1e-15)
    assert r.mamba is pm and r.lgbm is pl


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_weights(tiny: TrainResult, w: float) -> None:
    ens = load_ensemble(tiny.out_dir, mamba_weight=w, ensemble_id="x", version="v9")
    assert (ens.mamba_weight, ens.ensemble_id, ens.version) == (w, "x", "v9")
    r = ens.predict(tiny.splits["test"].windows(np.arange(8)))
    np.testing.assert_array_equal(r.probabilities, w * r.mamba + (1 - w) * r.lgbm)
    np.testing.assert_array_equal(r.confidences, np.abs(2 * r.probabilities - 1))
    if w == 0.0:
        np.testing.assert_array_equal(r.probabilities, r.lgbm)
    if w == 1.0:
        np.testing.assert_array_equal(r.probabilities, r.mamba)


def test_immutable_and_input_checked(tiny: TrainResult) -> None:
    ens = load_ensemble(tiny.out_dir)
    with pytest.raises(AttributeError):
        ens.mamba_weight = 0.9  # type: ignore[misc]
    with pytest.raises(TypeError):
        ens.manifest["version"] = "x"  # type: ignore[index]
    n = ens.seq_len
    for bad in (np.zeros((1, n - 1, 27)), np.zeros((n, 27)), np.zeros((1, n, 26)), [[0.0]]):
        with pytest.raises(ModelError):
            ens.predict(bad)  # type: ignore[arg-type]
    assert ens.predict(np.zeros((0, n, 27))).probabilities.shape == (0, 3)
    # float32 input is accepted (converted), same numbers as float64 of the same values.
    w = tiny.splits["test"].windows(np.arange(2))
    a = ens.predict(w.astype(np.float32))
    b = ens.predict(w.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_cuda_without_gpu_is_a_clear_error(tiny: TrainResult) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelError, match="ML_DEVICE=cpu"):
        load_ensemble(tiny.out_dir, device="cuda")
    with pytest.raises(ModelError):
        load_ensemble(tiny.out_dir, device="tpu")


@pytest.fixture
def copy_dir(tiny: TrainResult, tmp_path: Path) -> Path:
    dst = tmp_path / "ens"
    shutil.copytree(tiny.out_dir, dst)
    return dst


def _edit_manifest(d: Path, **changes: object) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m.update(changes)
    (d / "manifest.json").write_text(json.dumps(m))


def _rechecksum(d: Path, name: str) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m["checksums"][name] = sha256_file(d / name)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "name",
    [
        "manifest.json",
        "mamba.pt",
        "lgbm_h5.onnx",
        "normalization_params_v1.json",
        "reference_window.npy",
    ],
)
def test_missing_file_names_it(copy_dir: Path, name: str) -> None:
    (copy_dir / name).unlink()
    with pytest.raises(ArtifactError) as err:
        load_ensemble(copy_dir)
    assert err.value.path == str(copy_dir / name)


@pytest.mark.parametrize("name", ["mamba.pt", "lgbm_h15.onnx", "normalization_params_v1.json"])
def test_checksum_mismatch_names_the_file(copy_dir: Path, name: str) -> None:
    data = bytearray((copy_dir / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy_dir / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum") as err:
        load_ensemble(copy_dir)
    assert err.value.path == str(copy_dir / name)


@pytest.mark.parametrize("name", ["mamba.pt", "lgbm_h1.onnx", "reference_window.npy"])
def test_corrupt_file_names_it(copy_dir: Path, name: str) -> None:
    # Corrupt content with a matching checksum: the parser itself must catch it.
    (copy_dir / name).write_bytes(b"\x08\x01garbage" * 10)
    _rechecksum(copy_dir, name)
    with pytest.raises(ArtifactError) as err:
        load_ensemble(copy_dir)
    assert err.value.path == str(copy_dir / name)


def test_normalisation_file_must_match_the_model(copy_dir: Path) -> None:
    p = copy_dir / "normalization_params_v1.json"
    norm = json.loads(p.read_text())
    norm["mean"][3] += 1e-9
    p.write_text(json.dumps(norm))
    _rechecksum(copy_dir, p.name)
    with pytest.raises(ArtifactError) as err:
        load_ensemble(copy_dir)
    assert err.value.path == str(p)


def test_wrong_feature_version_or_names(copy_dir: Path) -> None:
    _edit_manifest(copy_dir, feature_version=2)
    with pytest.raises(ArtifactError, match="v2") as err:
        load_ensemble(copy_dir)
    assert err.value.path == str(copy_dir / "manifest.json")
    _edit_manifest(copy_dir, feature_version=1, feature_names=["x"] * 27)
    with pytest.raises(ArtifactError):
        load_ensemble(copy_dir)


def test_malformed_manifest(copy_dir: Path) -> None:
    (copy_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError) as err:
        load_ensemble(copy_dir)
    assert err.value.path == str(copy_dir / "manifest.json")
    _edit = {"format": "stream_infer.ensemble/1", "version": "v"}
    (copy_dir / "manifest.json").write_text(json.dumps(_edit))
    with pytest.raises(ArtifactError):
        load_ensemble(copy_dir)


def test_check_catches_a_changed_model(copy_dir: Path) -> None:
    m = json.loads((copy_dir / "manifest.json").read_text())
    m["reference"]["mamba"][0] += 1e-3
    (copy_dir / "manifest.json").write_text(json.dumps(m))
    ens = load_ensemble(copy_dir)  # loads (outputs are finite) ...
    with pytest.raises(ModelError, match="reference"):
        ens.check()  # ... but is not the model that was exported


def test_missing_directory() -> None:
    with pytest.raises(ArtifactError):
        load_ensemble("/nonexistent/ensemble")

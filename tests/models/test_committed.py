"""The committed artifacts (artifacts/ensemble-v1): checksums verify, they load and check."""

from __future__ import annotations

import json

from stream_infer.models import Ensemble, load_ensemble
from stream_infer.models._manifest import sha256_file
from tests.conftest import REPO


def test_committed_artifacts_load_and_verify() -> None:
    d = REPO / "artifacts" / "ensemble-v1"
    m = json.loads((d / "manifest.json").read_text())
    for name, want in m["checksums"].items():
        assert sha256_file(d / name) == want, name
    assert set(m["checksums"]) >= {
        "mamba.pt",
        "lgbm_h1.onnx",
        "lgbm_h5.onnx",
        "lgbm_h15.onnx",
        "normalization_params_v1.json",
        "reference_window.npy",
    }
    ens = load_ensemble(d)
    assert isinstance(ens, Ensemble)
    assert ens.version == "ensemble-v1" and ens.horizons == (1, 5, 15) and ens.seq_len == 32
    ens.check()
    total = sum(p.stat().st_size for p in d.iterdir())
    assert total < 5_000_000


def test_committed_manifest_names_data_the_repo_carries() -> None:
    # The documented reproduce command (docs/models.md) reads these files from the repo.
    m = json.loads((REPO / "artifacts" / "ensemble-v1" / "manifest.json").read_text())
    assert m["command"].startswith("stream-infer train --data tests/data/klines/")
    files = [f for d in m["data"] for f in d["files"]]
    assert {d["symbol"] for d in m["data"]} == {"NEARUSDT", "FILUSDT", "AVAXUSDT"}
    for f in files:
        assert sha256_file(REPO / f["path"]) == f["sha256"], f["path"]
    for d in m["data"]:
        s = d["splits"]
        assert s["train"]["last_open_time"] < s["val"]["first_open_time"]
        assert s["val"]["last_open_time"] < s["test"]["first_open_time"]


def test_benchmark_runs() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_models", REPO / "benchmarks" / "bench_models.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(repeats=3, candles=600)
    for key in (
        "mamba_b1_median_us",
        "mamba_b256_per_window_us",
        "lgbm_all_horizons_1row_merged_median_us",
        "ensemble_predict_b1_median_us",
        "ensemble_predict_b64_per_window_us",
    ):
        assert res[key] > 0, key

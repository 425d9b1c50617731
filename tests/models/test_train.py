"""Training end to end: reproducible bytes, the manifest's contents, export checks, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from stream_infer._errors import ExportCheckError, ModelError
from stream_infer.cli import app
from stream_infer.models import TrainConfig, TrainResult, train_ensemble
from stream_infer.models import _train as train_mod
from stream_infer.models._manifest import sha256_file
from tests.models.conftest import NEAR, head_file


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_manifest_records_the_run(tiny: TrainResult) -> None:
    m = tiny.manifest
    d = tiny.out_dir
    assert json.loads((d / "manifest.json").read_text()) == m
    assert m["feature_version"] == 1 and len(m["feature_names"]) == 27
    assert m["horizons"] == [1, 5, 15] and m["seq_len"] == 32 and m["mamba_weight"] == 0.5
    for name, digest in m["checksums"].items():
        assert sha256_file(d / name) == digest
    (data,) = m["data"]
    assert data["symbol"] == "NEARUSDT" and data["interval"] == "1m"
    s = data["splits"]
    assert s["train"]["last_open_time"] < s["val"]["first_open_time"]
    assert s["val"]["last_open_time"] < s["test"]["first_open_time"]
    # The purge: consecutive parts' samples are at least seq_len + max(h) candles apart.
    gap_ms = (m["seq_len"] + max(m["horizons"])) * 60_000
    assert s["val"]["first_open_time"] - s["train"]["last_open_time"] >= gap_ms
    for split in ("train", "val", "test"):
        for h in ("h1", "h5", "h15"):
            for model in ("mamba", "lgbm", "ensemble"):
                auc = m["metrics"][split][h][model]["auc"]
                assert auc is None or 0.0 <= auc <= 1.0
    assert m["export_checks"]["torchscript_vs_eager_max_abs"] <= 1e-5
    assert max(m["export_checks"]["onnx_vs_lightgbm_max_abs"].values()) <= 1e-6
    assert {"torch", "onnxruntime", "lightgbm"} <= set(m["versions"])
    assert m["seed"] == 0 and m["command"]
    norm = json.loads((d / "normalization_params_v1.json").read_text())
    x = tiny.splits["train"].latest()
    np.testing.assert_allclose(norm["mean"], x.mean(axis=0), rtol=1e-12, atol=0)


def test_training_is_bit_for_bit_reproducible(near_head: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.tiny(version="r", seed=3)
    a = train_ensemble([near_head], tmp_path / "a" / "ens", cfg).out_dir
    b = train_ensemble([near_head], tmp_path / "b" / "ens", cfg).out_dir
    assert _files(a) == _files(b)
    c = train_ensemble([near_head], tmp_path / "c" / "ens", TrainConfig.tiny(version="r", seed=4))
    assert _files(c.out_dir)["mamba.pt"] != _files(a)["mamba.pt"]


def test_a_failed_export_check_writes_no_manifest(
    near_head: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad_check(paths: list[Path], *args: object, **kwargs: object) -> list[float]:
        raise ExportCheckError("differs", path=str(paths[0]))

    out = tmp_path / "ens"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a stale one must go too
    monkeypatch.setattr(train_mod, "check_onnx", bad_check)
    with pytest.raises(ExportCheckError):
        train_ensemble([near_head], out, TrainConfig.tiny())
    assert not (out / "manifest.json").exists()


def test_torchscript_check_rejects_another_model(tiny: TrainResult) -> None:
    import torch

    from stream_infer.models import MambaClassifier
    from stream_infer.models._export import check_torchscript

    torch.manual_seed(5)
    other = MambaClassifier(tiny.config.mamba_config()).eval()
    with pytest.raises(ExportCheckError) as err:
        check_torchscript(other, tiny.out_dir / "mamba.pt", tiny.splits["test"].windows())
    assert err.value.path == str(tiny.out_dir / "mamba.pt")


def test_too_little_data_is_a_model_error(tmp_path: Path) -> None:
    f = head_file(NEAR, tmp_path, 500, "NEARUSDT-1m-short.csv")
    with pytest.raises(ModelError, match=r"no (train|val|test) samples"):
        train_ensemble([f], tmp_path / "ens", TrainConfig.tiny())


def test_cli_train_then_evaluate(near_head: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli-ens"
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(near_head),
            "--out",
            str(out),
            "--tiny",
            "--horizons",
            "1,5",
            "--seq-len",
            "32",
            "--seed",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "test AUC h=1" in r.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["horizons"] == [1, 5] and m["seq_len"] == 32 and m["seed"] == 1
    assert m["command"].startswith("stream-infer ")
    ev = tmp_path / "eval"
    r = runner.invoke(
        app, ["evaluate", "--models", str(out), "--data", str(near_head), "--out", str(ev)]
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"h1", "h5"}
    for per in metrics["metrics"].values():
        assert set(per) == {"mamba", "lgbm", "ensemble"}
        for v in per.values():
            assert 0 <= v["auc"] <= 1 and v["n"] == metrics["samples"] > 0
            assert len(v["calibration"]["count"]) == 10 and sum(v["calibration"]["count"]) == v["n"]
    for png in ("roc.png", "calibration.png"):
        assert (ev / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


SAVE_SCRIPT = """
import sys, torch
from pathlib import Path
from stream_infer.models import MambaClassifier, MambaConfig
from stream_infer.models._export import quiet_jit, save_torchscript
torch.manual_seed(0)
m = MambaClassifier(MambaConfig(d_model=8, d_state=4, n_layers=2)).eval()
with quiet_jit():
    save_torchscript(torch.jit.script(m), Path(sys.argv[1]))
import numpy as np
from stream_infer.models._lgbm import to_onnx, train_lgbm
rng = np.random.default_rng(0)
x = rng.standard_normal((500, 27))
b, _ = train_lgbm(x, (x[:, 0] > 0).astype(float), x[:0], x[:0, 0], seed=0, num_boost_round=5)
Path(sys.argv[1]).with_suffix(".onnx").write_bytes(to_onnx(b, 27, "m").SerializeToString())
"""


def test_exported_bytes_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    # TorchScript orders constants, onnxmltools opsets, by a set's iteration order, which
    # follows the per-process string hash seed.
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    digests = set()
    for seed in ("1", "2", "3"):
        out = tmp_path / f"m{seed}" / "mamba.pt"
        out.parent.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(out)], check=True, env=env, cwd=REPO)
        digests.add((sha256_file(out), sha256_file(out.with_suffix(".onnx"))))
    assert len(digests) == 1

"""Ensemble configuration resolution (pure): priority, field by field, and the models root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_infer import ConfigError
from stream_infer.config import EnsembleConfig, resolve_ensemble
from stream_infer.config._ensemble import MAMBA_FILE, NORM_FILE
from stream_infer.db import EnsembleRow


def _row(d: Path, **kw: object) -> EnsembleRow:
    data: dict[str, object] = {
        "id": 7,
        "version": "v-db",
        "mamba_path": str(d / "mamba.pt"),
        "lgbm_models_dir": str(d),
        "norm_params_path": str(d / NORM_FILE),
        "mamba_weight": 0.3,
        "horizons": (1, 5, 15),
        "seq_len": 64,
        "feature_version": 1,
    }
    data.update(kw)
    return EnsembleRow.model_validate(data)


def _toml(tmp: Path, body: str) -> Path:
    p = tmp / "conf.toml"
    p.write_text(body)
    return p


def test_a_rows_activation_time_is_kept_and_other_sources_have_none(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    d = tmp_path / "artifacts" / "e1"
    d.mkdir(parents=True)
    when = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)
    c = resolve_ensemble(_row(d, created_at=when), env={}, models_root=tmp_path)
    assert c.activated_at == when.timestamp()
    assert resolve_ensemble(_row(d), env={}, models_root=tmp_path).activated_at is None
    env = {"ML_LGBM_MODELS_DIR": str(d)}
    assert resolve_ensemble(None, env=env).activated_at is None


def test_nothing_configured_is_disabled() -> None:
    c = resolve_ensemble(None, env={})
    assert not c.enabled
    assert c.source == "default"
    assert c.model_dir is None
    assert c.device == "cpu"
    assert c.ensemble_id is None


def test_toml_only(tmp_path: Path) -> None:
    toml = _toml(
        tmp_path,
        '[ml]\nlgbm_models_dir = "models/e1"\nmamba_model_path = "models/e1/mamba.pt"\n'
        'mamba_weight = 0.25\nensemble_version = "t1"\ndevice = "cpu"\n',
    )
    c = resolve_ensemble(None, env={}, toml_path=toml)
    assert c.enabled and c.source == "toml"
    # relative TOML paths are relative to the TOML file, stored absolute
    assert c.lgbm_models_dir == str((tmp_path / "models/e1").resolve())
    assert c.model_dir == (tmp_path / "models/e1").resolve()
    assert c.mamba_weight == 0.25 and c.version == "t1"
    assert c.ensemble_id == "file:t1"
    assert c.sources["mamba_weight"] == "toml"
    assert c.norm_params_path is None and "norm_params_path" not in c.sources
    assert c.horizons is None and c.seq_len is None  # the manifest decides


def test_env_beats_toml_field_by_field(tmp_path: Path) -> None:
    toml = _toml(
        tmp_path,
        f'[ml]\nlgbm_models_dir = "{tmp_path}/a"\nmamba_weight = 0.25\nensemble_version = "t1"\n',
    )
    env = {"ML_ENSEMBLE_VERSION": "e9", "ML_MAMBA_WEIGHT": "", "ML_DEVICE": "cuda"}
    c = resolve_ensemble(None, env=env, toml_path=toml)
    assert c.version == "e9" and c.sources["version"] == "environment"
    # an empty variable counts as unset: the TOML value stays
    assert c.mamba_weight == 0.25 and c.sources["mamba_weight"] == "toml"
    assert c.lgbm_models_dir == str(tmp_path / "a") and c.sources["lgbm_models_dir"] == "toml"
    assert c.device == "cuda" and c.sources["device"] == "environment"
    assert c.source == "environment"


def test_database_row_defines_the_whole_ensemble(tmp_path: Path) -> None:
    d = tmp_path / "db-models"
    d.mkdir()
    toml = _toml(tmp_path, '[ml]\nmamba_weight = 0.9\ndevice = "cuda"\n')
    env = {
        "ML_MAMBA_WEIGHT": "0.8",
        "ML_ENSEMBLE_VERSION": "env",
        "ML_LGBM_MODELS_DIR": str(tmp_path / "other"),
        "ML_ENABLED": "false",
    }
    c = resolve_ensemble(_row(d), env=env, toml_path=toml, models_root=tmp_path)
    assert c.enabled and c.source == "database"
    assert (c.version, c.mamba_weight, c.row_id, c.ensemble_id) == ("v-db", 0.3, 7, "7")
    assert c.model_dir == d.resolve()
    assert (c.horizons, c.seq_len, c.feature_version) == ((1, 5, 15), 64, 1)
    # the device stays process-level: TOML here, since the environment does not set it
    assert c.device == "cuda" and c.sources["device"] == "toml"
    assert {s for f, s in c.sources.items() if f != "device"} == {"database"}


@pytest.mark.parametrize("value", ["true", "1", "YES", "on"])
def test_enabled_without_models_stays_disabled(value: str) -> None:
    c = resolve_ensemble(None, env={"ML_ENABLED": value})
    assert not c.enabled


def test_enabled_false_disables_configured_models(tmp_path: Path) -> None:
    c = resolve_ensemble(None, env={"ML_ENABLED": "0", "ML_LGBM_MODELS_DIR": str(tmp_path)})
    assert not c.enabled and c.lgbm_models_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"ML_ENABLED": "maybe"}, "ML_ENABLED"),
        ({"ML_MAMBA_WEIGHT": "1.5"}, "ML_MAMBA_WEIGHT"),
        ({"ML_MAMBA_WEIGHT": "nan"}, "ML_MAMBA_WEIGHT"),
        ({"ML_MAMBA_WEIGHT": "heavy"}, "ML_MAMBA_WEIGHT"),
        ({"ML_DEVICE": "tpu"}, "ML_DEVICE"),
        ({"ML_LGBM_MODELS_DIR": "/a", "ML_MAMBA_MODEL_PATH": "/b/mamba.pt"}, "one directory"),
    ],
)
def test_bad_values_are_config_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_ensemble(None, env=env)


def test_toml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown keys"):
        resolve_ensemble(None, env={}, toml_path=_toml(tmp_path, "[ml]\nmamba_wieght = 0.5\n"))
    with pytest.raises(ConfigError, match="unreadable"):
        resolve_ensemble(None, env={}, toml_path=_toml(tmp_path, "[ml\n"))
    with pytest.raises(ConfigError, match="not found"):
        resolve_ensemble(None, env={}, toml_path=tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="table"):
        resolve_ensemble(None, env={}, toml_path=_toml(tmp_path, "ml = 3\n"))


def test_row_outside_models_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert resolve_ensemble(_row(root / "ok"), env={}, models_root=root).enabled
    with pytest.raises(ConfigError, match="outside the models root"):
        resolve_ensemble(_row(outside), env={}, models_root=root)
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        resolve_ensemble(_row(root / "ok" / ".." / ".." / "elsewhere"), env={}, models_root=root)
    with pytest.raises(ConfigError, match="absolute"):
        resolve_ensemble(
            _row(
                root,
                mamba_path="ok/mamba.pt",
                lgbm_models_dir="ok",
                norm_params_path=f"ok/{NORM_FILE}",
            ),
            env={},
            models_root=root,
        )
    # a symlink inside the root that points outside it
    (root / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match="outside the models root"):
        resolve_ensemble(_row(root / "sneaky"), env={}, models_root=root)
    # one file of three escaping is enough to refuse the row
    (root / "ok" / "mamba.pt").symlink_to(outside / "evil.pt")
    with pytest.raises(ConfigError, match="mamba_path"):
        resolve_ensemble(_row(root / "ok"), env={}, models_root=root)


def test_row_whose_directory_holds_a_file_linked_outside_the_root_is_refused(
    tmp_path: Path,
) -> None:
    """The runtime opens the directory's files by fixed names (lgbm_h<h>.onnx, manifest.json,
    ...), none of them in the row: a symlink among them must not load a file from outside."""
    root = tmp_path / "root"
    d = root / "e1"
    d.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "lgbm_h1.onnx").write_text("x")
    (root / "shared.onnx").write_text("x")
    # a link that stays inside the root is fine
    (d / "lgbm_h5.onnx").symlink_to(root / "shared.onnx")
    assert resolve_ensemble(_row(d), env={}, models_root=root).enabled
    (d / "lgbm_h1.onnx").symlink_to(outside / "lgbm_h1.onnx")
    with pytest.raises(ConfigError, match=r"row 7 model directory.*lgbm_h1\.onnx.*outside"):
        resolve_ensemble(_row(d), env={}, models_root=root)


def test_default_models_root_is_cwd_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "artifacts" / "e1").mkdir(parents=True)
    assert resolve_ensemble(_row(tmp_path / "artifacts" / "e1"), env={}).enabled
    with pytest.raises(ConfigError, match="outside"):
        resolve_ensemble(_row(tmp_path / "e1"), env={})


def test_row_paths_must_share_a_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    row = _row(tmp_path / "a", mamba_path=str(tmp_path / "mamba.pt"))
    with pytest.raises(ConfigError, match=r"row 7.*one directory"):
        resolve_ensemble(row, env={}, models_root=tmp_path)


_FIELDS = {
    "mamba_weight": ("ML_MAMBA_WEIGHT", "mamba_weight", 0.0),
    "version": ("ML_ENSEMBLE_VERSION", "ensemble_version", None),
    "device": ("ML_DEVICE", "device", "cpu"),
    "enabled": ("ML_ENABLED", "enabled", None),
}


@settings(max_examples=60, deadline=None)
@given(
    in_env=st.sets(st.sampled_from(sorted(_FIELDS))),
    in_toml=st.sets(st.sampled_from(sorted(_FIELDS))),
    w_env=st.floats(0, 1),
    w_toml=st.floats(0, 1),
    with_dir=st.booleans(),
)
def test_each_field_from_env_else_toml_else_default(
    tmp_path_factory: pytest.TempPathFactory,
    in_env: set[str],
    in_toml: set[str],
    w_env: float,
    w_toml: float,
    with_dir: bool,
) -> None:
    tmp = tmp_path_factory.mktemp("prio")
    env_values = {"mamba_weight": w_env, "version": "from-env", "device": "cuda", "enabled": True}
    toml_values = {
        "mamba_weight": w_toml,
        "version": "from-toml",
        "device": "cpu",
        "enabled": False,
    }
    env = {_FIELDS[f][0]: str(env_values[f]).lower() for f in in_env}
    lines = ["[ml]"]
    for f in in_toml:
        v = toml_values[f]
        lines.append(f"{_FIELDS[f][1]} = {str(v).lower() if isinstance(v, bool) else repr(v)}")
    if with_dir:
        lines.append(f'lgbm_models_dir = "{tmp}"')
    c = resolve_ensemble(None, env=env, toml_path=_toml(tmp, "\n".join(lines) + "\n"))
    for f in ("mamba_weight", "version", "device"):
        want = env_values[f] if f in in_env else toml_values[f] if f in in_toml else _FIELDS[f][2]
        if f == "mamba_weight" and f not in in_env and f not in in_toml:
            want = None
        if f == "mamba_weight" and want is not None:
            assert c.mamba_weight == pytest.approx(float(want), abs=1e-15)
        else:
            assert getattr(c, f) == want, f
        src = "environment" if f in in_env else "toml" if f in in_toml else "default"
        assert c.sources.get(f, "default") == src
    explicit = True if "enabled" in in_env else False if "enabled" in in_toml else None
    assert c.enabled == (with_dir if explicit is None else explicit and with_dir)


def test_config_is_frozen() -> None:
    c = EnsembleConfig(enabled=False, source="default")
    with pytest.raises(ValueError):
        c.enabled = True  # type: ignore[misc]


def test_environment_default_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("ML_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("ML_ENSEMBLE_VERSION", "from-os")
    assert resolve_ensemble(None).version == "from-os"


def test_file_names_the_runtime_does_not_load_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mamba_path names 'mamba_v3\.pt'"):
        resolve_ensemble(None, env={"ML_MAMBA_MODEL_PATH": str(tmp_path / "mamba_v3.pt")})
    with pytest.raises(ConfigError, match=r"norm_params_path names 'norm\.json'"):
        resolve_ensemble(
            _row(tmp_path, norm_params_path=str(tmp_path / "norm.json")),
            env={},
            models_root=tmp_path,
        )
    c = resolve_ensemble(None, env={"ML_MAMBA_MODEL_PATH": str(tmp_path / MAMBA_FILE)})
    assert c.model_dir == tmp_path


def test_file_names_match_the_runtime() -> None:
    models = pytest.importorskip("stream_infer.models._manifest")
    assert (MAMBA_FILE, NORM_FILE) == (models.MAMBA_FILE, models.NORM_FILE)


def test_settings_read_the_documented_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_infer.config import ServiceSettings

    monkeypatch.setenv("ML_MODELS_ROOT", "/srv/models")
    monkeypatch.setenv("ML_RELOAD_POLL_S", "0.5")
    monkeypatch.setenv("STREAM_INFER_CONFIG", "/etc/stream-infer.toml")
    s = ServiceSettings()
    assert (s.models_root, s.reload_poll_s, s.config_path) == (
        "/srv/models",
        0.5,
        "/etc/stream-infer.toml",
    )
    assert ServiceSettings(models_root="/k").models_root == "/k"

"""Training: features -> samples and split -> Mamba + LightGBM -> export -> checks -> manifest.

Reproducible bit for bit on one machine and software stack: every random draw is seeded,
torch runs deterministic algorithms on one thread while training, LightGBM is deterministic
on a fixed thread count, and every file is written with stable bytes (see ``_export``).
The manifest is written last, and only when every exported artifact matches its in-memory
model on the test split (ExportCheckError otherwise).
"""

from __future__ import annotations

import copy
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_infer._errors import ModelError
from stream_infer.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES
from stream_infer.models._dataset import SPLITS, Samples, StreamData, load_streams, make_samples
from stream_infer.models._export import (
    check_onnx,
    check_torchscript,
    mamba_probabilities,
    quiet_jit,
    save_torchscript,
)
from stream_infer.models._lgbm import LGBM_PARAMS, as_float32_rows, to_onnx, train_lgbm
from stream_infer.models._mamba import MambaClassifier, MambaConfig
from stream_infer.models._manifest import (
    MAMBA_FILE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    NORM_FILE,
    REFERENCE_FILE,
    SEQ_LEN,
    lgbm_file,
    sha256_file,
    write_json,
)
from stream_infer.models._metrics import model_metrics

__all__ = ["TrainConfig", "TrainResult", "train_ensemble"]

log = logging.getLogger(__name__)

TRAIN_METRICS_STRIDE = 4


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained artifacts (recorded in the manifest)."""

    horizons: tuple[int, ...] = (1, 5, 15)
    seq_len: int = SEQ_LEN
    epochs: int = 3
    seed: int = 0
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    # Windows drawn (without replacement, seeded) per epoch; None = every training window.
    samples_per_epoch: int | None = 16_384
    d_model: int = 32
    d_state: int = 8
    n_layers: int = 2
    clip: float = 5.0
    lgbm_rounds: int = 400
    lgbm_early_stopping: int = 40
    lgbm_params: dict[str, Any] = field(default_factory=lambda: dict(LGBM_PARAMS))
    mamba_weight: float = 0.5
    version: str | None = None

    @classmethod
    def tiny(cls, **overrides: Any) -> TrainConfig:
        """Small and fast (tests, demos): seconds on a few thousand candles."""
        base = cls(
            epochs=1,
            samples_per_epoch=1024,
            d_model=8,
            d_state=4,
            n_layers=1,
            lgbm_rounds=20,
            lgbm_early_stopping=10,
        )
        return replace(base, **overrides)

    def mamba_config(self) -> MambaConfig:
        return MambaConfig(
            n_features=N_FEATURES,
            n_outputs=len(self.horizons),
            d_model=self.d_model,
            d_state=self.d_state,
            n_layers=self.n_layers,
            seq_len=self.seq_len,
            clip=self.clip,
        )


def _normalisation(train: Samples) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (ddof 0) over the training split's latest rows only."""
    x = train.latest()
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    # A constant feature carries nothing: divide by 1 rather than by ~0.
    std = np.where(std > 1e-12, std, 1.0)
    return mean, std


@dataclass
class _DeterministicTorch:
    """One thread and deterministic algorithms while training; restored afterwards."""

    threads: int = 1
    _saved: tuple[int, bool] = (0, False)

    def __enter__(self) -> None:
        self._saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._saved[0])
        torch.use_deterministic_algorithms(self._saved[1])


def _train_mamba(
    splits: dict[str, Samples], cfg: TrainConfig, progress: Callable[[str], None]
) -> tuple[MambaClassifier, dict[str, Any]]:
    train, val = splits["train"], splits["val"]
    mean, std = _normalisation(train)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = MambaClassifier(cfg.mamba_config(), torch.from_numpy(mean), torch.from_numpy(std))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n = len(train)
    per_epoch = n if cfg.samples_per_epoch is None else min(n, cfg.samples_per_epoch)
    best_loss = float("inf")
    best_state = copy.deepcopy(model.state_dict())
    best_epoch = 0
    history = []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(n)[:per_epoch]
        total = 0.0
        for i in range(0, per_epoch, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            xb = torch.from_numpy(train.windows(idx))
            yb = torch.from_numpy(train.y[idx]).float()
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        p = np.clip(mamba_probabilities(model, val.windows()), 1e-7, 1 - 1e-7)
        yv = val.y
        val_loss = float(-np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p)))
        history.append(
            {"epoch": epoch, "train_loss": total / max(per_epoch, 1), "val_loss": val_loss}
        )
        progress(
            f"mamba epoch {epoch}/{cfg.epochs}: train loss {total / max(per_epoch, 1):.5f}, "
            f"val loss {val_loss:.5f} ({time.perf_counter() - t0:.1f}s)"
        )
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    info = {
        "config": cfg.mamba_config().to_dict(),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "best_epoch": best_epoch,
        "history": history,
        "normalisation": "inside the model (buffers norm_mean, norm_std, clip); "
        f"the same numbers are in {NORM_FILE}",
    }
    return model, info


def _versions() -> dict[str, str]:
    import lightgbm
    import onnx
    import onnxmltools
    import onnxruntime

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "onnxmltools": onnxmltools.__version__,
        "lightgbm": lightgbm.__version__,
    }


def _data_record(streams: Sequence[StreamData], splits: dict[str, Samples]) -> list[dict[str, Any]]:
    out = []
    for i, s in enumerate(streams):
        rec: dict[str, Any] = {
            "symbol": s.symbol,
            "interval": s.interval,
            "files": [
                {"path": Path(f).as_posix(), "sha256": sha256_file(Path(f))} for f in s.files
            ],
            "rows": s.rows,
            "synthetic_rows": int(s.synthetic.sum()),
            "segments": int(s.segment.max()) + 1 if s.rows else 0,
            "splits": {},
        }
        for name in SPLITS:
            sel = splits[name].stream == i
            ot = splits[name].open_time[sel]
            rec["splits"][name] = {
                "samples": int(sel.sum()),
                "first_open_time": int(ot.min()) if ot.size else None,
                "last_open_time": int(ot.max()) if ot.size else None,
            }
        out.append(rec)
    return out


@dataclass(frozen=True)
class TrainResult:
    """What ``train_ensemble`` wrote (``manifest``) and the in-memory models it came from."""

    manifest: dict[str, Any]
    out_dir: Path
    config: TrainConfig
    mamba: MambaClassifier
    boosters: tuple[Any, ...]
    splits: dict[str, Samples]
    streams: tuple[StreamData, ...]


def train_ensemble(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    command: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train, export and check the ensemble from klines ``paths`` into ``out_dir``.

    The manifest is also written to ``out_dir/manifest.json``. Raises ModelError for
    unusable data, ExportCheckError when an artifact disagrees with its in-memory model.
    """
    cfg = config or TrainConfig()
    say = progress or log.info
    out = Path(out_dir)
    horizons = tuple(int(h) for h in cfg.horizons)
    if not horizons or min(horizons) < 1 or len(set(horizons)) != len(horizons):
        raise ModelError(f"horizons must be distinct positive ints, got {list(horizons)}")
    if not 0.0 <= cfg.mamba_weight <= 1.0:
        raise ModelError(f"mamba_weight must be in [0, 1], got {cfg.mamba_weight}")
    t_start = time.perf_counter()
    streams = load_streams(paths)
    splits = make_samples(streams, horizons, cfg.seq_len)
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise ModelError(
                f"no {name} samples: the data is too short for seq_len {cfg.seq_len}, "
                f"horizons {list(horizons)} and the {FEATURE_VERSION=} warm-up"
            )
    say(
        "samples: "
        + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        + f" from {len(streams)} stream(s) ({time.perf_counter() - t_start:.1f}s)"
    )

    out.mkdir(parents=True, exist_ok=True)
    # A stale manifest must not vouch for the files this run replaces.
    (out / MANIFEST_FILE).unlink(missing_ok=True)

    with _DeterministicTorch(threads=1):
        model, mamba_info = _train_mamba(splits, cfg, say)

    boosters = []
    lgbm_info = []
    for j, h in enumerate(horizons):
        booster, info = train_lgbm(
            splits["train"].latest(),
            splits["train"].y[:, j],
            splits["val"].latest(),
            splits["val"].y[:, j],
            seed=cfg.seed,
            num_boost_round=cfg.lgbm_rounds,
            early_stopping=cfg.lgbm_early_stopping,
            params=cfg.lgbm_params,
        )
        boosters.append(booster)
        lgbm_info.append({"horizon": h, **info})
        say(f"lgbm h={h}: {info['num_trees']} trees")

    # In-memory predictions and metrics per split.
    # The training split is scored on every TRAIN_METRICS_STRIDE-th sample (time).
    metrics: dict[str, Any] = {}
    for name in SPLITS:
        s = splits[name]
        sel = np.arange(0, len(s), TRAIN_METRICS_STRIDE if name == "train" else 1)
        with _DeterministicTorch(threads=1):
            pm = mamba_probabilities(model, s.windows(sel))
        rows32 = as_float32_rows(s.latest(sel))
        pl = np.column_stack([b.predict(rows32) for b in boosters])
        pe = cfg.mamba_weight * pm + (1 - cfg.mamba_weight) * pl
        metrics[name] = model_metrics(
            s.y[sel],
            {"mamba": pm, "lgbm": pl, "ensemble": pe},
            horizons,
            with_calibration=(name == "test"),
        )
    say(f"metrics done ({time.perf_counter() - t_start:.1f}s)")

    # Export, then check each artifact against its source on the test split.
    test = splits["test"]
    with quiet_jit():
        scripted = torch.jit.script(model)
    save_torchscript(scripted, out / MAMBA_FILE)
    lgbm_paths = []
    for h, booster in zip(horizons, boosters, strict=True):
        path = out / lgbm_file(h)
        path.write_bytes(
            to_onnx(booster, N_FEATURES, lgbm_file(h).removesuffix(".onnx")).SerializeToString()
        )
        lgbm_paths.append(path)
    with _DeterministicTorch(threads=1):
        ts_diff = check_torchscript(model, out / MAMBA_FILE, test.windows())
    onnx_diffs = check_onnx(lgbm_paths, boosters, test.latest())
    say(f"export checks: TorchScript {ts_diff:.3g}, ONNX {max(onnx_diffs):.3g}")

    write_json(
        out / NORM_FILE,
        {
            "feature_version": FEATURE_VERSION,
            "feature_names": list(FEATURE_NAMES),
            "mean": model.norm_mean.tolist(),
            "std": model.norm_std.tolist(),
            "clip": float(model.clip),
            "applied_by": f"{MAMBA_FILE} (the runtime passes RAW windows)",
            "source": "training split, latest row of every training sample, ddof 0",
        },
    )
    # The reference window (first test sample) and its outputs from the exported files.
    window = test.windows(np.array([0]))
    np.save(out / REFERENCE_FILE, window, allow_pickle=False)
    ref_m, ref_l = _exported_outputs(out, horizons, window)

    names = [MAMBA_FILE, *(p.name for p in lgbm_paths), NORM_FILE, REFERENCE_FILE]
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "version": cfg.version or out.resolve().name,
        "feature_version": FEATURE_VERSION,
        "feature_names": list(FEATURE_NAMES),
        "horizons": list(horizons),
        "seq_len": cfg.seq_len,
        "mamba_weight": float(cfg.mamba_weight),
        "labels": "y_h = 1 if close[t+h] > close[t] (h in stream rows); a sample needs real "
        "candles at t and t+h, seq_len ready rows, and one segment (docs/models.md)",
        "split": {
            "fractions": [0.70, 0.15, 0.15],
            "by": "time, per (symbol, interval)",
            "purge_rows": cfg.seq_len + max(horizons) - 1,
        },
        "mamba": {"file": MAMBA_FILE, **mamba_info},
        "lgbm": {
            "files": {str(h): lgbm_file(h) for h in horizons},
            "input": "input: float32 (N, 27), the latest RAW feature row",
            "output": "probabilities: float32 (N, 2), column 1 = P(up)",
            "params": {**cfg.lgbm_params, "seed": cfg.seed},
            "models": lgbm_info,
            "thresholds": "rounded down to float32 (exact routing for float32 inputs)",
        },
        "normalization": {"file": NORM_FILE},
        "reference": {
            "file": REFERENCE_FILE,
            "open_time": int(test.open_time[0]),
            "symbol": streams[int(test.stream[0])].symbol,
            "mamba": ref_m[0].tolist(),
            "lgbm": ref_l[0].tolist(),
        },
        "export_checks": {
            "split": "test",
            "samples": len(test),
            "torchscript_vs_eager_max_abs": ts_diff,
            "onnx_vs_lightgbm_max_abs": dict(zip(map(str, horizons), onnx_diffs, strict=True)),
        },
        "data": _data_record(streams, splits),
        "metrics": metrics,
        "metrics_note": f"train: every {TRAIN_METRICS_STRIDE}th sample; val, test: all",
        "train_config": {k: v for k, v in asdict(cfg).items() if k != "lgbm_params"},
        "seed": cfg.seed,
        "versions": _versions(),
        "command": command or "stream_infer.models.train_ensemble (Python API)",
        "checksums": {name: sha256_file(out / name) for name in names},
    }
    manifest = json.loads(json.dumps(manifest))  # JSON-native: equal to the file's content
    write_json(out / MANIFEST_FILE, manifest)
    say(f"wrote {out} ({time.perf_counter() - t_start:.1f}s)")
    return TrainResult(
        manifest=manifest,
        out_dir=out,
        config=cfg,
        mamba=model,
        boosters=tuple(boosters),
        splits=splits,
        streams=tuple(streams),
    )


def _exported_outputs(
    out: Path, horizons: tuple[int, ...], window: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The exported files' outputs on ``window``, computed the way the runtime does."""
    import onnxruntime as ort

    from stream_infer.models._lgbm import INPUT_NAME, PROBA_NAME

    with quiet_jit():
        module = torch.jit.freeze(torch.jit.load(str(out / MAMBA_FILE)).eval())
    pm = mamba_probabilities(module, window)
    x32 = np.ascontiguousarray(window[:, -1, :], dtype=np.float32)
    cols = []
    for h in horizons:
        sess = ort.InferenceSession(str(out / lgbm_file(h)), providers=["CPUExecutionProvider"])
        cols.append(sess.run([PROBA_NAME], {INPUT_NAME: x32})[0][:, 1].astype(np.float64))
    return pm, np.column_stack(cols)

"""Writing artifacts reproducibly, and checking them against the in-memory models.

TorchScript stays the model format although torch 2.13 marks ``torch.jit`` deprecated
(docs/design.md, PyTorch notes): ``quiet_jit`` silences that warning in our code paths only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_infer._errors import ExportCheckError

__all__ = [
    "ONNX_TOL",
    "TORCHSCRIPT_TOL",
    "check_onnx",
    "check_torchscript",
    "mamba_probabilities",
    "quiet_jit",
    "save_torchscript",
]

ONNX_TOL = 1e-6
TORCHSCRIPT_TOL = 1e-5
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch.jit's deprecation warnings (TorchScript is the chosen format)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


_FINAL_LINE = re.compile(rb"^  \w+ : Final\[.*\] = .*$")


def _sort_constant_lines(code: bytes) -> bytes:
    """Sort each run of ``name : Final[...] = value`` class declarations.

    TorchScript emits a module's constants in the iteration order of a ``set`` of their
    names, which follows Python's per-process string hash seed: two identical exports differ
    in that order. Declaration order carries no meaning, so a sorted order is as valid.
    """
    lines = code.split(b"\n")
    out: list[bytes] = []
    run: list[bytes] = []
    for line in lines:
        if _FINAL_LINE.match(line):
            run.append(line)
            continue
        out.extend(sorted(run))
        run = []
        out.append(line)
    out.extend(sorted(run))
    return b"\n".join(out)


def save_torchscript(module: torch.jit.ScriptModule, path: Path) -> None:
    """``torch.jit.save`` with bytes that depend on the model only.

    * No debug records: they hold the absolute path of the source file (another checkout
      would differ); loading needs none of them, they only enrich error messages.
    * Constant declarations sorted (``_sort_constant_lines``), and the archive's
      serialization id derived from the content instead of from the unsorted records.
    * Fixed zip timestamps and the top folder named after the file, as torch.jit.save(path).
    """
    buf = io.BytesIO()
    with quiet_jit():
        torch.jit.save(module, buf)
    buf.seek(0)
    prefix = path.stem + "/"
    records: list[tuple[str, bytes]] = []
    with zipfile.ZipFile(buf) as src:
        for info in src.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel.endswith(".debug_pkl"):
                continue
            data = src.read(info.filename)
            if rel.startswith("code/") and rel.endswith(".py"):
                data = _sort_constant_lines(data)
            records.append((rel, data))
    digest = hashlib.sha256()
    for rel, data in records:
        if rel != ".data/serialization_id":
            digest.update(rel.encode() + b"\0" + data)
    sid = str(int(digest.hexdigest(), 16))[:40].encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for rel, data in records:
            if rel == ".data/serialization_id":
                data = sid
            dst.writestr(zipfile.ZipInfo(prefix + rel, date_time=_ZIP_TIME), data)
    path.write_bytes(out.getvalue())


def mamba_probabilities(
    model: torch.nn.Module | torch.jit.ScriptModule, windows: np.ndarray, batch: int = 32
) -> np.ndarray:
    """sigmoid(model(windows)) as float64 (n, H), in batches."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            x = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch]))
            outs.append(torch.sigmoid(model(x)).double().numpy())
    if not outs:
        return np.empty((0, 0))
    return np.concatenate(outs)


def check_torchscript(
    eager: torch.nn.Module, path: Path, windows: np.ndarray, tol: float = TORCHSCRIPT_TOL
) -> float:
    """Max |TorchScript file - eager| over ``windows``; ExportCheckError past ``tol``."""
    with quiet_jit():
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()
    a = mamba_probabilities(eager, windows)
    b = mamba_probabilities(loaded, windows)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if not (np.isfinite(b).all() and diff <= tol):
        raise ExportCheckError(
            f"TorchScript export differs from the eager model by {diff:.3g} (> {tol:g}) "
            "or is not finite",
            path=str(path),
        )
    return diff


def check_onnx(
    paths: Sequence[Path],
    boosters: Sequence[Any],
    rows: np.ndarray,
    tol: float = ONNX_TOL,
) -> list[float]:
    """Max |ONNX file - LightGBM| per horizon over float32 ``rows``; ExportCheckError past tol."""
    import onnxruntime as ort

    from stream_infer.models._lgbm import INPUT_NAME, PROBA_NAME, as_float32_rows

    x32 = np.ascontiguousarray(rows, dtype=np.float32)
    diffs = []
    for path, booster in zip(paths, boosters, strict=True):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        p_onnx = sess.run([PROBA_NAME], {INPUT_NAME: x32})[0]
        if p_onnx.ndim != 2 or p_onnx.shape[1] != 2:
            raise ExportCheckError(
                f"ONNX output {PROBA_NAME!r} has shape {p_onnx.shape}, expected (n, 2)",
                path=str(path),
            )
        p_lgbm = booster.predict(as_float32_rows(rows))
        diff = float(np.max(np.abs(p_onnx[:, 1].astype(np.float64) - p_lgbm))) if len(rows) else 0.0
        sums = np.abs(p_onnx.sum(axis=1) - 1.0).max() if len(rows) else 0.0
        if not (np.isfinite(p_onnx).all() and diff <= tol and sums <= 1e-5):
            raise ExportCheckError(
                f"ONNX export differs from LightGBM by {diff:.3g} (> {tol:g}), or its "
                "probabilities are not finite / do not sum to 1",
                path=str(path),
            )
        diffs.append(diff)
    return diffs

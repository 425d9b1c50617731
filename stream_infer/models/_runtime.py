"""Serving: load an ensemble directory, validate it, and predict batches of RAW windows.

``load_ensemble`` validates everything it can before anything serves: the manifest, the
feature spec version and names, every artifact's checksum, the normalisation params against
the model's own buffers, and a probe forward on the stored reference window. ``check`` then
compares that window's outputs with the ones recorded at export (the reload manager calls
it before swapping a new version in).

Runtime choices (docs/models.md, "Runtime"): the TorchScript model is frozen after loading
(constants folded: ~20% less per-call overhead at batch 1) and, on CPU, run with
TorchScript's profiling executor off (no compile on its first calls, same speed); the
per-horizon ONNX files are merged in memory into one graph so LightGBM costs one ONNX
Runtime call per batch.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from stream_infer._errors import ArtifactError, ModelError
from stream_infer._steps import run_steps
from stream_infer.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES
from stream_infer.models._manifest import (
    MAMBA_FILE,
    MANIFEST_FILE,
    NORM_FILE,
    REFERENCE_FILE,
    lgbm_file,
    read_json,
    read_manifest,
    sha256_file,
)

__all__ = [
    "CHECK_TOL",
    "FROZEN_CACHE_DIR",
    "Ensemble",
    "EnsembleResult",
    "cache_frozen",
    "frozen_cache_path",
    "load_ensemble",
    "load_ensemble_steps",
    "run_steps",
    "tune_malloc",
]

log = logging.getLogger(__name__)

# check(): the reference window's outputs may differ from the recorded ones by at most this.
CHECK_TOL = 1e-5
# Largest batch of windows given to the TorchScript model in one call (on the GPU: one call).
MAMBA_CHUNK = 32


@dataclass(frozen=True, slots=True)
class EnsembleResult:
    """(B, H) float64 arrays: the ensemble's probabilities, |2p - 1|, and each model's own."""

    probabilities: np.ndarray
    confidences: np.ndarray
    mamba: np.ndarray
    lgbm: np.ndarray


def combine(mamba: np.ndarray, lgbm: np.ndarray, weight: float) -> EnsembleResult:
    """p = w * p_mamba + (1 - w) * p_lgbm per horizon; confidence = |2p - 1|."""
    p = weight * mamba + (1.0 - weight) * lgbm
    return EnsembleResult(
        probabilities=p, confidences=np.abs(2.0 * p - 1.0), mamba=mamba, lgbm=lgbm
    )


class Ensemble:
    """A loaded, validated ensemble (immutable). Build it with ``load_ensemble``."""

    __slots__ = (
        "_device",
        "_input_name",
        "_mamba",
        "_out_names",
        "_reference",
        "_session",
        "ensemble_id",
        "feature_version",
        "horizons",
        "mamba_weight",
        "manifest",
        "model_dir",
        "seq_len",
        "version",
    )

    ensemble_id: str
    version: str
    horizons: tuple[int, ...]
    seq_len: int
    mamba_weight: float
    feature_version: int
    model_dir: Path
    manifest: Mapping[str, Any]
    _mamba: Any
    _device: str
    _session: Any
    _input_name: str
    _out_names: list[str]
    _reference: tuple[np.ndarray, np.ndarray, np.ndarray]

    def __init__(
        self,
        *,
        ensemble_id: str,
        version: str,
        horizons: tuple[int, ...],
        seq_len: int,
        mamba_weight: float,
        feature_version: int,
        model_dir: Path,
        manifest: Mapping[str, Any],
        mamba: Any,
        device: str,
        session: Any,
        input_name: str,
        out_names: list[str],
        reference: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        s = object.__setattr__
        s(self, "ensemble_id", ensemble_id)
        s(self, "version", version)
        s(self, "horizons", horizons)
        s(self, "seq_len", seq_len)
        s(self, "mamba_weight", mamba_weight)
        s(self, "feature_version", feature_version)
        s(self, "model_dir", model_dir)
        s(self, "manifest", MappingProxyType(copy.deepcopy(dict(manifest))))
        s(self, "_mamba", mamba)
        s(self, "_device", device)
        s(self, "_session", session)
        s(self, "_input_name", input_name)
        s(self, "_out_names", out_names)
        s(self, "_reference", reference)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Ensemble is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Ensemble is immutable (cannot delete {name!r})")

    def __repr__(self) -> str:
        return (
            f"Ensemble(id={self.ensemble_id!r}, version={self.version!r}, "
            f"horizons={self.horizons}, seq_len={self.seq_len}, w={self.mamba_weight}, "
            f"device={self._device!r})"
        )

    @property
    def device(self) -> str:
        return str(self._device)

    def predict_components(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_mamba, p_lgbm), each (B, H) float64, for RAW windows (B, seq_len, 27)."""
        import torch

        w = windows
        if (
            not isinstance(w, np.ndarray)
            or w.ndim != 3
            or w.shape[1:]
            != (
                self.seq_len,
                N_FEATURES,
            )
        ):
            shape = getattr(w, "shape", None)
            raise ModelError(
                f"windows must be an array of shape (B, {self.seq_len}, {N_FEATURES}), got {shape}",
                version=self.version,
            )
        if w.dtype != np.float64 or not w.flags.c_contiguous:
            w = np.ascontiguousarray(w, dtype=np.float64)
        n = w.shape[0]
        h = len(self.horizons)
        if n == 0:
            empty = np.empty((0, h))
            return empty, empty.copy()
        # from_numpy shares memory (no copy). One TorchScript call per MAMBA_CHUNK windows:
        # beyond that the scan's (B, E, N, L) intermediates leave the cache and per-window
        # cost rises (measured: 350 us at 32, 690 us at 128, 1240 us at 256; docs/models.md).
        with torch.inference_mode():
            x = torch.from_numpy(w)
            if self._device != "cpu":
                x = x.to(self._device)
            chunk = MAMBA_CHUNK if self._device == "cpu" else n
            if n <= chunk:
                pm = torch.sigmoid(self._mamba(x)).to(device="cpu", dtype=torch.float64).numpy()
            else:
                pm = np.empty((n, h), dtype=np.float64)
                for i in range(0, n, chunk):
                    part = torch.sigmoid(self._mamba(x[i : i + chunk]))
                    pm[i : i + chunk] = part.to(device="cpu", dtype=torch.float64).numpy()
        # One ONNX Runtime call for every horizon (merged graph) on the latest rows.
        last = np.ascontiguousarray(w[:, -1, :], dtype=np.float32)
        outs = self._session.run(self._out_names, {self._input_name: last})
        pl = np.empty((n, h), dtype=np.float64)
        for j, o in enumerate(outs):
            pl[:, j] = o[:, 1]
        return pm, pl

    def predict(self, windows: np.ndarray) -> EnsembleResult:
        """The ensemble for RAW feature windows (B, seq_len, 27) float64, latest row last."""
        pm, pl = self.predict_components(windows)
        return combine(pm, pl, self.mamba_weight)

    def check(self) -> dict[str, float]:
        """Run the stored reference window; ModelError if an output is not finite or differs
        from the one recorded at export by more than ``CHECK_TOL``."""
        window, want_m, want_l = self._reference
        pm, pl = self.predict_components(window)
        path = str(self.model_dir)
        if not (np.isfinite(pm).all() and np.isfinite(pl).all()):
            raise ModelError(
                "the reference window gives non-finite outputs", version=self.version, path=path
            )
        dm = float(np.max(np.abs(pm - want_m)))
        dl = float(np.max(np.abs(pl - want_l)))
        if dm > CHECK_TOL or dl > CHECK_TOL:
            raise ModelError(
                f"the reference window's outputs differ from the recorded ones "
                f"(mamba {dm:.3g}, lgbm {dl:.3g} > {CHECK_TOL:g})",
                version=self.version,
                path=path,
            )
        return {"mamba_max_diff": dm, "lgbm_max_diff": dl}


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Raise glibc malloc's mmap and trim thresholds for this process (False if not glibc).

    With the defaults, every batched torch call returns its large blocks to the OS and faults
    them in again on the next call (docs/design.md, PyTorch notes); the environment variables
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ do the same from process start.
    32 MiB is glibc's largest mmap threshold on 64-bit.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim, m_mmap = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h)
        return bool(libc.mallopt(m_mmap, mmap_threshold)) and bool(
            libc.mallopt(m_trim, trim_threshold)
        )
    except (OSError, AttributeError):
        return False


def _check_device(device: str) -> str:
    import torch

    dev = device.strip().lower()
    if dev == "cpu":
        return dev
    if dev == "cuda" or dev.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelError(
                f"ML_DEVICE={device} but no CUDA device is available to torch "
                f"(torch {torch.__version__}); set ML_DEVICE=cpu"
            )
        return dev
    raise ModelError(f"unknown device {device!r}: use cpu or cuda")


def _verify_checksums(model_dir: Path, manifest: Mapping[str, Any], needed: Sequence[str]) -> None:
    sums = manifest["checksums"]
    for name in needed:
        if name not in sums:
            raise ArtifactError(
                f"manifest has no checksum for {name}", path=str(model_dir / MANIFEST_FILE)
            )
    for name, want in sums.items():
        path = model_dir / name
        if Path(name).name != name:
            raise ArtifactError(f"checksum entry {name!r} is not a plain file name", path=str(path))
        if not path.is_file():
            raise ArtifactError(f"missing artifact {name}", path=str(path))
        got = sha256_file(path)
        if got != want:
            raise ArtifactError(
                f"checksum mismatch for {name}: sha256 {got[:12]}…, manifest {str(want)[:12]}…",
                path=str(path),
            )


def _load_mamba(path: Path, device: str) -> Any:
    import torch

    from stream_infer.models._export import quiet_jit

    try:
        with quiet_jit():
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError and friends for a bad archive
        raise ArtifactError(f"cannot load TorchScript {path.name}: {exc}", path=str(path)) from exc
    module.eval()
    return module


def _check_norm(path: Path, module: Any) -> None:
    params = read_json(path)
    try:
        names = tuple(params["feature_names"])
        mean = np.asarray(params["mean"], dtype=np.float64)
        std = np.asarray(params["std"], dtype=np.float64)
        clip = float(params["clip"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"malformed {path.name}: {exc}", path=str(path)) from exc
    if names != FEATURE_NAMES:
        raise ArtifactError(f"{path.name} lists other feature names", path=str(path))
    got_mean = module.norm_mean.detach().cpu().double().numpy()
    got_std = module.norm_std.detach().cpu().double().numpy()
    if mean.shape != (N_FEATURES,) or std.shape != (N_FEATURES,):
        raise ArtifactError(f"{path.name}: mean/std must have {N_FEATURES} values", path=str(path))
    if not (
        np.array_equal(mean, got_mean)
        and np.array_equal(std, got_std)
        and clip == float(module.clip)
    ):
        raise ArtifactError(
            f"{path.name} disagrees with the normalisation inside {MAMBA_FILE}", path=str(path)
        )


def _merge_lgbm(model_dir: Path, horizons: Sequence[int]) -> tuple[bytes, str, list[str], Path]:
    """Parse and check every horizon's ONNX file; their merged graph (serialised), its input
    and output names, and the first file (named in errors)."""
    import onnx

    from stream_infer.models._lgbm import INPUT_NAME, merge_horizons

    models = []
    for h in horizons:
        path = model_dir / lgbm_file(h)
        try:
            m = onnx.load(str(path))
            onnx.checker.check_model(m)
        except FileNotFoundError as exc:
            raise ArtifactError(f"missing artifact {path.name}", path=str(path)) from exc
        except Exception as exc:  # protobuf DecodeError, onnx ValidationError
            raise ArtifactError(f"corrupt ONNX {path.name}: {exc}", path=str(path)) from exc
        inputs = [i for i in m.graph.input]
        dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or dims[-1:] != [N_FEATURES]:
            raise ArtifactError(
                f"{path.name} must take one input {INPUT_NAME!r} of shape (N, {N_FEATURES})",
                path=str(path),
            )
        models.append((path, m))
    try:
        merged, names = merge_horizons([m for _, m in models])
    except ValueError as exc:
        raise ArtifactError(f"unexpected LightGBM ONNX graph: {exc}", path=str(model_dir)) from exc
    return merged.SerializeToString(), INPUT_NAME, names, models[0][0]


def _lgbm_session(merged: bytes, threads: int, first: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(merged, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(
            f"ONNX Runtime rejects the LightGBM models: {exc}", path=str(first)
        ) from exc


def _load_reference(
    path: Path, manifest: Mapping[str, Any], seq_len: int, n_h: int, manifest_path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        window = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise ArtifactError(f"missing artifact {path.name}", path=str(path)) from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"unreadable {path.name}: {exc}", path=str(path)) from exc
    if window.shape != (1, seq_len, N_FEATURES) or window.dtype != np.float64:
        raise ArtifactError(
            f"{path.name} has shape {window.shape} {window.dtype}, expected "
            f"(1, {seq_len}, {N_FEATURES}) float64",
            path=str(path),
        )
    ref = manifest["reference"]
    try:
        want_m = np.asarray(ref["mamba"], dtype=np.float64).reshape(1, n_h)
        want_l = np.asarray(ref["lgbm"], dtype=np.float64).reshape(1, n_h)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"manifest reference outputs malformed: {exc}", path=str(manifest_path)
        ) from exc
    return window, want_m, want_l


def load_ensemble(
    model_dir: str | Path,
    *,
    device: str = "cpu",
    mamba_weight: float | None = None,
    ensemble_id: str = "file",
    version: str | None = None,
    threads: int = 1,
) -> Ensemble:
    """Load and validate the ensemble in ``model_dir`` (see the module docstring).

    ``mamba_weight`` None uses the manifest's; ``version`` None the manifest's. ``threads``
    sets torch's intra-op threads (process-wide) and ONNX Runtime's. Raises ArtifactError
    naming the file for a missing, corrupt or mismatched artifact, ModelError otherwise.
    Runs every step of ``load_ensemble_steps`` at once.
    """
    return run_steps(
        load_ensemble_steps(
            model_dir,
            device=device,
            mamba_weight=mamba_weight,
            ensemble_id=ensemble_id,
            version=version,
            threads=threads,
        )
    )


# The frozen module keeps these as attributes (not folded into constants): ``_check_norm``
# compares them with the normalisation file.
_NORM_ATTRS = ["norm_mean", "norm_std", "clip"]
FROZEN_CACHE_DIR = ".cache"


def frozen_cache_path(model_dir: str | Path, mamba_sha256: str) -> Path:
    """Where ``cache_frozen`` puts the frozen Mamba of ``model_dir`` whose TorchScript file has
    this sha256 (a changed file is another name: a stale cache is never read)."""
    return Path(model_dir) / FROZEN_CACHE_DIR / f"mamba-{mamba_sha256[:16]}.frozen.pt"


def _freeze(module: Any) -> Any:
    import torch

    from stream_infer.models._export import quiet_jit

    with quiet_jit():
        return torch.jit.freeze(module, preserved_attrs=_NORM_ATTRS)


def cache_frozen(model_dir: str | Path) -> Path:
    """Freeze ``model_dir``'s Mamba once and save it beside the artifacts (``.cache/``), where
    ``load_ensemble`` finds it: a hot reload then loads the frozen module in one ~5 ms step
    instead of torch.jit.load + torch.jit.freeze (~20 ms, up to ~60 on a busy machine, both
    holding the GIL beside the serving loop). ``stream-infer activate`` calls it.

    Checks the file against the manifest's checksum first. The cache records that checksum
    and the torch version; the loader ignores it when either differs. Written to a temporary
    name and renamed, so a reader never sees half a file. OSError when the directory is not
    writable (the loader then freezes, as without a cache).
    """
    import os

    import torch

    from stream_infer.models._export import quiet_jit

    root = Path(model_dir)
    manifest = read_manifest(root)
    _verify_checksums(root, manifest, [MAMBA_FILE])
    sha = str(manifest["checksums"][MAMBA_FILE])
    frozen = _freeze(_load_mamba(root / MAMBA_FILE, "cpu"))
    out = frozen_cache_path(root, sha)
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    extra = {"source_sha256": sha, "torch": torch.__version__}
    try:
        with quiet_jit():
            torch.jit.save(frozen, str(tmp), _extra_files=extra)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _load_frozen_cache(path: Path, sha: str, device: str) -> Any | None:
    """The cached frozen module, or None when there is none, or it is not for this file and
    this torch, or it does not load: the loader then freezes, as without a cache."""
    import torch

    from stream_infer.models._export import quiet_jit

    if device != "cpu" or not path.is_file():
        return None
    model_dir = path.parent.parent.resolve()
    if model_dir not in path.resolve().parents:
        # a symlink out of the model directory: only files inside it are loaded (the models
        # root check covers the directory's own entries, not those of .cache/)
        log.warning("ignoring the frozen cache %s: it resolves outside %s", path, model_dir)
        return None
    extra = {"source_sha256": "", "torch": ""}
    try:
        with quiet_jit():
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # a corrupt or foreign file is only a missed cache
        log.warning("ignoring the frozen cache %s: %s", path, exc)
        return None
    if extra["source_sha256"] != sha.encode() or extra["torch"] != torch.__version__.encode():
        return None
    module.eval()
    return module


class _Unprofiled:
    """The frozen TorchScript module, run with TorchScript's profiling executor off.

    Why (measured here, CPU, frozen module): the profiling executor's first call profiles
    and its second compiles (6-37 ms and 12-24 ms, longer on a busy machine), and for this
    model its optimised plan is no faster than the plain one (median per call, batch 1 / 5
    / 32: 294 / 752 / 4317 us optimised, 284 / 751 / 4253 us plain; outputs bit-identical).
    Without it there is no compile to pay, neither on the first live batches after a start
    or a hot swap nor while a hot reload loads beside live traffic. The flag is per thread
    (``torch.jit.optimized_execution``), so it is set around each call: ~2 us.
    """

    __slots__ = ("module",)

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, x: Any) -> Any:
        import torch

        with torch.jit.optimized_execution(False):
            return self.module(x)

    def __getattr__(self, name: str) -> Any:
        # .graph, .code, named_buffers(), ...: the module's own
        return getattr(self.module, name)


def load_ensemble_steps(
    model_dir: str | Path,
    *,
    device: str = "cpu",
    mamba_weight: float | None = None,
    ensemble_id: str = "file",
    version: str | None = None,
    threads: int = 1,
) -> Generator[str, None, Ensemble]:
    """``load_ensemble`` as a generator: it yields the name of each step it finished and
    returns the Ensemble (same arguments, same validation, same errors).

    Why steps: torch.jit.load (~10 ms here, 17-37 ms on a busy machine) and torch.jit.freeze
    (~10 ms, up to ~30) are each one C++ call that holds the GIL throughout. A hot reload
    loads beside the serving event loop, and a live batch that meets one of them waits for
    it. ``stream_infer.reload`` runs one step per gap between two of the service's batches,
    so a batch waits for at most one step (docs/postgres.md, "Hot reload"); each yield is
    such a gap. With the frozen cache (``cache_frozen``; ``stream-infer activate`` writes
    it) the Mamba is one ~5 ms step; without it, torch.jit.load and freezing are two.
    Then the ONNX files (parse, check, merge), then ONNX Runtime's session and the probe.
    """
    import torch

    root = Path(model_dir)
    dev = _check_device(device)
    if threads < 1:
        raise ModelError(f"threads must be >= 1, got {threads}")
    manifest_path = root / MANIFEST_FILE
    if not root.is_dir():
        raise ArtifactError(f"model directory {root} does not exist", path=str(root))
    manifest = read_manifest(root)
    if manifest["feature_version"] != FEATURE_VERSION:
        raise ArtifactError(
            f"the models were trained on feature spec v{manifest['feature_version']}; this "
            f"build computes v{FEATURE_VERSION}",
            path=str(manifest_path),
        )
    if tuple(manifest["feature_names"]) != FEATURE_NAMES:
        raise ArtifactError(
            "the manifest's feature names differ from this build's", path=str(manifest_path)
        )
    horizons = tuple(int(h) for h in manifest["horizons"])
    seq_len = int(manifest["seq_len"])
    weight = manifest["mamba_weight"] if mamba_weight is None else float(mamba_weight)
    if not (math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ModelError(f"mamba_weight must be in [0, 1], got {weight!r}")
    needed = [MAMBA_FILE, NORM_FILE, REFERENCE_FILE, *(lgbm_file(h) for h in horizons)]
    _verify_checksums(root, manifest, needed)

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    sha = str(manifest["checksums"][MAMBA_FILE])
    frozen = _load_frozen_cache(frozen_cache_path(root, sha), sha, dev)
    if frozen is None:
        module = _load_mamba(root / MAMBA_FILE, dev)
        yield "torchscript"
        # Read before freezing (the buffers are kept as attributes, but fail early).
        _check_norm(root / NORM_FILE, module)
        frozen = _freeze(module)
        yield "freeze"
    else:
        _check_norm(root / NORM_FILE, frozen)
        yield "torchscript (frozen cache)"
    merged, input_name, out_names, first_onnx = _merge_lgbm(root, horizons)
    yield "onnx"
    session = _lgbm_session(merged, threads, first_onnx)
    reference = _load_reference(
        root / REFERENCE_FILE, manifest, seq_len, len(horizons), manifest_path
    )
    # On a GPU the profiling executor fuses kernels: keep it there (and warm it up below).
    mamba: Any = _Unprofiled(frozen) if dev == "cpu" else frozen
    ens = Ensemble(
        ensemble_id=ensemble_id,
        version=str(manifest["version"]) if version is None else version,
        horizons=horizons,
        seq_len=seq_len,
        mamba_weight=float(weight),
        feature_version=int(manifest["feature_version"]),
        model_dir=root,
        manifest=manifest,
        mamba=mamba,
        device=dev,
        session=session,
        input_name=input_name,
        out_names=out_names,
        reference=reference,
    )
    # Probe: the reference window must give finite (1, H) from both models.
    try:
        pm, pl = ens.predict_components(reference[0])
    except ModelError:
        raise
    except Exception as exc:
        raise ArtifactError(
            f"probe forward on the reference window failed: {exc}", path=str(root / MAMBA_FILE)
        ) from exc
    for name, arr in ((MAMBA_FILE, pm), (lgbm_file(horizons[0]), pl)):
        if arr.shape != (1, len(horizons)) or not np.isfinite(arr).all():
            raise ArtifactError(
                f"probe forward gives shape {arr.shape} / non-finite values, expected finite "
                f"(1, {len(horizons)})",
                path=str(root / name),
            )
    if dev != "cpu":
        # The profiling executor profiles the first run and compiles on the second: pay
        # that here, not on the first live batches after a hot swap.
        window = reference[0]
        for b in (2, 3, 2, 3, 5):
            yield f"warm {b}"
            ens.predict_components(np.repeat(window, b, axis=0))
    return ens

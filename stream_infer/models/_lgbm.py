"""LightGBM: one binary model per horizon on the latest RAW feature row, exported to ONNX.

ONNX Runtime's tree ensembles compare float32 inputs with float32 thresholds, LightGBM
compares float64 with float64. So that both are the same function:

* the model sees features rounded to float32 (training, export check, runtime alike);
* every split threshold t is replaced by the largest float32 <= t before export. For a float32
  input x, ``x <= t`` holds exactly when ``x <= f32_floor(t)``, so routing is identical and only
  the float32 sum of the leaf values differs (~1e-7). onnxmltools rounds to nearest instead,
  which sends inputs between the two values down the other branch (seen: 0.025 on 3 in 1e5
  rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx

__all__ = [
    "LGBM_PARAMS",
    "as_float32_rows",
    "float32_thresholds",
    "merge_horizons",
    "to_onnx",
    "train_lgbm",
]

INPUT_NAME = "input"
PROBA_NAME = "probabilities"

# Deterministic: fixed thread count, row-wise histograms, seeded bagging.
LGBM_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 15,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 255,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,
    "verbose": -1,
}


def as_float32_rows(x: np.ndarray) -> np.ndarray:
    """The rows LightGBM sees: features rounded to float32 (returned as float64 for LightGBM)."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def train_lgbm(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    seed: int,
    num_boost_round: int = 400,
    early_stopping: int = 40,
    params: dict[str, Any] | None = None,
) -> tuple[lgb.Booster, dict[str, Any]]:
    """Train one horizon's model (early stopping on the validation split); thresholds float32."""
    p = dict(LGBM_PARAMS if params is None else params)
    p["seed"] = seed
    dtrain = lgb.Dataset(as_float32_rows(x_train), label=y_train, free_raw_data=True)
    dval = lgb.Dataset(as_float32_rows(x_val), label=y_val, reference=dtrain)
    callbacks: list[Callable[..., Any]] = (
        [lgb.early_stopping(early_stopping, verbose=False)] if len(y_val) else []
    )
    booster = lgb.train(
        p,
        dtrain,
        num_boost_round=num_boost_round,
        valid_sets=[dval] if len(y_val) else None,
        callbacks=callbacks,
    )
    best = booster.best_iteration or booster.current_iteration()
    booster = float32_thresholds(booster, num_iteration=best)
    info = {"best_iteration": int(best), "num_trees": int(booster.num_trees())}
    return booster, info


def _f32_floor(t: float) -> float:
    f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def float32_thresholds(booster: lgb.Booster, num_iteration: int | None = None) -> lgb.Booster:
    """A copy of ``booster`` (first ``num_iteration`` rounds) whose thresholds are float32."""
    text = booster.model_to_string(num_iteration=num_iteration)
    lines = []
    for line in text.split("\n"):
        if line.startswith("tree_sizes="):
            continue  # byte sizes of the old trees; LightGBM parses without them
        if line.startswith("threshold="):
            vals = line[len("threshold=") :].split()
            line = "threshold=" + " ".join(repr(_f32_floor(float(v))) for v in vals)
        lines.append(line)
    return lgb.Booster(model_str="\n".join(lines))


def to_onnx(booster: lgb.Booster, n_features: int, name: str) -> onnx.ModelProto:
    """ONNX of one binary model: input ``input`` float32 (N, F) -> ``probabilities`` (N, 2)."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(
        booster,
        name=name,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        zipmap=False,
    )
    # Reproducible bytes: the converter names the graph with a random uuid, and lists the
    # opsets in the order of a set (which follows the per-process string hash seed).
    model.graph.name = name
    opsets = [
        onnx.helper.make_opsetid(o.domain, o.version)
        for o in sorted(model.opset_import, key=lambda o: o.domain)
    ]
    del model.opset_import[:]
    model.opset_import.extend(opsets)
    return model


def merge_horizons(models: Sequence[onnx.ModelProto]) -> tuple[onnx.ModelProto, list[str]]:
    """One graph running every horizon's tree ensemble on the shared input (one ORT call).

    Keeps only each model's TreeEnsembleClassifier node; its probability output (N, 2) is a
    graph output ``p{i}``. Returns the model and the output names in horizon order.
    """
    nodes = []
    outputs = []
    names = []
    opsets: dict[str, int] = {}
    for i, m in enumerate(models):
        trees = [n for n in m.graph.node if n.op_type == "TreeEnsembleClassifier"]
        if len(trees) != 1:
            raise ValueError(f"model {i} has {len(trees)} TreeEnsembleClassifier nodes, not 1")
        node = onnx.NodeProto()
        node.CopyFrom(trees[0])
        out = f"p{i}"
        node.name = f"trees{i}"
        del node.output[:]
        node.output.extend([f"label{i}", out])
        nodes.append(node)
        outputs.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
        names.append(out)
        for op in m.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    graph = onnx.helper.make_graph(nodes, "lgbm_horizons", [models[0].graph.input[0]], outputs)
    merged = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
    )
    merged.ir_version = models[0].ir_version
    return merged, names

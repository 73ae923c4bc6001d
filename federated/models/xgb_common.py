"""What the three XGBoost modes share: parameters, model bytes <-> ArrayRecord, prediction.

A booster travels as its JSON bytes in one uint8 array (the layout Flower's
FedXgbBagging/FedXgbCyclic expect under key ``"0"``). The histogram mode adds the
global bin edges the model was trained on, because prediction must discretise the
same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedomop.federated.models.base import FederatedModel

if TYPE_CHECKING:
    from types import ModuleType

    import xgboost as xgb

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "auc",
    "tree_method": "hist",
    "eta": 0.1,
    "max_depth": 4,
    "min_child_weight": 1.0,
    "max_bin": 256,
    "seed": 0,
    "nthread": 1,
    # XGBoost's own defaults, written out: a booster the hub sends carries its training parameters, and a site
    # that continues it (bagging, cyclic) must not inherit, say, scale_pos_weight=1000 (leaves of one person)
    "scale_pos_weight": 1.0,
    "max_delta_step": 0.0,
    "gamma": 0.0,
    "lambda": 1.0,
    "alpha": 0.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "colsample_bylevel": 1.0,
    "colsample_bynode": 1.0,
    "max_leaves": 0,
    "grow_policy": "depthwise",
}


def xgboost() -> ModuleType:
    """The xgboost module, imported on first use.

    ``import xgboost`` also imports scikit-learn and SciPy (about 1.8 s of CPU). On a deployment every
    message starts a fresh ClientApp process, so a site answering ``describe`` or ``sketch`` should not pay it.
    """
    import xgboost as xgb

    return xgb


def params(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    merged = {**DEFAULT_PARAMS, **(overrides or {})}
    if not str(merged["objective"]).startswith("binary:"):  # only a binary objective reads it (XGBoost warns)
        merged.pop("scale_pos_weight")
    return merged


MIN_LEAF_KEY = "site-min-leaf-persons"
"""Set by the site itself (never taken from the hub): its small-cell threshold, the fewest persons per leaf."""
MAX_ROW_HESSIAN = 0.25
"""binary:logistic's hessian per row is p(1 - p) <= 1/4, so a leaf whose hessian sum reaches ``min_child_weight``
holds at least ``4 * min_child_weight`` rows."""


def leaf_params(min_leaf: int) -> dict[str, float]:
    """``min_child_weight`` that keeps at least ``min_leaf`` training rows (persons) in every leaf of a logistic
    booster: ``min_leaf * max hessian per row``, never below the default."""
    return {"min_child_weight": max(float(DEFAULT_PARAMS["min_child_weight"]), min_leaf * MAX_ROW_HESSIAN)}


def leaf_sizes(raw: bytes, X: np.ndarray, first_tree: int = 0) -> np.ndarray:
    """Rows of ``X`` in each leaf they reach, for the trees from ``first_tree`` on (XGBoost's ``pred_leaf``)."""
    if not raw:
        return np.zeros(0, dtype=np.int64)
    booster = load_booster(raw)
    if booster.num_boosted_rounds() <= first_tree:
        return np.zeros(0, dtype=np.int64)
    leaves = booster.predict(xgboost().DMatrix(X, missing=np.nan), pred_leaf=True)  # every tree; slice after
    leaves = leaves.reshape(len(X), -1)
    return np.concatenate(
        [np.unique(leaves[:, tree], return_counts=True)[1] for tree in range(first_tree, leaves.shape[1])]
    )


def count_small_leaves(raw: bytes, X: np.ndarray, threshold: int, first_tree: int = 0) -> int:
    """Leaves holding 1 to ``threshold - 1`` rows of ``X`` (a leaf no row reaches holds no one)."""
    sizes = leaf_sizes(raw, X, first_tree)
    return int(((sizes > 0) & (sizes < threshold)).sum())


def booster_bytes(booster: xgb.Booster) -> bytes:
    return bytes(booster.save_raw("json"))


def load_booster(raw: bytes) -> xgb.Booster:
    booster = xgboost().Booster(params={"nthread": 1})
    booster.load_model(bytearray(raw))
    return booster


def to_record(raw: bytes, edges: list[np.ndarray] | None = None) -> ArrayRecord:
    record = ArrayRecord([np.frombuffer(raw, dtype=np.uint8)])
    if edges is not None:
        record["edges"] = Array(np.concatenate(edges).astype(np.float64))
        record["edge_sizes"] = Array(np.array([len(e) for e in edges], dtype=np.int64))
    return record


def from_record(record: ArrayRecord) -> tuple[bytes, list[np.ndarray] | None]:
    raw = record["0"].numpy().tobytes()
    if "edges" not in record:
        return raw, None
    flat = record["edges"].numpy()
    sizes = record["edge_sizes"].numpy()
    return raw, np.split(flat, np.cumsum(sizes)[:-1])


def discretise(X: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """Replace each value by the global bin edge at or above it (NaN stays missing).

    Every site then holds only the global edge values, so XGBoost's per-site sketches
    find the same cut points and the federated histograms add up to the pooled ones.
    """
    out = np.array(X, dtype=np.float64, copy=True)
    for j, cuts in enumerate(edges):
        column = out[:, j]
        present = ~np.isnan(column)
        if len(cuts) == 0:
            continue
        index = np.minimum(np.searchsorted(cuts, column[present], side="left"), len(cuts) - 1)
        column[present] = cuts[index]
    return out


def predict(record: ArrayRecord, X: np.ndarray) -> np.ndarray:
    raw, edges = from_record(record)
    if not raw:
        return np.full(X.shape[0], 0.5)
    features = discretise(X, edges) if edges is not None else X
    return load_booster(raw).predict(xgboost().DMatrix(features, missing=np.nan))


def train_plain(X: np.ndarray, y: np.ndarray, rounds: int, overrides: dict[str, Any] | None = None) -> bytes:
    """An ordinary (non-federated) booster: the site-alone and pooled references."""
    xgb = xgboost()
    booster = xgb.train(params(overrides), xgb.DMatrix(X, label=y, missing=np.nan), num_boost_round=rounds)
    return booster_bytes(booster)


class XGBoostModel(FederatedModel):
    """What the three XGBoost modes share as :class:`FederatedModel`: plain training, prediction, the JSON file."""

    def train_plain(self, X: np.ndarray, y: np.ndarray, total: int, *, min_leaf: int = 0) -> ArrayRecord:
        return to_record(train_plain(X, y, total, leaf_params(min_leaf)))

    def first_new_tree(self, sent: ArrayRecord | None) -> int:
        """Where this site's trees start in its reply: the reply holds only new trees (bagging, plain)."""
        return 0

    def small_leaves(self, reply: ArrayRecord, sent: ArrayRecord | None, X: np.ndarray, threshold: int) -> int:
        raw, edges = from_record(reply)
        features = discretise(X, edges) if edges is not None else X
        return count_small_leaves(raw, features, threshold, self.first_new_tree(sent))

    def predict(self, record: ArrayRecord, X: np.ndarray) -> np.ndarray:
        return predict(record, X)

    def save(self, record: ArrayRecord, out: Path) -> Path:
        """XGBoost's JSON model, plus the global bin edges when the model was trained on them."""
        raw, edges = from_record(record)
        (out / "model.json").write_bytes(raw)
        if edges is not None:
            (out / "bin_edges.json").write_text(json.dumps([e.tolist() for e in edges]))
        return out / "model.json"

"""Federated XGBoost by cyclic training (Flower ``FedXgbCyclic``).

Method: the sites take turns; in each round one site continues boosting the
current global model on its own data for ``local_rounds`` trees and returns the
whole model, which becomes the global model for the next site in the cycle.
Equivalent to sequential boosting over the sites' data, one site at a time.
See the cyclic XGBoost training in Flower's XGBoost examples and Zhao et al.,
"Inprivate digging: enabling tree-based distributed data mining with differential
privacy" (INFOCOM 2018) for round-robin tree boosting across parties.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedXgbCyclic

from fedomop.federated.models import xgb_common
from fedomop.federated.models.base import ModelDefaults, Trained
from fedomop.federated.settings import TrainSettings
from fedomop.federated.strategies.history import History, run_rounds

NAME = "xgboost-cyclic"


def site_train(record: ArrayRecord, X: np.ndarray, y: np.ndarray, local_rounds: int, min_leaf: int = 0) -> ArrayRecord:
    """Continue boosting the global model on this site's data; reply with the whole model (the new trees with at
    least ``min_leaf`` persons per leaf, see :func:`xgb_common.leaf_params`)."""
    raw, _ = xgb_common.from_record(record)
    xgb = xgb_common.xgboost()
    dtrain = xgb.DMatrix(X, label=y, missing=np.nan)
    start = xgb_common.load_booster(raw) if raw else None
    params = xgb_common.params(xgb_common.leaf_params(min_leaf))
    booster = xgb.train(params, dtrain, num_boost_round=local_rounds, xgb_model=start)
    return xgb_common.to_record(xgb_common.booster_bytes(booster))


def server_run(grid: Grid, rounds: int, config: dict[str, Any], min_nodes: int) -> tuple[ArrayRecord, History]:
    """``rounds`` visits in site order; every site is visited ``rounds / n_sites`` times."""
    strategy = FedXgbCyclic(min_available_nodes=min_nodes)
    return run_rounds(strategy, grid, xgb_common.to_record(b""), rounds, config)


class CyclicXGBoost(xgb_common.XGBoostModel):
    """Cyclic boosting: one site per round continues the global model."""

    name = NAME
    defaults = ModelDefaults(rounds=12, local_rounds=5)
    turn_taking = True

    def server_run(
        self, grid: Any, nodes: list[int], settings: TrainSettings, config: dict[str, Any], min_sites: int
    ) -> Trained:
        model, rounds_history = server_run(grid, settings.rounds, config, min_sites)
        return Trained(model, rounds_history, settings.rounds)

    def site_train(self, record: ArrayRecord, X: np.ndarray, y: np.ndarray, config: dict[str, Any]) -> ArrayRecord:
        return site_train(record, X, y, int(config.get("local-rounds", 1)), int(config.get(xgb_common.MIN_LEAF_KEY, 0)))

    def first_new_tree(self, sent: ArrayRecord | None) -> int:
        """The reply is the whole model: this site's trees follow the ones the hub sent."""
        raw = xgb_common.from_record(sent)[0] if sent is not None else b""
        return xgb_common.load_booster(raw).num_boosted_rounds() if raw else 0

"""Federated XGBoost by tree bagging (Flower ``FedXgbBagging``).

Method: each round every site boosts ``local_rounds`` new trees on top of the
current global ensemble using only its own data and sends back just those trees;
the server appends all sites' new trees to the ensemble, whose leaf values are
then summed like a bagged forest of boosted trees. Ma et al., "Gradient-less
Federated Gradient Boosting Trees with Learnable Learning Rates" (EuroMLSys 2023),
as implemented by Flower's FedXgbBagging strategy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedXgbBagging

from fedomop.federated.models import xgb_common
from fedomop.federated.models.base import ModelDefaults, Trained
from fedomop.federated.settings import TrainSettings
from fedomop.federated.strategies.history import History, run_rounds

NAME = "xgboost-bagging"


def site_params(n_sites: int) -> dict[str, float]:
    """Each site's learning rate is divided by the number of sites: the hub adds every site's trees,
    so a round then moves the ensemble one ordinary step along the sites' averaged residuals
    instead of ``n_sites`` steps (which overshoots)."""
    return {"eta": xgb_common.DEFAULT_PARAMS["eta"] / max(n_sites, 1)}


def site_train(
    record: ArrayRecord, X: np.ndarray, y: np.ndarray, local_rounds: int, n_sites: int = 1, min_leaf: int = 0
) -> ArrayRecord:
    """Boost ``local_rounds`` trees on the global model; reply with only the new trees (at least ``min_leaf``
    persons per leaf through ``min_child_weight``, see :func:`xgb_common.leaf_params`)."""
    raw, _ = xgb_common.from_record(record)
    xgb = xgb_common.xgboost()
    dtrain = xgb.DMatrix(X, label=y, missing=np.nan)
    params = xgb_common.params({**site_params(n_sites), **xgb_common.leaf_params(min_leaf)})
    if not raw:
        booster = xgb.train(params, dtrain, num_boost_round=local_rounds)
        return xgb_common.to_record(xgb_common.booster_bytes(booster))
    booster = xgb_common.load_booster(raw)
    booster.set_param(params)
    done = booster.num_boosted_rounds()
    for iteration in range(done, done + local_rounds):
        booster.update(dtrain, iteration)
    new_trees = booster[done : done + local_rounds]
    return xgb_common.to_record(xgb_common.booster_bytes(new_trees))


def server_run(
    grid: Grid, rounds: int, config: dict[str, Any], min_nodes: int, *, n_sites: int | None = None
) -> tuple[ArrayRecord, History]:
    """Run the bagging rounds; the ensemble grows by ``local_rounds`` trees per site per round.

    ``min_nodes`` is the fewest sites a round may run with; ``n_sites`` (default ``min_nodes``)
    the sites in the study, which scales each site's learning rate."""
    config = {**config, "n-sites": n_sites or min_nodes}
    strategy = FedXgbBagging(min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes, min_available_nodes=min_nodes)
    _, rounds_history = run_rounds(strategy, grid, xgb_common.to_record(b""), rounds, config)
    return xgb_common.to_record(strategy.current_bst or b""), rounds_history  # the ensemble, not the last reply


class BaggingXGBoost(xgb_common.XGBoostModel):
    """Tree bagging: every site adds ``local_rounds`` trees per round."""

    name = NAME
    defaults = ModelDefaults(rounds=30, local_rounds=2)

    def server_run(
        self, grid: Any, nodes: list[int], settings: TrainSettings, config: dict[str, Any], min_sites: int
    ) -> Trained:
        model, rounds_history = server_run(grid, settings.rounds, config, min_sites, n_sites=len(nodes))
        return Trained(model, rounds_history, settings.rounds)

    def site_train(self, record: ArrayRecord, X: np.ndarray, y: np.ndarray, config: dict[str, Any]) -> ArrayRecord:
        return site_train(
            record,
            X,
            y,
            int(config.get("local-rounds", 1)),
            int(config.get("n-sites", 1)),
            int(config.get(xgb_common.MIN_LEAF_KEY, 0)),
        )

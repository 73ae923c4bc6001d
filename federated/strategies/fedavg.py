"""Federated averaging of the MLP (Flower ``FedAvg``).

Method: each round every site trains the global network for a few local epochs
and the hub replaces it by the example-weighted average of the sites' weights.
McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedomop.federated.strategies.history import History, run_rounds

NAME = "fedavg"


def server_run(
    grid: Grid, initial: ArrayRecord, rounds: int, config: dict[str, Any], min_nodes: int
) -> tuple[ArrayRecord, History]:
    strategy = FedAvg(min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes, min_available_nodes=min_nodes)
    return run_rounds(strategy, grid, initial, rounds, config)

"""FedProx for the MLP (Flower ``FedProx``): FedAvg plus a proximal term at each site.

Method: the hub averages like FedAvg and sends ``proximal-mu`` with every training
round; each site minimises its loss plus ``mu/2 ||w - w_global||^2``, which bounds
how far non-IID sites pull the model in one round. Li et al., "Federated
Optimization in Heterogeneous Networks", MLSys 2020.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedProx

from fedomop.federated.strategies.history import History, run_rounds

NAME = "fedprox"


def server_run(
    grid: Grid, initial: ArrayRecord, rounds: int, config: dict[str, Any], min_nodes: int, *, mu: float = 0.1
) -> tuple[ArrayRecord, History]:
    strategy = FedProx(
        min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes, min_available_nodes=min_nodes, proximal_mu=mu
    )
    return run_rounds(strategy, grid, initial, rounds, config)

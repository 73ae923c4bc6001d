"""A small PyTorch multilayer perceptron for tabular risk prediction, trained federatedly.

Method: a two-hidden-layer ReLU network on standardised features plus
missing-value indicators, trained by local SGD (Adam) at each site and averaged by
FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017) or FedProx (Li et al., "Federated Optimization
in Heterogeneous Networks", MLSys 2020), whose proximal term ``mu/2 ||w - w_global||^2``
keeps non-IID sites from drifting.

Standardisation is federated too: each site sends per-feature sum, sum of squares
and count (``query.moments``; a feature seen in fewer than ``small_cell`` persons is
withheld), the hub forms the global mean and standard deviation, and they travel
inside the model's ArrayRecord (``norm.mean``/``norm.std``) so that any site can
evaluate any model.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

from fedomop.federated.errors import PolicyError
from fedomop.federated.models.base import FederatedModel, ModelDefaults, Trained, set_phase
from fedomop.federated.settings import TrainSettings

NAME = "mlp"
HIDDEN = (32, 16)
NORM_KEYS = ("norm.mean", "norm.std")


class RiskMLP(nn.Module):
    def __init__(self, n_inputs: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_inputs, HIDDEN[0]),
            nn.ReLU(),
            nn.Linear(HIDDEN[0], HIDDEN[1]),
            nn.ReLU(),
            nn.Linear(HIDDEN[1], 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


# -- standardisation -------------------------------------------------------------------------------
def site_moments(X: np.ndarray, small_cell: int) -> ArrayRecord:
    present = ~np.isnan(X)
    counts = present.sum(axis=0).astype(np.int64)
    values = np.where(present, X, 0.0)
    sums, squares = values.sum(axis=0), (values**2).sum(axis=0)
    small = counts < small_cell
    counts[small], sums[small], squares[small] = 0, 0.0, 0.0
    return ArrayRecord({"sum": Array(sums), "sumsq": Array(squares), "count": Array(counts)})


def global_moments(replies: list[ArrayRecord]) -> tuple[np.ndarray, np.ndarray]:
    total = np.asarray(sum(r["count"].numpy() for r in replies), dtype=np.float64)
    sums = sum(r["sum"].numpy() for r in replies)
    squares = sum(r["sumsq"].numpy() for r in replies)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(total > 0, sums / np.maximum(total, 1), 0.0)
        var = np.where(total > 1, (squares - total * mean**2) / np.maximum(total - 1, 1), 1.0)
    std = np.sqrt(np.maximum(var, 0.0))
    return mean, np.where(std > 1e-9, std, 1.0)


def local_moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return global_moments([site_moments(X, small_cell=1)])


def prepare(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """Standardised values (missing -> the global mean, i.e. 0) next to missing indicators."""
    missing = np.isnan(X)
    scaled = np.where(missing, 0.0, (np.nan_to_num(X) - mean) / std)
    return torch.tensor(np.hstack([scaled, missing.astype(np.float64)]), dtype=torch.float32)


# -- model <-> ArrayRecord -------------------------------------------------------------------------
def initial_record(n_features: int, mean: np.ndarray, std: np.ndarray, seed: int = 0) -> ArrayRecord:
    torch.manual_seed(seed)
    return to_record(RiskMLP(2 * n_features), mean, std)


def to_record(model: RiskMLP, mean: np.ndarray, std: np.ndarray) -> ArrayRecord:
    record = ArrayRecord(model.state_dict())
    record[NORM_KEYS[0]] = Array(np.asarray(mean, dtype=np.float64))
    record[NORM_KEYS[1]] = Array(np.asarray(std, dtype=np.float64))
    return record


def from_record(record: ArrayRecord) -> tuple[RiskMLP, np.ndarray, np.ndarray]:
    mean, std = record[NORM_KEYS[0]].numpy(), record[NORM_KEYS[1]].numpy()
    state = OrderedDict((k, torch.from_numpy(v.numpy().copy())) for k, v in record.items() if k not in NORM_KEYS)
    model = RiskMLP(2 * len(mean))
    model.load_state_dict(state)
    return model, mean, std


# -- training and prediction -----------------------------------------------------------------------
def site_train(
    record: ArrayRecord,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    mu: float = 0.0,
    lr: float = 0.01,
    seed: int = 0,
    deadline: float | None = None,
) -> ArrayRecord:
    """Local epochs of Adam on this site's rows; ``mu > 0`` adds FedProx's proximal term.

    ``deadline`` (``time.monotonic()`` value): the site's wall-time budget for this message;
    past it training stops with a PolicyError, so one request cannot occupy the site.
    """
    model, mean, std = from_record(record)
    global_weights = [p.detach().clone() for p in model.parameters()]
    inputs, target = prepare(X, mean, std), torch.tensor(y, dtype=torch.float32)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(target), generator=generator).split(64):
            if deadline is not None and time.monotonic() > deadline:
                raise PolicyError(
                    "training stopped: the message exceeded the site's wall-time budget",
                    where="site policy: limits.wall_time_s",
                    fix="ask for fewer epochs per round, or ask the site for a larger wall_time_s",
                )
            optimiser.zero_grad()
            loss = loss_fn(model(inputs[batch]), target[batch])
            if mu > 0:
                loss = loss + mu / 2 * sum(
                    ((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_weights, strict=True)
                )
            loss.backward()
            optimiser.step()
    return to_record(model, mean, std)


def predict(record: ArrayRecord, X: np.ndarray) -> np.ndarray:
    model, mean, std = from_record(record)
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(prepare(X, mean, std))).numpy().astype(np.float64)


def train_plain(X: np.ndarray, y: np.ndarray, *, epochs: int, seed: int = 0) -> ArrayRecord:
    """A model on one data set (a site alone, or the pooled reference), with that data's own moments."""
    mean, std = local_moments(X)
    return site_train(initial_record(X.shape[1], mean, std, seed), X, y, epochs=epochs, seed=seed)


class MLP(FederatedModel):
    """The MLP, averaged by FedAvg or FedProx (setting ``strategy``), on federated standardisation."""

    name = NAME
    defaults = ModelDefaults(rounds=15, local_rounds=1)

    def server_run(
        self, grid: Any, nodes: list[int], settings: TrainSettings, config: dict[str, Any], min_sites: int
    ) -> Trained:
        """Agree the global moments (``query.moments``), then the strategy's rounds (+1 Flower round: moments)."""
        from flwr.app import ConfigRecord, Message, RecordDict

        from fedomop.federated.strategies import fedavg, fedprox

        set_phase(grid, "moments")
        messages = [
            Message(RecordDict({"config": ConfigRecord(config)}), dst_node_id=n, message_type="query.moments")
            for n in nodes
        ]
        replies = [r for r in grid.send_and_receive(messages) if not r.has_error()]
        mean, std = global_moments([r.content.array_records["moments"] for r in replies])
        initial = initial_record(len(mean), mean, std)
        if settings.strategy == fedprox.NAME:
            model, rounds_history = fedprox.server_run(
                grid, initial, settings.rounds, config, min_sites, mu=settings.proximal_mu
            )
        else:
            model, rounds_history = fedavg.server_run(grid, initial, settings.rounds, config, min_sites)
        return Trained(model, rounds_history, settings.rounds + 1)

    def site_train(self, record: ArrayRecord, X: np.ndarray, y: np.ndarray, config: dict[str, Any]) -> ArrayRecord:
        mu = float(config.get("proximal-mu", 0.0))
        seed = int(config.get("server-round", 0))
        deadline = config.get("deadline")
        return site_train(
            record,
            X,
            y,
            epochs=int(config["epochs"]),
            mu=mu,
            seed=seed,
            deadline=float(deadline) if deadline is not None else None,
        )

    def train_plain(self, X: np.ndarray, y: np.ndarray, total: int, *, min_leaf: int = 0) -> ArrayRecord:
        return train_plain(X, y, epochs=total)  # no leaves (min_leaf is for tree models)

    def predict(self, record: ArrayRecord, X: np.ndarray) -> np.ndarray:
        return predict(record, X)

    def save(self, record: ArrayRecord, out: Path) -> Path:
        """A PyTorch state dict with the global standardisation next to it."""
        net, mean, std = from_record(record)
        path = out / "model.pt"
        torch.save({"state_dict": net.state_dict(), "mean": mean, "std": std}, path)
        return path

    def local_total(self, settings: TrainSettings) -> int:
        return settings.rounds * settings.epochs

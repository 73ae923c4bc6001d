"""The one interface every federated model implements (:class:`FederatedModel`).

The hub, the sites and the runner never ask *which* model runs; they look it up in
:mod:`fedomop.federated.models.registry` and call these methods. A model file holds the
method (docstring: what it does, after which paper), its site-side and hub-side steps, and
one subclass of :class:`FederatedModel` that the registry names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord

from fedomop.federated.settings import TrainSettings
from fedomop.federated.strategies.history import History


@dataclass(frozen=True)
class ModelDefaults:
    """What ``0`` means for this model's ``rounds`` and ``local_rounds`` settings."""

    rounds: int
    local_rounds: int = 1


@dataclass
class Trained:
    """What a hub-side training returns: the model, per-round history and Flower rounds used."""

    model: ArrayRecord
    history: History
    flower_rounds: int


class FederatedModel(ABC):
    """A federated training method: hub side (``server_run``), site side (``site_train``), use (``predict``, ``save``)."""

    name: ClassVar[str]
    defaults: ClassVar[ModelDefaults]
    turn_taking: ClassVar[bool] = False  # one site per round (cyclic): rounds may not wait for every site
    needs_every_site: ClassVar[bool] = False  # an allreduce over all sites at once (histogram XGBoost)

    @abstractmethod
    def server_run(
        self, grid: Any, nodes: list[int], settings: TrainSettings, config: dict[str, Any], min_sites: int
    ) -> Trained:
        """Train at the hub over ``grid`` with ``nodes``; rounds go on with at least ``min_sites``."""

    @abstractmethod
    def site_train(self, record: ArrayRecord, X: np.ndarray, y: np.ndarray, config: dict[str, Any]) -> ArrayRecord:
        """One site's step of a round: from the hub's ``record`` and this site's rows to the reply."""

    @abstractmethod
    def train_plain(self, X: np.ndarray, y: np.ndarray, total: int, *, min_leaf: int = 0) -> ArrayRecord:
        """An ordinary model on one data set (a site alone, or the pooled reference) with ``total`` trees/epochs;
        a tree model keeps at least ``min_leaf`` persons in every leaf where it can (a site's small-cell threshold).
        """

    def small_leaves(self, reply: ArrayRecord, sent: ArrayRecord | None, X: np.ndarray, threshold: int) -> int:
        """How many leaves this site grew (in ``reply``, on top of the hub's ``sent`` model) hold 1 to
        ``threshold - 1`` of the rows of ``X``: a site releases no model with such a leaf. 0 for models without
        leaves."""
        return 0

    @abstractmethod
    def predict(self, record: ArrayRecord, X: np.ndarray) -> np.ndarray:
        """Probabilities of the outcome for the rows of ``X``."""

    @abstractmethod
    def save(self, record: ArrayRecord, out: Path) -> Path:
        """Write the model file(s) into ``out``; returns the model file."""

    def local_total(self, settings: TrainSettings) -> int:
        """Trees (or epochs) a site-alone model gets: as many as one site contributes to federated training."""
        return settings.rounds * settings.local_rounds

    def resolve(self, settings: TrainSettings) -> TrainSettings:
        """``settings`` with this model's defaults where they say 0."""
        return settings.with_defaults(self.defaults.rounds, self.defaults.local_rounds)


def set_phase(grid: Any, label: str) -> None:
    """Label the traffic that follows (a :class:`~fedomop.federated.transport.CountingGrid` counts bytes per phase)."""
    grid.phase = label

"""Model name -> :class:`~fedomop.federated.models.base.FederatedModel`, imported on first use.

The only place that knows the models. Entries are ``"module:Class"`` strings so that looking
up ``xgboost-hist`` never imports PyTorch (the MLP), and listing the names imports nothing.
A new model is one file under ``models/`` plus one :func:`register` call.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

from fedomop.federated.errors import SettingsError

if TYPE_CHECKING:
    from fedomop.federated.models.base import FederatedModel

_MODELS: dict[str, str] = {}


def register(name: str, target: str) -> None:
    """Register ``target`` (``"package.module:Class"``) under ``name``; a name is registered once."""
    if _MODELS.get(name, target) != target:
        raise ValueError(f"model {name!r} is already registered as {_MODELS[name]}")
    _MODELS[name] = target


def names() -> tuple[str, ...]:
    """The registered model names, in registration order (the CLI lists them)."""
    return tuple(_MODELS)


@cache
def get(name: str) -> FederatedModel:
    """The model called ``name``; an unknown name is a SettingsError listing the known ones."""
    if name not in _MODELS:
        raise SettingsError(f"unknown model {name!r}", where="--model", fix=f"choose one of {', '.join(_MODELS)}")
    module, _, attribute = _MODELS[name].partition(":")
    model: FederatedModel = getattr(importlib.import_module(module), attribute)()
    return model


register("xgboost-hist", "fedomop.federated.models.xgb_histogram:HistogramXGBoost")
register("xgboost-bagging", "fedomop.federated.models.xgb_bagging:BaggingXGBoost")
register("xgboost-cyclic", "fedomop.federated.models.xgb_cyclic:CyclicXGBoost")
register("mlp", "fedomop.federated.models.mlp:MLP")

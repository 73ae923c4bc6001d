"""Federated models, one per file, behind one interface (:mod:`.base`) and a registry (:mod:`.registry`)."""

from fedomop.federated.models.registry import names

MODEL_NAMES = names()

"""Typed training settings: the one run configuration besides the study and the model's name.

A study's knobs used to travel as a loose ``**options`` dict and were retyped in the Flower app's
``pyproject.toml``. Now they are one frozen dataclass: every field has a default and bounds, an
unknown key is refused with its name (a typo must not silently fall back to a default), and the
serialized settings carry a stable digest, so the hub can prove that what it runs is what the
researcher asked for (``fedomop train --federation`` sends ``settings`` + ``settings-digest``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from fedomop.federated.errors import SettingsError

STRATEGIES = ("fedavg", "fedprox")


def setting(
    default: Any, low: float | None = None, high: float | None = None, *, choices: tuple = (), doc: str = ""
) -> Any:
    return field(default=default, metadata={"low": low, "high": high, "choices": choices, "doc": doc})


@dataclass(frozen=True)
class TrainSettings:
    """How to train (not what: that is the study). ``0`` for rounds/local_rounds means the model's default."""

    rounds: int = setting(0, 0, 10_000, doc="federated rounds; 0: the model's default")
    local_rounds: int = setting(0, 0, 1_000, doc="trees per site per round (bagging/cyclic); 0: the model's default")
    epochs: int = setting(2, 1, 1_000, doc="MLP local epochs per round")
    strategy: str = setting("fedavg", choices=STRATEGIES, doc="MLP aggregation")
    proximal_mu: float = setting(0.1, 0.0, 100.0, doc="FedProx proximal weight")
    min_nodes: int = setting(2, 1, 10_000, doc="sites to wait for before the first round")
    min_sites: int = setting(0, 0, 10_000, doc="fewest sites a round may go on with; 0: all that answered")
    wait_for_nodes_s: float = setting(120.0, 0.0, 86_400.0, doc="seconds to wait for min_nodes")
    round_timeout: float = setting(600.0, 1.0, 86_400.0, doc="seconds a round waits for its sites")
    compare_local: bool = setting(True, doc="also train and evaluate each site alone")
    requester: str = setting("hub", doc="who asks, as the site policies name it")
    xgb_host: str = setting("127.0.0.1", doc="address the sites dial for histogram XGBoost's allreduce")
    certs: str = setting("", doc="fedomop certs create folder: histogram XGBoost's allreduce then requires TLS")
    out: str = setting("out/federated", doc="folder for result.json and the model (at the hub)")

    def __post_init__(self) -> None:
        for spec in fields(self):
            object.__setattr__(self, spec.name, _checked(spec, getattr(self, spec.name)))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainSettings:
        """Settings from CLI options or a run config; ``-`` and ``_`` are the same in keys."""
        known = {spec.name for spec in fields(cls)}
        normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
        for key in normalised:
            if key not in known:
                raise SettingsError(
                    f"unknown training setting {key!r}",
                    where="training settings",
                    fix=f"use one of {', '.join(sorted(known))}",
                )
        return cls(**normalised)

    @classmethod
    def from_json(cls, text: str, digest: str | None = None) -> TrainSettings:
        """The settings a hub received; with ``digest``, refused unless they are exactly what was sent."""
        try:
            values = json.loads(text) if text else {}
        except json.JSONDecodeError as exc:
            raise SettingsError(f"settings are not JSON: {exc}", where="run config 'settings'") from exc
        if not isinstance(values, dict):
            raise SettingsError("settings must be a JSON object", where="run config 'settings'")
        settings = cls.from_mapping(values)
        if digest and settings.digest() != digest:
            raise SettingsError(
                f"settings digest {settings.digest()} differs from the digest sent, {digest}",
                where="run config 'settings-digest'",
                fix="submit the run again with fedomop train --federation (it writes both)",
            )
        return settings

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the same settings always give the same text."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """SHA-256 of :meth:`to_json`, 16 hex digits: names these settings in logs, results and model cards."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def with_defaults(self, rounds: int, local_rounds: int) -> TrainSettings:
        """The model's defaults where the researcher left 0."""
        return replace(self, rounds=self.rounds or rounds, local_rounds=self.local_rounds or local_rounds)


def _checked(spec: Any, value: Any) -> Any:
    """The value as the field's type, within its bounds; else a SettingsError naming the setting."""
    kind = type(spec.default)
    name = spec.name
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise SettingsError(
            f"setting {name!r} must be {kind.__name__}, got {value!r}",
            where="training settings",
            fix=f"{name}: {spec.metadata['doc']}",
        )
    low, high, choices = spec.metadata["low"], spec.metadata["high"], spec.metadata["choices"]
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingsError(
            f"setting {name!r} = {value!r} is outside {low}..{high}",
            where="training settings",
            fix=f"{name}: {spec.metadata['doc']}",
        )
    if choices and value not in choices:
        raise SettingsError(
            f"setting {name!r} = {value!r} is not one of {', '.join(choices)}",
            where="training settings",
            fix=f"{name}: {spec.metadata['doc']}",
        )
    return value

"""Typed training settings: the one run configuration besides the study and the model's name.

A study's knobs used to travel as a loose ``**options`` dict and were retyped in the Flower app's
``pyproject.toml``. Now they are one frozen dataclass: every field has a default and bounds, an
unknown key is refused with its name (a typo must not silently fall back to a default), and the
serialized settings carry a stable digest, so the hub can prove that what it runs is what the
researcher asked for (``fedomop train --federation`` sends ``settings`` + ``settings-digest``).

What only the hub operator decides -- where histogram XGBoost's allreduce listens, whether it needs mutual TLS,
where the hub writes a run's outputs -- is not a training setting: :class:`HubConfig` reads it from the hub's own
environment (``fedomop hub start`` sets it for the SuperLink and so for every ServerApp), never from a run config.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
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
    out: str = setting(
        "out/federated",
        doc="folder for result.json and the model; on a deployed hub a relative name under the hub's run-output folder",
    )

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


# ---- the hub operator's own configuration -----------------------------------------------------------------

XGB_HOST_ENV = "FEDOMOP_XGB_HOST"
"""The address histogram XGBoost's allreduce relay listens on and the sites dial (``fedomop hub start --host``)."""
XGB_CERTS_ENV = "FEDOMOP_XGB_CERTS"
"""``fedomop certs create`` folder: the allreduce server then requires mutual TLS (``fedomop hub start --certs``)."""
RUN_OUTPUT_ENV = "FEDOMOP_RUN_OUTPUT"
"""The hub's run-output folder; a run's ``out`` is a relative name under it (default ``$FLWR_HOME/fedomop-runs``)."""
OUTPUT_FOLDER = "fedomop-runs"


def is_wildcard(host: str) -> bool:
    """Whether binding ``host`` listens on every interface (``0.0.0.0``, ``::``, ``0``, ``*``, empty...)."""
    bare = host.strip().strip("[]")
    if bare in ("", "*"):
        return True
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(bare)
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:0.0.0.0 is 0.0.0.0 on a dual-stack socket
        return address.is_unspecified or (mapped is not None and mapped.is_unspecified)
    with contextlib.suppress(OSError):  # the spellings inet_aton reads as 0.0.0.0 ("0", "0.0", "00")
        return socket.inet_aton(bare) == bytes(4)
    return False


def refuse_wildcard_host(host: str, where: str) -> str:
    """``host`` unless it is a wildcard: fedomop never listens on every interface at once."""
    if is_wildcard(host):
        raise SettingsError(
            f"{host!r} would listen on every interface of this machine",
            where=where,
            fix="pass the one address the sites and researchers reach (e.g. the hub's LAN IP), or 127.0.0.1",
        )
    return host


def output_name(out: str) -> PurePosixPath:
    """A run's ``out`` on a deployed hub: a relative name, without ``..``, ``.``, backslashes or a drive."""
    name = PurePosixPath(out)
    if not out.strip() or "\\" in out or ":" in out or name.is_absolute() or any(p in ("..", ".") for p in name.parts):
        raise SettingsError(
            f"setting 'out' = {out!r} is not a relative folder name",
            where="training settings (deployed hub)",
            fix="on a hub, outputs go under the hub's run-output folder: give a relative name such as 'my-study'",
        )
    return name


@dataclass(frozen=True)
class HubConfig:
    """What the hub operator decides, from the hub's environment (never from a researcher's run config)."""

    xgb_host: str = "127.0.0.1"
    certs: str = ""
    output_root: str = ""

    def __post_init__(self) -> None:
        refuse_wildcard_host(self.xgb_host, f"hub: {XGB_HOST_ENV}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HubConfig:
        env = os.environ if environ is None else environ
        home = env.get("FLWR_HOME") or str(Path.home() / ".flwr")
        root = env.get(RUN_OUTPUT_ENV) or str(Path(home) / OUTPUT_FOLDER)
        return cls(env.get(XGB_HOST_ENV) or "127.0.0.1", env.get(XGB_CERTS_ENV, ""), str(Path(root).resolve()))

    def env(self) -> dict[str, str]:
        """The environment that gives a SuperLink's ServerApps this configuration."""
        out = {XGB_HOST_ENV: self.xgb_host, XGB_CERTS_ENV: self.certs}
        return {**out, RUN_OUTPUT_ENV: self.output_root} if self.output_root else out

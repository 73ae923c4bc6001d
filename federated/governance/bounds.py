"""Bounded, validated run settings: every run_config key typed and capped by the site policy.

A run's settings come from whoever submits the run, so they are untrusted input:
``rounds=10**9`` or ``epochs=10**7`` occupies every site for days, ``local-rounds=-3``
crashed the hub, and an ``out`` of ``/etc/...`` writes wherever the hub process may.
:func:`check_settings` refuses unknown keys (a typo must not silently fall back to a
default) and any value outside its type or the policy's :class:`SettingsLimits`, with one
error naming every offending key, its bound and where the bound comes from.

The same check runs on the hub (over Flower's run config) and at each site (over the
settings a message carries), so a hub that skips it still cannot push a site past its limits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance.policy import SettingsLimits, SitePolicy

Limit = Callable[[SettingsLimits], float]


@dataclass(frozen=True)
class Rule:
    """One key: its type, its lowest value, and its highest (a number, or read from the policy)."""

    kind: type
    low: float | None = None
    high: float | Limit | None = None
    choices: tuple[str, ...] = ()

    def ceiling(self, limits: SettingsLimits) -> float | None:
        return self.high(limits) if callable(self.high) else self.high


_MODELS = ("xgboost-hist", "xgboost-bagging", "xgboost-cyclic", "mlp")  # the models' NAME constants

# Keys a researcher may set in run_config (Flower spells them with hyphens); the ceiling
# of the compute keys is the site's.  0 means "the model's default" for rounds/local-rounds.
RUN_CONFIG: dict[str, Rule] = {
    "study": Rule(str),
    "model": Rule(str, choices=_MODELS),
    "rounds": Rule(int, 0, lambda lim: lim.max_rounds),
    "epochs": Rule(int, 1, lambda lim: lim.max_epochs),
    "local-rounds": Rule(int, 0, lambda lim: lim.max_local_rounds),
    "max-depth": Rule(int, 1, lambda lim: lim.max_depth),
    "strategy": Rule(str, choices=("fedavg", "fedprox")),
    "proximal-mu": Rule(float, 0.0, 100.0),
    "min-nodes": Rule(int, 1, 1000),
    "min-sites": Rule(int, 0, 1000),
    "round-timeout": Rule(float, 1.0, lambda lim: lim.wall_time_s),
    "wait-for-nodes-s": Rule(float, 0.0, 86400.0),
    "compare-local": Rule(bool),
    "out": Rule(str),
    "requester": Rule(str),
}

# Keys the hub adds to each message on top of the run's own settings.
MESSAGE_CONFIG: dict[str, Rule] = {
    **RUN_CONFIG,
    "local-total": Rule(int, 1, lambda lim: lim.max_rounds * max(lim.max_epochs, lim.max_local_rounds)),
    "server-round": Rule(int, 0, lambda lim: lim.max_rounds),
    "n-sites": Rule(int, 1, 1000),
    "server-address": Rule(str),
    "world-size": Rule(int, 1, 1000),
    "rank": Rule(int, 0, 1000),
    "xgb-tls": Rule(bool),
    "xgb-timeout": Rule(int, 1, lambda lim: lim.wall_time_s),
}


def _limits(policy: SitePolicy | SettingsLimits | None) -> SettingsLimits:
    if isinstance(policy, SettingsLimits):
        return policy
    return policy.limits if policy is not None else SettingsLimits()


def _typed(key: str, value: Any, rule: Rule) -> tuple[Any, str | None]:
    """The value converted to the rule's type, or a problem text (never the value's own size class)."""
    if rule.kind is bool:
        if isinstance(value, bool):
            return value, None
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true", None
        return None, f"{key}: must be true or false"
    if rule.kind is str:
        return (str(value), None) if isinstance(value, str) else (None, f"{key}: must be text")
    if isinstance(value, bool):
        return None, f"{key}: must be a number, not true/false"
    try:
        number = rule.kind(value)
    except (TypeError, ValueError):
        return None, f"{key}: must be {'an integer' if rule.kind is int else 'a number'}"
    if rule.kind is int and isinstance(value, float) and not value.is_integer():
        return None, f"{key}: must be an integer"
    if isinstance(number, float) and not math.isfinite(number):
        return None, f"{key}: must be finite"
    return number, None


def _bounded(key: str, value: Any, rule: Rule, limits: SettingsLimits) -> str | None:
    if rule.choices and value not in rule.choices:
        return f"{key}: {value!r} is not one of {', '.join(rule.choices)}"
    if rule.kind is str and key == "out":
        path = PurePosixPath(value)
        if ".." in path.parts:
            return "out: must not climb out of its folder with '..'"
    if rule.kind not in (int, float):
        return None
    high = rule.ceiling(limits)
    if rule.low is not None and value < rule.low:
        return f"{key}: must be at least {rule.low:g}"
    if high is not None and value > high:
        source = "the site policy's limits" if callable(rule.high) else "fedomop"
        return f"{key}: must be at most {high:g} (set by {source})"
    return None


def check_settings(
    run_config: Mapping[str, Any],
    policy: SitePolicy | SettingsLimits | None = None,
    *,
    rules: Mapping[str, Rule] = RUN_CONFIG,
    where: str = "run config",
) -> dict[str, Any]:
    """Typed copy of ``run_config``; PolicyError naming every unknown key and out-of-bound value.

    ``policy`` supplies the ceilings (a site policy, its ``limits``, or None for fedomop's
    defaults). Keys may be spelled with hyphens or underscores.
    """
    limits = _limits(policy)
    checked: dict[str, Any] = {}
    problems: list[str] = []
    for raw_key, raw_value in run_config.items():
        key = str(raw_key).replace("_", "-")
        rule = rules.get(key)
        if rule is None:
            problems.append(f"{raw_key}: unknown setting")
            continue
        value, problem = _typed(key, raw_value, rule)
        problem = problem or _bounded(key, value, rule, limits)
        if problem:
            problems.append(problem)
        else:
            checked[key] = value
    if problems:
        raise PolicyError(
            "settings refused: " + "; ".join(problems),
            where=where,
            fix=f"use only these settings, within the site's limits: {', '.join(sorted(rules))}",
        )
    return checked


def check_message_config(config: Mapping[str, Any], policy: SitePolicy | None) -> dict[str, Any]:
    """The site-side check of one message's settings, against this site's own limits."""
    return check_settings(config, policy, rules=MESSAGE_CONFIG, where="settings sent by the hub")

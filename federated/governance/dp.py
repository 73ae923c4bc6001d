"""Differential privacy in the deployed ClientApp: DP-FedAvg at the site, with a kept budget.

Method: per-update clipping with Gaussian noise, DP-FedAvg (McMahan, Ramage, Talwar,
Zhang 2018, "Learning differentially private recurrent language models"), applied by
each site to its own update because the hub is not trusted with it: the update
``local - global`` of the trainable weights is clipped to L2 norm ``clipping_norm`` (C)
and N(0, (z*C)^2) noise is added to every coordinate. The clipped update's sensitivity
to *any* change of the site's data is C, so the guarantee covers every person at the site
(and the site as a whole). Not per-example DP-SGD: gradients are not clipped per example.

Accounting: each noisy update is one Gaussian mechanism with noise multiplier z (no
subsampling: q = 1); releases compose under Google's ``dp-accounting`` RDP accountant.
``z`` is calibrated so that the number of releases the policy plans for (``releases``,
default the site's ``limits.max_rounds``) spends at most ``epsilon`` at ``delta``, unless
the policy fixes ``noise_multiplier``. A ledger next to the audit log
(``<audit_log>.dp_budget.json``) keeps every release per study; a release that would take
the total past ``epsilon`` is refused, so a study cannot outspend its budget over many runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedomop.federated.errors import PolicyError


def _accountant(orders: Iterable[float] | None = None) -> Any:
    from dp_accounting.rdp import RdpAccountant

    return RdpAccountant(list(orders)) if orders is not None else RdpAccountant()


def epsilon_spent(
    releases: Iterable[tuple[float, int]], delta: float, *, q: float = 1.0, orders: Iterable[float] | None = None
) -> float:
    """epsilon at ``delta`` of composed Gaussian releases ``(noise multiplier, count)``, sampled with ``q``."""
    from dp_accounting import dp_event

    accountant = _accountant(orders)
    for multiplier, count in releases:
        event: Any = dp_event.GaussianDpEvent(multiplier)
        if q < 1.0:
            event = dp_event.PoissonSampledDpEvent(q, event)
        accountant.compose(event, int(count))
    return float(accountant.get_epsilon(delta))


def calibrate(epsilon: float, delta: float, releases: int) -> float:
    """The smallest noise multiplier for which ``releases`` Gaussian releases spend at most ``epsilon``."""
    import dp_accounting

    return float(
        dp_accounting.calibrate_dp_mechanism(
            _accountant,
            lambda z: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), releases),
            epsilon,
            delta,
        )
    )


def clip_and_noise(
    base: ArrayRecord,
    local: ArrayRecord,
    *,
    clip: float,
    multiplier: float,
    rng: np.random.Generator,
    skip: Iterable[str] = (),
) -> tuple[ArrayRecord, float]:
    """``base + clip(local - base) + noise`` over every array but ``skip``; returns it and the update's norm."""
    skipped = set(skip)
    keys = [k for k in local if k not in skipped]
    updates = {k: local[k].numpy().astype(np.float64) - base[k].numpy().astype(np.float64) for k in keys}
    norm = float(np.sqrt(sum(float(np.sum(u**2)) for u in updates.values())))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    out = ArrayRecord()
    for key in local:
        if key in skipped:
            out[key] = local[key]
            continue
        value = base[key].numpy().astype(np.float64) + updates[key] * scale
        value = value + rng.normal(0.0, multiplier * clip, size=value.shape)
        out[key] = Array(value.astype(local[key].numpy().dtype))
    return out, norm


# -- the site's budget ledger --------------------------------------------------------------------------
def _ledger(policy: Any) -> Path:
    from fedomop.federated.governance.auditlog import beside

    return beside(policy.audit_log, ".dp_budget.json")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def multiplier_for(policy: Any, settings: Any) -> float:
    """The policy's fixed noise multiplier, or one calibrated to its epsilon over its planned releases."""
    if settings.noise_multiplier is not None:
        return float(settings.noise_multiplier)
    return calibrate(settings.epsilon, settings.delta, settings.releases or policy.limits.max_rounds)


def spent(policy: Any, study: str, delta: float) -> float:
    """Total epsilon this study has spent at this site (0 before any release)."""
    releases = [tuple(r) for r in _load(_ledger(policy)).get(study, [])]
    return epsilon_spent(releases, delta) if releases else 0.0


def spend(policy: Any, study: str, multiplier: float, *, requester: str, app_hash: str) -> dict[str, float]:
    """Book one release (refused with PolicyError when it would exceed the budget); audit it."""
    from fedomop.federated.governance.auditlog import updating
    from fedomop.federated.governance.enforce import audit

    settings = policy.studies[study].differential_privacy
    path = _ledger(policy)
    with updating(path) as ledger:
        releases = [tuple(r) for r in ledger.get(study, [])]
        after = epsilon_spent([*releases, (multiplier, 1)], settings.delta)
        if after > settings.epsilon * (1 + 1e-9):
            before = epsilon_spent(releases, settings.delta) if releases else 0.0
            reason = f"differential privacy budget spent: epsilon {before:.3f} of {settings.epsilon:g} used"
            audit(policy, requester=requester, study=study, app_hash=app_hash, action="train", outcome="refused",
                  sent={}, reason=reason)  # fmt: skip
            raise PolicyError(
                f"site {policy.site!r} refused study {study!r}: {reason}; one more update would reach {after:.3f}",
                where=f"{path}",
                fix="the study's budget at this site is used up; the site may approve a new budget (a new study)",
            )
        ledger[study] = [*([list(r) for r in releases]), [multiplier, 1]]
    record = {
        "epsilon_round": epsilon_spent([(multiplier, 1)], settings.delta),
        "epsilon_total": after,
        "delta": settings.delta,
        "noise_multiplier": multiplier,
        "clipping_norm": settings.clipping_norm,
    }
    audit(policy, requester=requester, study=study, app_hash=app_hash, action="dp-release", outcome="booked",
          sent={}, **record)  # fmt: skip
    return record


def refuse_non_dp_model(policy: Any, study: str, model: str) -> None:
    """Under a DP policy only models whose update can be clipped and noised (the MLP) may run."""
    raise PolicyError(
        f"site {policy.site!r} requires differential privacy for study {study!r}, and {model!r} cannot be made "
        "differentially private here (its trees and split thresholds are sent as they are)",
        where=f"{policy.source}: studies.{study}.differential_privacy",
        fix="train the MLP (--model mlp), or ask the site to drop differential_privacy for this study",
    )

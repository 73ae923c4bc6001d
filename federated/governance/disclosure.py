"""Release control on the aggregates a site sends: moments, quantile sketches, cohorts.

Issue 19 showed three ways small groups leaked although every count passed the
small-cell check: a feature's ``moments.sum`` over 9 persons is exact; a 256-level
quantile sketch of 9 values gives back every value (the interpolated curve's knots are
the persons' values); and two studies differing only in ``max_age`` give the persons
over 90 by subtraction. The rules here:

- moments: a feature observed in fewer persons than the site's release minimum
  (``min_cohort_size``) is withheld (count, sum and sum of squares sent as 0);
- sketches: quantiles are released only at the boundaries of bins that each hold at
  least ``small_cell_threshold`` persons (bins merged until they do); a feature with
  fewer than two such bins is withheld; the fixed-size sketch is filled by interpolating
  between released boundaries, so it carries nothing more than those boundaries;
- differencing: a study approval admits one cohort definition. The first request binds
  the study's digest (cohort, outcome, covariates, thresholds) in a ledger next to the
  audit log; a different definition under the same study name is refused until the site
  approves it as a new study.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedomop.federated.errors import PolicyError


def withheld_features(counts: np.ndarray, minimum: int) -> np.ndarray:
    """Mask of features whose moments may not be released (fewer than ``minimum`` persons)."""
    return np.asarray(counts) < minimum


def coarse_quantiles(values: np.ndarray, levels: np.ndarray, threshold: int) -> np.ndarray | None:
    """Quantiles at ``levels`` that reveal only boundaries between bins of >= ``threshold`` persons.

    None when fewer than two such bins exist (the feature is withheld).
    """
    bins = min(len(levels) + 1, len(values) // max(threshold, 1))
    if bins < 2:
        return None
    released = np.quantile(values, np.arange(1, bins) / bins)
    # each level gets the nearest boundary at or below it: a step function of the released boundaries only
    index = np.clip(np.floor(np.asarray(levels) * bins).astype(int) - 1, 0, bins - 2)
    return released[index]


def study_digest(study: Any) -> str:
    """sha256 of the study's definition (canonical JSON; name, version and description left out,
    so rewording the description is not a new cohort): what an approval binds."""
    payload = study.model_dump(mode="json", exclude={"name", "version", "description"})
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def bind_cohort(audit_log: Path, study_name: str, digest: str) -> bool:
    """Record the study's cohort digest on first use; PolicyError if a different one is already bound.

    Returns True when this call bound it. The ledger lives next to the audit log, so it is
    kept (and archived) with it.
    """
    from fedomop.federated.governance.auditlog import beside, updating

    path = beside(audit_log, ".cohorts.json")
    with updating(path) as ledger:
        bound = ledger.get(study_name)
        if bound is None:
            ledger[study_name] = digest
    if bound is None:
        return True
    if bound != digest:
        raise PolicyError(
            f"study {study_name!r} is approved here for one cohort definition (sha256 {bound[:12]}…); "
            f"this request defines a different one ({digest[:12]}…), which could single out persons by difference",
            where=str(path),
            fix="ask the site to approve the new definition as a study of its own (a new name in the policy)",
        )
    return False


def enforce_one_cohort(policy: Any, study: Any, *, requester: str, app_hash: str) -> None:
    """Bind the study's definition at this site on first use; refuse (and audit) a different one."""
    from fedomop.federated.governance.enforce import audit

    digest = study_digest(study)
    try:
        if bind_cohort(policy.audit_log, study.name, digest):
            audit(
                policy, requester=requester, study=study.name, app_hash=app_hash, action="bind-cohort",
                outcome="bound", sent={}, study_sha256=digest,
            )  # fmt: skip
    except PolicyError as error:
        audit(
            policy, requester=requester, study=study.name, app_hash=app_hash, action="request",
            outcome="refused", sent={}, reason="different cohort definition under the same approval",
            study_sha256=digest,
        )  # fmt: skip
        raise error


def check_difference(  # noqa: PLR0913 - one released cohort, described
    audit_log: Path, study_name: str, digest: str, person_ids: Any, threshold: int
) -> None:
    """Refuse a cohort that differs from an earlier, overlapping cohort of another definition by 1..threshold-1.

    Two releases on cohorts A and B that overlap reveal, by subtraction, aggregates of A \\ B and
    B \\ A; those must be empty or hold at least ``threshold`` persons each (the small-cell rule applied to
    the difference). Earlier cohorts of *any* study name count, which is what one-definition-per-study
    cannot see. Members are kept as salted hashes next to the audit log, never sent anywhere.
    """
    import secrets

    from fedomop.federated.governance.auditlog import beside, updating

    path = beside(audit_log, ".members.json")
    with updating(path, indent=None) as ledger:
        salt = ledger.setdefault("salt", secrets.token_hex(16))
        mine = {hashlib.sha256(f"{salt}:{int(p)}".encode()).hexdigest()[:16] for p in person_ids}
        cohorts: dict[str, dict[str, Any]] = ledger.setdefault("cohorts", {})
        for other_digest, entry in cohorts.items():
            other = set(entry["members"])
            if other_digest == digest or not mine & other:
                continue
            if any(0 < len(side) < threshold for side in (mine - other, other - mine)):
                raise PolicyError(
                    f"this cohort of study {study_name!r} overlaps the cohort released for study "
                    f"{entry['study']!r} and differs from it by fewer than {threshold} persons: comparing the two "
                    "releases would single those persons out",
                    where=f"{path} (minimum difference between overlapping cohorts = small_cell_threshold)",
                    fix="widen or narrow the cohort so it differs by at least the threshold, or reuse the approved one",
                )
        cohorts.setdefault(digest, {"study": study_name, "members": sorted(mine)})


def enforce_min_difference(policy: Any, study: Any, person_ids: Any, *, requester: str, app_hash: str) -> None:
    """:func:`check_difference` at this site with its small-cell threshold; a refusal is audited."""
    from fedomop.federated.governance.enforce import audit

    digest = study_digest(study)
    threshold = max(int(study.small_cell), int(policy.small_cell(study.name)))
    try:
        check_difference(policy.audit_log, study.name, digest, person_ids, threshold)
    except PolicyError as error:
        audit(
            policy, requester=requester, study=study.name, app_hash=app_hash, action="request",
            outcome="refused", sent={}, reason="cohort differs from an overlapping released cohort by too few persons",
            study_sha256=digest,
        )  # fmt: skip
        raise error

"""Feasibility pre-flight: before any training, can every site answer the study?

Each site reports, with small cells withheld, its cohort size, its outcome count and, per covariate, whether the
site's vocabulary holds the covariate's concepts and the share of persons with a value. The hub stops the run,
naming the site and the covariate, when a covariate is absent at a site (its concepts are not in the vocabulary,
or no person has a value) or a site is below the study's minimums -- unless the study lists the covariate in
``allow_absent_covariates``. A covariate that is silently all-missing at one site would otherwise train a model
that quietly means something different there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedomop.federated.errors import StudyError
from fedomop.federated.features import build_features, resolve_concepts
from fedomop.federated.study import EVENT_TABLES, StudySpec
from fedomop.harmonize.ground.db import Database, connect


@dataclass(frozen=True)
class CovariateFeasibility:
    """One covariate at one site: are its concepts known here, and for what share of the cohort is it recorded."""

    name: str
    concepts_in_vocabulary: bool
    share_with_value: float | None  # None when the cohort is below the small-cell threshold


@dataclass(frozen=True)
class SiteFeasibility:
    """What a site may tell the hub before training. Counts below the threshold are None (withheld)."""

    site: str
    cohort_size: int | None
    outcome_count: int | None
    below_minimum: bool
    covariates: list[CovariateFeasibility]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SiteFeasibility:
        covariates = [CovariateFeasibility(**c) for c in raw["covariates"]]
        return cls(**{**raw, "covariates": covariates})


def _withheld(count: int, threshold: int) -> int | None:
    """A count a site may release: 0 and counts at or above the threshold; 1..threshold-1 are withheld."""
    return count if count == 0 or count >= threshold else None


def _concepts_known(db: Database, study: StudySpec, name: str) -> bool:
    covariate = next(c for c in study.covariates if c.name == name)
    if covariate.kind == "age":
        return True
    if covariate.kind in EVENT_TABLES and not db.has_table(EVENT_TABLES[covariate.kind][0]):
        return False
    return bool(resolve_concepts(db, covariate.concepts))


def site_feasibility(db: Database | str, study: StudySpec, site: str, threshold: int) -> SiteFeasibility:
    """Run at the site: the study's matrix is built locally; only withheld counts and shares leave."""
    database = connect(db, read_only=True) if isinstance(db, str) else db
    try:
        known = {c.name: _concepts_known(database, study, c.name) for c in study.covariates}
        try:
            data = build_features(database, study.model_copy(update={"min_cohort_size": 1}))
            n, events, X = data.n, int(np.sum(data.y == 1)), data.X
        except StudyError:
            n, events, X = 0, 0, np.empty((0, len(study.covariates)))
    finally:
        if isinstance(db, str):
            database.dispose()
    small = 0 < n < threshold
    covariates = [
        CovariateFeasibility(
            name=name,
            concepts_in_vocabulary=known[name],
            share_with_value=None if small or n == 0 else round(float(np.mean(~np.isnan(X[:, i]))), 3),
        )
        for i, name in enumerate(study.feature_names)
    ]
    return SiteFeasibility(
        site=site,
        cohort_size=_withheld(n, threshold),
        outcome_count=_withheld(events, threshold),
        below_minimum=n < study.min_cohort_size or events < study.min_outcome_count,
        covariates=covariates,
    )


def problems(reports: list[SiteFeasibility], study: StudySpec) -> list[str]:
    """Every reason the study cannot run as defined, one line each, naming the site and the covariate."""
    found = []
    allowed = set(study.allow_absent_covariates)
    for report in reports:
        if report.below_minimum:
            found.append(
                f"{report.site}: below the study's minimums (cohort {study.min_cohort_size}, "
                f"outcomes {study.min_outcome_count})"
            )
        for covariate in report.covariates:
            if covariate.name in allowed:
                continue
            if not covariate.concepts_in_vocabulary:
                found.append(f"{report.site}: covariate {covariate.name!r}: its concepts are not in the site's vocabulary")
            elif covariate.share_with_value == 0.0:
                found.append(f"{report.site}: covariate {covariate.name!r}: no person in the cohort has a value")
    return found


def require_feasible(reports: list[SiteFeasibility], study: StudySpec) -> None:
    """Stop before training when any site cannot answer the study (the fix names the study keys that allow it)."""
    found = problems(reports, study)
    if found:
        raise StudyError(
            "the study cannot run as defined:\n  " + "\n  ".join(found),
            where=f"feasibility pre-flight of study {study.name!r}",
            fix="load the missing vocabulary at those sites, leave those sites out, or list the covariate under "
            "`allow_absent_covariates` in the study (it is then missing, never 0, at those sites)",
        )

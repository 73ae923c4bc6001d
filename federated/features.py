"""The study's feature matrix, built by SQL inside the site database.

Rows never leave the site: the matrix is computed where the data lives and is
only ever turned into model updates and suppressed aggregates. The SQL is plain
enough to run unchanged on DuckDB and PostgreSQL (date + integer, correlated
subqueries, EXISTS).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl

from fedomop.federated import split
from fedomop.federated.study import Concept, Covariate, StudySpec
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.ground.errors import StudyError

# kind -> (table, concept column, date column)
EVENT_TABLES: dict[str, tuple[str, str, str]] = {
    "condition": ("condition_occurrence", "condition_concept_id", "condition_start_date"),
    "drug": ("drug_exposure", "drug_concept_id", "drug_exposure_start_date"),
    "procedure": ("procedure_occurrence", "procedure_concept_id", "procedure_date"),
    "observation": ("observation", "observation_concept_id", "observation_date"),
    "measurement": ("measurement", "measurement_concept_id", "measurement_date"),
}


@dataclass
class SiteData:
    """A site's feature matrix: features (NaN = missing), binary label, and person ids (never sent)."""

    X: np.ndarray
    y: np.ndarray
    person_id: np.ndarray
    feature_names: list[str]

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def subset(self, mask: np.ndarray) -> SiteData:
        return SiteData(self.X[mask], self.y[mask], self.person_id[mask], self.feature_names)

    def train_test(self, study: StudySpec) -> tuple[SiteData, SiteData]:
        """The study's person split (``fedomop.federated.split``): training rows, held-out rows. One place, so the
        ClientApp, the pooled reference and the benchmarks split every site the same way."""
        held_out = split.test_mask(self.person_id, self.y, seed=study.seed, test_fraction=study.test_fraction)
        return self.subset(~held_out), self.subset(held_out)


def tables_read(study: StudySpec) -> dict[str, list[str]]:
    """Tables and columns the study's SQL reads (declared to the site policy before anything runs)."""
    read: dict[str, set[str]] = {
        "person": {"person_id", "year_of_birth", "gender_concept_id"},
        "condition_occurrence": {"person_id", "condition_concept_id", "condition_start_date"},
        "concept": {"concept_id", "vocabulary_id", "concept_code", "standard_concept", "invalid_reason"},
        "concept_ancestor": {"ancestor_concept_id", "descendant_concept_id"},
    }
    if study.outcome.require_followup:
        read["observation_period"] = {"person_id", "observation_period_end_date"}
    for covariate in study.covariates:
        if covariate.kind in EVENT_TABLES:
            table, concept_col, date_col = EVENT_TABLES[covariate.kind]
            columns = {"person_id", concept_col, date_col}
            if covariate.kind == "measurement":
                columns |= {"value_as_number", "value_as_concept_id", "unit_concept_id", "measurement_id"}
            read.setdefault(table, set()).update(columns)
    return {table: sorted(columns) for table, columns in read.items()}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def resolve_concepts(db: Database, concepts: Iterable[Concept]) -> list[int]:
    """Concept ids of valid standard concepts named by code, plus descendants where asked.

    Read-only SQL on the site's own CONCEPT / CONCEPT_ANCESTOR tables; codes the site's
    vocabulary does not hold resolve to nothing (that site simply has no such records).
    """
    concepts = list(concepts)
    if not concepts:
        return []
    pairs = ", ".join(f"({_literal(c.vocabulary)}, {_literal(c.code)})" for c in concepts)
    found = db.query(
        "SELECT concept_id, vocabulary_id, concept_code FROM concept "
        f"WHERE (vocabulary_id, concept_code) IN ({pairs}) "
        "AND standard_concept = 'S' AND invalid_reason IS NULL"
    )
    ids: set[int] = set()
    expand: list[int] = []
    wanted = {(c.vocabulary, c.code): c.descendants for c in concepts}
    for concept_id, vocabulary, code in found.iter_rows():
        ids.add(int(concept_id))
        if wanted.get((vocabulary, code)):
            expand.append(int(concept_id))
    if expand and db.has_table("concept_ancestor"):
        listed = ", ".join(str(i) for i in sorted(expand))
        below = db.query(
            f"SELECT DISTINCT descendant_concept_id FROM concept_ancestor WHERE ancestor_concept_id IN ({listed})"
        )
        ids.update(int(v) for v in below.to_series().to_list())
    return sorted(ids)


def _in_list(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids) if ids else "NULL"


def _window(date_col: str, covariate: Covariate) -> str:
    w = covariate.window
    return f"{date_col} BETWEEN c.index_date + {w.start} AND c.index_date + {w.end}"


def _covariate_sql(db: Database, covariate: Covariate) -> str:
    ids = resolve_concepts(db, covariate.concepts)
    if covariate.kind == "age":
        return "CAST(EXTRACT(YEAR FROM c.index_date) - c.year_of_birth AS DOUBLE PRECISION)"
    if covariate.kind == "sex":
        return f"CASE WHEN c.gender_concept_id IN ({_in_list(ids)}) THEN 1.0 ELSE 0.0 END"
    table, concept_col, date_col = EVENT_TABLES[covariate.kind]
    match = (
        f"x.person_id = c.person_id AND x.{concept_col} IN ({_in_list(ids)}) AND {_window('x.' + date_col, covariate)}"
    )
    if covariate.kind != "measurement":
        return f"CASE WHEN EXISTS (SELECT 1 FROM {table} x WHERE {match}) THEN 1.0 ELSE 0.0 END"
    value = "x.value_as_number"
    conditions = [match]
    if covariate.values:
        cases = " ".join(
            f"WHEN x.value_as_concept_id IN ({_in_list(resolve_concepts(db, [v]))}) THEN {float(v.value)!r}"
            for v in covariate.values
        )
        value = f"COALESCE(x.value_as_number, CASE {cases} END)"
    if covariate.units:
        conditions.append(f"x.unit_concept_id IN ({_in_list(resolve_concepts(db, covariate.units))})")
    conditions.append(f"{value} IS NOT NULL")
    return (
        f"(SELECT CAST({value} AS DOUBLE PRECISION) FROM measurement x WHERE {' AND '.join(conditions)} "
        f"ORDER BY x.{date_col} DESC, x.measurement_id DESC LIMIT 1)"
    )


def feature_sql(db: Database, study: StudySpec) -> str:
    """One SELECT giving person_id, label and one column per covariate for the study's cohort."""
    index_ids = resolve_concepts(db, study.cohort.concepts)
    outcome_ids = resolve_concepts(db, study.outcome.concepts)
    for what, ids, key in (("index", index_ids, "cohort.concepts"), ("outcome", outcome_ids, "outcome.concepts")):
        if not ids:
            raise StudyError(
                f"none of the study's {what} concepts is a standard concept in this site's vocabulary",
                where=f"{db!r}: {study.name} {key}",
                fix="load the site's vocabulary (fedomop vocab load) or check the codes in the study file",
            )
    age = "EXTRACT(YEAR FROM i.index_date) - p.year_of_birth"
    age_limits = []
    if study.cohort.min_age is not None:
        age_limits.append(f"{age} >= {study.cohort.min_age}")
    if study.cohort.max_age is not None:
        age_limits.append(f"{age} <= {study.cohort.max_age}")
    w = study.outcome.window
    outcome_in = f"o.person_id = c.person_id AND o.condition_concept_id IN ({_in_list(outcome_ids)})"
    filters = []
    if study.outcome.exclude_prior:
        filters.append(
            f"NOT EXISTS (SELECT 1 FROM condition_occurrence o WHERE {outcome_in} "
            f"AND o.condition_start_date < c.index_date + {w.start})"
        )
    label = (
        f"CASE WHEN EXISTS (SELECT 1 FROM condition_occurrence o WHERE {outcome_in} "
        f"AND o.condition_start_date BETWEEN c.index_date + {w.start} AND c.index_date + {w.end}) THEN 1 ELSE 0 END"
    )
    if study.outcome.require_followup:
        filters.append(
            f"({label} = 1 OR EXISTS (SELECT 1 FROM observation_period op WHERE op.person_id = c.person_id "
            f"AND op.observation_period_end_date >= c.index_date + {w.end}))"
        )
    columns = ",\n  ".join(f"{_covariate_sql(db, cov)} AS {cov.name}" for cov in study.covariates)
    return (
        "WITH idx AS (\n"
        "  SELECT person_id, MIN(condition_start_date) AS index_date FROM condition_occurrence\n"
        f"  WHERE condition_concept_id IN ({_in_list(index_ids)}) GROUP BY person_id\n"
        "), c AS (\n"
        "  SELECT i.person_id, i.index_date, p.year_of_birth, p.gender_concept_id\n"
        "  FROM idx i JOIN person p ON p.person_id = i.person_id\n"
        f"  {'WHERE ' + ' AND '.join(age_limits) if age_limits else ''}\n"
        ")\n"
        f"SELECT c.person_id, {label} AS label,\n  {columns}\n"
        f"FROM c {'WHERE ' + ' AND '.join(filters) if filters else ''}\n"
        "ORDER BY c.person_id"
    )


def build_features(db: Database | str, study: StudySpec) -> SiteData:
    """Run the study's SQL at the site and return the matrix (in memory, at the site)."""
    database = connect(db, read_only=True) if isinstance(db, str) else db
    try:
        frame = database.query(feature_sql(database, study))
    finally:
        if isinstance(db, str):
            database.dispose()
    if frame.height < study.min_cohort_size:
        raise StudyError(
            f"cohort below the study's minimum of {study.min_cohort_size} persons",  # never the count itself
            where=f"{database!r}: {study.name}",
            fix="this site cannot take part in the study as defined",
        )
    names = study.feature_names
    features = frame.select([pl.col(n).cast(pl.Float64) for n in names]).to_numpy().astype(np.float64)
    return SiteData(
        X=features,
        y=frame.get_column("label").cast(pl.Float64).to_numpy(),
        person_id=frame.get_column("person_id").cast(pl.Int64).to_numpy(),
        feature_names=names,
    )

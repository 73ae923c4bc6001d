"""The study's feature matrix, built by SQL inside the site database.

Rows never leave the site: the matrix is computed where the data lives and is
only ever turned into model updates and suppressed aggregates. The SQL is plain
enough to run unchanged on DuckDB and PostgreSQL (date + integer, correlated
subqueries, EXISTS).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl

from fedomop.federated import split
from fedomop.federated.errors import StudyError
from fedomop.federated.study import EVENT_TABLES, OUTCOME_TABLES, Concept, Covariate, OutcomeEvent, StudySpec
from fedomop.harmonize.ground.db import Database, connect


@dataclass
class SiteData:
    """A site's feature matrix: features (NaN = missing), label, and person ids (never sent).

    For a binary outcome ``y`` is the label. For a time-to-event outcome ``y`` is the event indicator
    (1 = outcome event, 0 = censored or competing event), ``time`` the days from the index date to the event or
    the end of follow-up, and ``status`` 0 / 1 / 2 (2 = competing death).
    """

    X: np.ndarray
    y: np.ndarray
    person_id: np.ndarray
    feature_names: list[str]
    time: np.ndarray | None = None
    status: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def subset(self, mask: np.ndarray) -> SiteData:
        return SiteData(
            self.X[mask],
            self.y[mask],
            self.person_id[mask],
            self.feature_names,
            None if self.time is None else self.time[mask],
            None if self.status is None else self.status[mask],
        )

    def digest(self) -> str:
        """A fingerprint of exactly what the site read for the study (features, labels, times, statuses, person
        order), so any change of the data the model saw changes the model card's ``data_version``."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.feature_names).encode())
        for part in (self.X, self.y, self.person_id, self.time, self.status):
            if part is not None:
                array = np.ascontiguousarray(part)
                h.update(f"{array.dtype.str}{array.shape}".encode())
                h.update(array.tobytes())
        return h.hexdigest()[:16]

    def train_test(self, study: StudySpec) -> tuple[SiteData, SiteData]:
        """The study's person split (``fedomop.federated.split``): training rows, held-out rows. One place, so the
        ClientApp, the pooled reference and the benchmarks split every site the same way."""
        held_out = split.test_mask(self.person_id, self.y, seed=study.seed, test_fraction=study.test_fraction)
        return self.subset(~held_out), self.subset(held_out)


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
    if not ids:
        return "CAST(NULL AS DOUBLE PRECISION)"  # the site's vocabulary cannot express it: missing, never 0
    if covariate.kind == "sex":
        return f"CASE WHEN c.gender_concept_id IN ({_in_list(ids)}) THEN 1.0 ELSE 0.0 END"
    table, concept_col, date_col = EVENT_TABLES[covariate.kind]
    match = (
        f"x.person_id = c.person_id AND x.{concept_col} IN ({_in_list(ids)}) AND {_window('x.' + date_col, covariate)}"
    )
    if covariate.kind != "measurement":
        # A site with no record of the concept set at all does not capture it: missing for everyone, not 0.
        return (
            f"CASE WHEN NOT EXISTS (SELECT 1 FROM {table} x WHERE x.{concept_col} IN ({_in_list(ids)})) "
            f"THEN CAST(NULL AS DOUBLE PRECISION) "
            f"WHEN EXISTS (SELECT 1 FROM {table} x WHERE {match}) THEN 1.0 ELSE 0.0 END"
        )
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


def _event_sql(db: Database, event: OutcomeEvent) -> str | None:
    """``SELECT person_id, event_date`` for one outcome event, or None when its concepts are not in the vocabulary."""
    table, concept_col, date_col = OUTCOME_TABLES[event.domain]
    conditions = []
    if event.concepts:
        ids = resolve_concepts(db, event.concepts)
        if not ids:
            return None
        conditions.append(f"x.{concept_col} IN ({_in_list(ids)})")
    if event.objects:
        conditions.append(f"x.episode_object_concept_id IN ({_in_list(resolve_concepts(db, event.objects))})")
    if event.value is not None:
        conditions.append(f"x.value_as_number {event.value.op} {float(event.value.value)!r}")
        if event.value.units:
            conditions.append(f"x.unit_concept_id IN ({_in_list(resolve_concepts(db, event.value.units))})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT x.person_id, x.{date_col} AS event_date FROM {table} x{where}"


def _outcome_events_sql(db: Database, study: StudySpec) -> str:
    """The union of every outcome event's records; a study whose outcome the site cannot recognise stops."""
    parts = [sql for sql in (_event_sql(db, e) for e in study.outcome.all_events) if sql is not None]
    if not parts:
        raise StudyError(
            "none of the study's outcome concepts is a standard concept in this site's vocabulary",
            where=f"{db!r}: {study.name} outcome",
            fix="load the site's vocabulary (fedomop vocab load) or check the codes in the study file",
        )
    return "\n  UNION ALL ".join(parts)


def _follow_up_end_sql(study: StudySpec) -> str:
    """The last day a person is followed: observation period end (or the study end), capped at the horizon."""
    outcome = study.outcome
    horizon = f"c.index_date + {outcome.window.end}"
    if outcome.censor == "study_end":
        assert outcome.study_end is not None  # the study model refuses study_end censoring without a date
        return f"LEAST(DATE '{outcome.study_end.isoformat()}', {horizon})"
    period_end = (
        "(SELECT MAX(op.observation_period_end_date) FROM observation_period op WHERE op.person_id = c.person_id "
        "AND op.observation_period_start_date <= c.index_date AND op.observation_period_end_date >= c.index_date)"
    )
    return f"LEAST(COALESCE({period_end}, c.index_date), {horizon})"


def feature_sql(db: Database, study: StudySpec) -> str:
    """One SELECT giving person_id, the outcome columns and one column per covariate for the study's cohort.

    Binary outcome: ``label``. Time-to-event: ``first_event``, ``death_date`` and ``follow_end`` dates and the
    ``index_date``; :func:`time_to_event` turns them into time and status (plain date arithmetic, the same on
    every database).
    """
    index_ids = resolve_concepts(db, study.cohort.concepts)
    if not index_ids:
        raise StudyError(
            "none of the study's index concepts is a standard concept in this site's vocabulary",
            where=f"{db!r}: {study.name} cohort.concepts",
            fix="load the site's vocabulary (fedomop vocab load) or check the codes in the study file",
        )
    events = _outcome_events_sql(db, study)
    age = "EXTRACT(YEAR FROM i.index_date) - p.year_of_birth"
    age_limits = []
    if study.cohort.min_age is not None:
        age_limits.append(f"{age} >= {study.cohort.min_age}")
    if study.cohort.max_age is not None:
        age_limits.append(f"{age} <= {study.cohort.max_age}")
    w = study.outcome.window
    filters = []
    if study.outcome.exclude_prior:
        filters.append(
            f"NOT EXISTS (SELECT 1 FROM ev o WHERE o.person_id = c.person_id AND o.event_date < c.index_date + {w.start})"
        )
    if study.outcome.time_to_event:
        outcome_columns = (
            "c.index_date,\n"
            f"  (SELECT MIN(o.event_date) FROM ev o WHERE o.person_id = c.person_id "
            f"AND o.event_date >= c.index_date + {w.start}) AS first_event,\n"
            "  (SELECT MIN(d.death_date) FROM death d WHERE d.person_id = c.person_id) AS death_date,\n"
            f"  {_follow_up_end_sql(study)} AS follow_end"
        )
    else:
        label = (
            "CASE WHEN EXISTS (SELECT 1 FROM ev o WHERE o.person_id = c.person_id "
            f"AND o.event_date BETWEEN c.index_date + {w.start} AND c.index_date + {w.end}) THEN 1 ELSE 0 END"
        )
        outcome_columns = f"{label} AS label"
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
        f"), ev AS (\n  {events}\n"
        ")\n"
        f"SELECT c.person_id, {outcome_columns},\n  {columns}\n"
        f"FROM c {'WHERE ' + ' AND '.join(filters) if filters else ''}\n"
        "ORDER BY c.person_id"
    )


def time_to_event(frame: pl.DataFrame, study: StudySpec) -> pl.DataFrame:
    """Days and status from the dates: the earliest of outcome event, (non-outcome) death and end of follow-up.

    An outcome event on the same day as a death counts as the event. Persons whose follow-up ends before the
    outcome window starts have no time at risk and are dropped (the feasibility report counts them).
    """
    w = study.outcome.window
    days = lambda column: (pl.col(column) - pl.col("index_date")).dt.total_days()  # noqa: E731
    death_counts = study.outcome.death != "event"
    event_in = pl.col("first_event").is_not_null() & (pl.col("first_event") <= pl.col("follow_end"))
    death_in = (
        pl.lit(death_counts)
        & pl.col("death_date").is_not_null()
        & (pl.col("death_date") <= pl.col("follow_end"))
        & (pl.col("first_event").is_null() | (pl.col("death_date") < pl.col("first_event")))
    )
    status_of_death = 2 if study.outcome.death == "competing" else 0
    return (
        frame.with_columns(
            pl.when(death_in)
            .then(pl.lit(status_of_death))
            .when(event_in)
            .then(pl.lit(1))
            .otherwise(pl.lit(0))
            .alias("status"),
            pl.when(death_in)
            .then(days("death_date"))
            .when(event_in)
            .then(days("first_event"))
            .otherwise(days("follow_end"))
            .alias("time"),
        )
        .filter(pl.col("time") >= w.start)
        .with_columns((pl.col("status") == 1).cast(pl.Int64).alias("label"))
    )


def build_features(db: Database | str, study: StudySpec) -> SiteData:
    """Run the study's SQL at the site and return the matrix (in memory, at the site)."""
    database = connect(db, read_only=True) if isinstance(db, str) else db
    try:
        frame = database.query(feature_sql(database, study))
    finally:
        if isinstance(db, str):
            database.dispose()
    if study.outcome.time_to_event:
        frame = time_to_event(frame, study)
    if frame.height < study.min_cohort_size:
        raise StudyError(
            f"cohort below the study's minimum of {study.min_cohort_size} persons",  # never the count itself
            where=f"{database!r}: {study.name}",
            fix="this site cannot take part in the study as defined",
        )
    names = study.feature_names
    features = frame.select([pl.col(n).cast(pl.Float64) for n in names]).to_numpy().astype(np.float64)
    tte = study.outcome.time_to_event
    return SiteData(
        X=features,
        y=frame.get_column("label").cast(pl.Float64).to_numpy(),
        person_id=frame.get_column("person_id").cast(pl.Int64).to_numpy(),
        feature_names=names,
        time=frame.get_column("time").cast(pl.Float64).to_numpy() if tte else None,
        status=frame.get_column("status").cast(pl.Int64).to_numpy() if tte else None,
    )

"""Each DQD check type whose semantics the audit found different, on a tiny CDM with seeded defects.

Every expected (violated, denominator) below is counted by hand from the rows inserted here and the official
DataQualityDashboard SQL template of the check (inst/sql/sql_server/*.sql); the comment on each assertion says
which rows count. Dates: death of person 3 on 2020-01-01, so "more than 60 days after" means after 2020-03-01.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.validate.checks import run_checks
from fedomop.harmonize.validate.checks.runner import failed
from tests.validate.conftest import TODAY, by_id

ROWS = [
    # persons: 1 born 1980-03-15, 2 born in 1990 (year only), 3 born 1970 and died 2020-01-01
    "INSERT INTO person (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth, race_concept_id, "
    "ethnicity_concept_id) VALUES (1, 8507, 1980, 3, 15, 0, 0), (2, 8532, 1990, NULL, NULL, 0, 0), "
    "(3, 8507, 1970, NULL, NULL, 0, 0)",
    "INSERT INTO death (person_id, death_date, death_type_concept_id) VALUES (3, DATE '2020-01-01', 32817)",
    "INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, standard_concept, "
    "concept_code, valid_start_date, valid_end_date) VALUES "
    "(201826, 'Type 2 diabetes mellitus', 'Condition', 'SNOMED', 'Clinical Finding', 'S', '44054006', "
    "DATE '1970-01-01', DATE '2099-12-31'), "
    "(4000, 'a non-standard code', 'Condition', 'ICD10CM', 'ICD10 code', NULL, 'E11', "
    "DATE '1970-01-01', DATE '2099-12-31')",
    # v1: same-day visit whose end time is before its start time; v2: ends before it starts (a real defect)
    "INSERT INTO visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date, "
    "visit_start_datetime, visit_end_date, visit_end_datetime, visit_type_concept_id) VALUES "
    "(1, 1, 9202, DATE '2020-05-01', TIMESTAMP '2020-05-01 10:00', DATE '2020-05-01', TIMESTAMP '2020-05-01 08:00', "
    "32817), (2, 3, 9202, DATE '2019-06-10', TIMESTAMP '2019-06-10 00:00', DATE '2019-06-01', "
    "TIMESTAMP '2019-06-01 00:00', 32817)",
    # c5 below breaks NOT NULL on purpose (a defect the checks must count, as in a CDM loaded without constraints)
    "ALTER TABLE condition_occurrence ALTER COLUMN condition_concept_id DROP NOT NULL",
    "ALTER TABLE condition_occurrence ALTER COLUMN condition_start_date DROP NOT NULL",
    "INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, condition_start_date, "
    "condition_type_concept_id, condition_status_concept_id, condition_status_source_value, condition_source_value, "
    "condition_source_concept_id, visit_occurrence_id) VALUES "
    "(1, 1, 201826, DATE '2020-05-02', 32817, NULL, 'primary', 'A', 0, 1), "  # c1
    "(2, 3, 0, DATE '2020-04-11', 32817, 0, NULL, NULL, 44, 2), "  # c2: 101 days after death, 10 months after v2
    "(3, 3, 0, DATE '2019-12-01', 32817, NULL, NULL, 'X1', NULL, NULL), "  # c3
    "(4, 2, 4000, DATE '1990-03-01', 32817, 32902, NULL, 'A', NULL, NULL), "  # c4: before 1 June 1990
    "(5, 3, NULL, NULL, 32817, NULL, NULL, NULL, NULL, NULL)",  # c5: no concept, no date
    "INSERT INTO condition_era (condition_era_id, person_id, condition_concept_id, condition_era_start_date, "
    "condition_era_end_date) VALUES (1, 1, 201826, DATE '2020-05-02', DATE '2020-05-02')",
    # measurements of concept 3006315 (plausible units 8784,8848,8961,9444,8785) and 43055141 (no unit: -1)
    "INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
    "measurement_type_concept_id, unit_concept_id, value_as_number) VALUES "
    "(1, 1, 3006315, DATE '2020-05-02', 32817, 8784, 5), "  # plausible unit
    "(2, 1, 3006315, DATE '2020-05-02', 32817, 8554, 1), "  # implausible unit
    "(3, 1, 3006315, DATE '2020-05-02', 32817, 9999, NULL), "  # implausible unit, no value: still counted
    "(4, 1, 3006315, DATE '2020-05-02', 32817, 0, 3), "  # unit 0: neither counted nor violating
    "(5, 1, 3006315, DATE '2020-05-02', 32817, NULL, 3), "  # no unit: counted, never violating
    "(6, 1, 43055141, DATE '2020-05-02', 32817, 8554, 2), "  # a unit where none is plausible
    "(7, 1, 43055141, DATE '2020-05-02', 32817, NULL, 2)",
]

CHECKS = [
    "cdmTable",
    "cdmField",
    "measureValueCompleteness",
    "plausibleUnitConceptIds",
    "plausibleDuringLife",
    "plausibleBeforeDeath",
    "plausibleStartBeforeEnd",
    "measureConditionEraCompleteness",
    "plausibleTemporalAfter",
    "withinVisitDates",
    "isStandardValidConcept",
    "standardConceptRecordCompleteness",
    "sourceConceptRecordCompleteness",
    "sourceValueCompleteness",
]


def seeded_db(path: Path) -> Database:
    db = connect(path)
    create_cdm(db.engine, constraints="none")
    for sql in ROWS:
        db.execute(sql)
    return db


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dqd") / "cdm.duckdb"
    seeded_db(path).dispose()
    return path


@pytest.fixture(scope="module")
def results(db_path: Path):
    db = connect(db_path, read_only=True)
    run = run_checks(db, checks=CHECKS, today=TODAY)
    db.dispose()
    return by_id(run.results)


def test_query_text_of_each_failed_check_lists_its_violating_rows(results, db_path: Path) -> None:
    """The SQL shown for a failed check (QA report, DQD export) finds exactly the rows it counted."""
    failed = [r for r in results.values() if r.status == "fail"]
    assert len({r.check_name for r in failed}) >= 10
    db = connect(db_path, read_only=True)
    try:
        for r in failed:
            assert db.query(r.query_text).height == r.num_violated_rows, r.check_id
    finally:
        db.dispose()


def counts(results, check_id: str) -> tuple[int | None, int | None, str]:
    r = results[check_id]
    return r.num_violated_rows, r.num_denominator_rows, r.status


@pytest.mark.parametrize(
    ("check_id", "expected"),
    [
        # m2, m3 of m1, m2, m3, m5 (m4 has unit 0); threshold 5%
        ("plausibleUnitConceptIds.measurement.measurement_concept_id.3006315", (2, 4, "fail")),
        # -1 list: m6 has a unit, m7 none
        ("plausibleUnitConceptIds.measurement.measurement_concept_id.43055141", (1, 2, "fail")),
        # c2 of person 3's rows c2, c3, c5 (NULL date counted); threshold 1%
        ("plausibleDuringLife.condition_occurrence.condition_start_date", (1, 3, "fail")),
        # c2 of c2, c3 (dated rows joined to death)
        ("plausibleBeforeDeath.condition_occurrence.condition_start_date", (1, 2, "fail")),
        # measurement rows are all person 1's, who did not die: 0 of 0 is a pass in DQD, not "not applicable"
        ("plausibleBeforeDeath.measurement.measurement_date", (0, 0, "pass")),
        # v2 only: v1 starts and ends the same day although its end time is earlier
        ("plausibleStartBeforeEnd.visit_occurrence.visit_start_datetime", (1, 2, "fail")),
        ("plausibleStartBeforeEnd.visit_occurrence.visit_start_date", (1, 2, "fail")),
        # persons with a condition concept other than 0: 1 and 2; 2 has no era (person 3 only has 0 / NULL)
        ("measureConditionEraCompleteness.condition_era", (1, 2, "fail")),
        # c4 (1990-03-01 before 1990-06-01) of all 5 rows, c5's NULL date included
        ("plausibleTemporalAfter.condition_occurrence.condition_start_date", (1, 5, "fail")),
        # c2 of c1, c2 (the rows with a visit); threshold 5%
        ("withinVisitDates.condition_occurrence.condition_start_date", (1, 2, "fail")),
        # c4 (concept 4000 is not standard) of the 4 rows with a concept (0 included, NULL not)
        ("isStandardValidConcept.condition_occurrence.condition_concept_id", (1, 4, "fail")),
        # c2, c3 (concept 0) of the 4 rows with a concept; threshold 5%
        ("standardConceptRecordCompleteness.condition_occurrence.condition_concept_id", (2, 4, "fail")),
        # c1 (NULL but a status source value) and c2 (0) of c1, c2, c4
        ("standardConceptRecordCompleteness.condition_occurrence.condition_status_concept_id", (2, 3, "fail")),
        # c1 (0) of c1, c2 (the rows with a source concept); threshold 10%
        ("sourceConceptRecordCompleteness.condition_occurrence.condition_source_concept_id", (1, 2, "fail")),
        # distinct source values with concept 0: NULL (c2) and 'X1' (c3), of 'A', 'X1' and NULL
        ("sourceValueCompleteness.condition_occurrence.condition_source_value", (2, 3, "fail")),
    ],
)
def test_counts_follow_the_official_sql(results, check_id: str, expected: tuple[int, int, str]) -> None:
    assert counts(results, check_id) == expected


def test_not_applicable_follows_dqd(results) -> None:
    # an empty table: every check on it is not applicable, except cdmTable/cdmField
    assert results["measureValueCompleteness.drug_exposure.drug_concept_id"].status == "not_applicable"
    assert results["cdmField.drug_exposure.drug_concept_id"].status == "pass"
    # a field that is entirely NULL (visit_source_concept_id on both visits)
    assert results["sourceConceptRecordCompleteness.visit_occurrence.visit_source_concept_id"].status == (
        "not_applicable"
    )
    assert "not populated" in results["sourceConceptRecordCompleteness.visit_occurrence.visit_source_concept_id"].reason
    # measureValueCompleteness itself stays applicable on an all-NULL field: 2 of 2 missing
    assert counts(results, "measureValueCompleteness.visit_occurrence.visit_source_concept_id")[:2] == (2, 2)
    # a concept with no rows
    assert results["plausibleUnitConceptIds.measurement.measurement_concept_id.3004410"].status == "not_applicable"


def test_threshold_rule_is_dqds() -> None:
    assert failed(1, 1 / 1000, 0) and not failed(0, 0.0, 0)  # threshold 0: any violating row fails
    assert not failed(1, 1 / 20, 5)  # exactly at the threshold passes
    assert failed(2, 2 / 20, 5)
    assert failed(7, 7 / 100, 7) == (7 / 100 * 100 > 7)  # the fraction times 100, in DQD's order

"""The DQD check types not covered by test_dqd_semantics.py, on a tiny CDM with seeded defects.

Every expected (violated, denominator, status) is counted by hand from the rows inserted here and the official
DataQualityDashboard template named in harmonize/validate/data/dqd_check_semantics.csv (thresholds from the DQD
catalogue CSVs). Persons: 1 male born 1980-03-15, 2 female born in 1990 (year only), 3 with no gender born 1970,
4 male born 1960 with no record at all. Today is 2026-01-01 (conftest.TODAY).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.validate.catalogue import load_catalogue
from fedomop.harmonize.validate.checks import run_checks
from tests.validate.conftest import TODAY, by_id

DATA = Path(__file__).parents[2] / "harmonize" / "validate" / "data"

ROWS = [
    "ALTER TABLE person ALTER COLUMN gender_concept_id DROP NOT NULL",
    "INSERT INTO person (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth, race_concept_id, "
    "ethnicity_concept_id) VALUES (1, 8507, 1980, 3, 15, 0, 0), (2, 8532, 1990, NULL, NULL, 0, 0), "
    "(3, NULL, 1970, NULL, NULL, 0, 0), (4, 8507, 1960, NULL, NULL, 0, 0)",
    "INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, standard_concept, "
    "concept_code, valid_start_date, valid_end_date) VALUES "
    "(26662, 'Testicular hypofunction', 'Condition', 'SNOMED', 'Clinical Finding', 'S', '1', DATE '1970-01-01', "
    "DATE '2099-12-31'), (4025213, 'Male reproductive finding', 'Condition', 'SNOMED', 'Clinical Finding', 'S', '2', "
    "DATE '1970-01-01', DATE '2099-12-31'), (1112807, 'aspirin', 'Drug', 'RxNorm', 'Ingredient', 'S', '3', "
    "DATE '1970-01-01', DATE '2099-12-31'), (19059056, 'aspirin 81 MG Oral Tablet', 'Drug', 'RxNorm', "
    "'Clinical Drug', 'S', '4', DATE '1970-01-01', DATE '2099-12-31')",
    "INSERT INTO concept_ancestor (ancestor_concept_id, descendant_concept_id, min_levels_of_separation, "
    "max_levels_of_separation) VALUES (4025213, 4025213, 0, 0), (4025213, 26662, 1, 1)",
    # co4 belongs to no person (orphan) and shares its id with co5; co5 is a drug concept dated before birth
    "INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, condition_start_date, "
    "condition_type_concept_id) VALUES (1, 1, 26662, DATE '2020-01-01', 32817), "
    "(2, 2, 26662, DATE '1990-01-01', 32817), "  # female: implausible gender; 1990-01-01 is not before 1990-01-01
    "(3, 3, 26662, DATE '2020-01-01', 32817), "  # no gender: counted, never violating
    "(4, 99, 26662, DATE '2020-01-01', 32817), "  # orphan: counted in plausibleGender, an isForeignKey violation
    "(4, 1, 1112807, DATE '1979-12-31', 32817)",  # duplicate id 4, Drug domain, before person 1's birth
    # person 1: back-to-back periods (violation); person 3: a one-day gap (not adjacent), the second ends after today
    "INSERT INTO observation_period (observation_period_id, person_id, observation_period_start_date, "
    "observation_period_end_date, period_type_concept_id) VALUES "
    "(1, 1, DATE '2000-01-01', DATE '2010-12-31', 32817), (2, 1, DATE '2011-01-01', DATE '2020-12-31', 32817), "
    "(3, 2, DATE '2000-01-01', DATE '2020-12-31', 32817), (4, 3, DATE '2000-01-01', DATE '2005-01-01', 32817), "
    "(5, 3, DATE '2005-01-03', DATE '2030-01-01', 32817)",
    "ALTER TABLE condition_era ALTER COLUMN condition_occurrence_count DROP NOT NULL",
    "INSERT INTO condition_era (condition_era_id, person_id, condition_concept_id, condition_era_start_date, "
    "condition_era_end_date, condition_occurrence_count) VALUES (1, 1, 26662, DATE '2020-01-01', DATE '2020-01-01', "
    "1), (2, 2, 26662, DATE '1990-01-01', DATE '1990-01-01', 0), (3, 3, 26662, DATE '2020-01-01', "
    "DATE '2020-01-01', NULL)",
    "INSERT INTO drug_era (drug_era_id, person_id, drug_concept_id, drug_era_start_date, drug_era_end_date, "
    "drug_exposure_count, gap_days) VALUES (1, 1, 1112807, DATE '2020-01-01', DATE '2020-01-31', 1, 0), "
    "(2, 1, 19059056, DATE '2020-03-01', DATE '2020-03-31', 1, 0)",
    # Plasma total cholesterol (37393449): mg/dL (8840) plausible 50..500, mmol/L (8753) plausible 1..15
    "INSERT INTO observation (observation_id, person_id, observation_concept_id, observation_date, "
    "observation_type_concept_id, unit_concept_id, value_as_number) VALUES "
    "(1, 1, 37393449, DATE '2020-01-01', 32817, 8840, 40), (2, 1, 37393449, DATE '2020-01-01', 32817, 8840, 600), "
    "(3, 1, 37393449, DATE '2020-01-01', 32817, 8840, 100), (4, 1, 37393449, DATE '2020-01-01', 32817, 8840, NULL), "
    "(5, 1, 37393449, DATE '2020-01-01', 32817, 8753, 40)",
    # location_id stored as text (a CDM loaded from CSV without types): '2.5' and 'abc' are not integers
    "ALTER TABLE location ALTER COLUMN location_id DROP NOT NULL",
    "ALTER TABLE location ALTER COLUMN location_id SET DATA TYPE VARCHAR",
    "INSERT INTO location (location_id) VALUES ('1'), ('2.5'), ('abc'), (NULL)",
    "DROP TABLE note_nlp",
    "ALTER TABLE specimen DROP COLUMN anatomic_site_concept_id",
]

CHECKS = [
    "cdmTable",
    "cdmField",
    "measureValueCompleteness",
    "isRequired",
    "cdmDatatype",
    "isPrimaryKey",
    "isForeignKey",
    "fkDomain",
    "fkClass",
    "measurePersonCompleteness",
    "measureObservationPeriodOverlap",
    "plausibleValueLow",
    "plausibleValueHigh",
    "plausibleAfterBirth",
    "plausibleGender",
    "plausibleGenderUseDescendants",
]


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dqd_all") / "cdm.duckdb"
    db = connect(path)
    create_cdm(db.engine, constraints="none")
    for sql in ROWS:
        db.execute(sql)
    db.dispose()
    return path


@pytest.fixture(scope="module")
def results(db_path: Path):
    db = connect(db_path, read_only=True)
    try:
        return by_id(run_checks(db, checks=CHECKS, today=TODAY).results)
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("check_id", "expected"),
    [
        # person 3 of 4 persons; threshold 0
        ("isRequired.person.gender_concept_id", (1, 4, "fail")),
        # '2.5' and 'abc' of all 4 rows (the NULL row counts in DQD's denominator); threshold 0
        ("cdmDatatype.location.location_id", (2, 4, "fail")),
        # both rows with id 4 of 5
        ("isPrimaryKey.condition_occurrence.condition_occurrence_id", (2, 5, "fail")),
        # co4 (person 99) of 5
        ("isForeignKey.condition_occurrence.person_id", (1, 5, "fail")),
        # co5 (Drug) of 5
        ("fkDomain.condition_occurrence.condition_concept_id", (1, 5, "fail")),
        # era 2 (Clinical Drug) of 2
        ("fkClass.drug_era.drug_concept_id", (1, 2, "fail")),
        # person 4 of 4 persons: 25% <= 95 passes; observation_period threshold 0 fails
        ("measurePersonCompleteness.condition_occurrence", (1, 4, "pass")),
        ("measurePersonCompleteness.observation_period", (1, 4, "fail")),
        # person 1 (back-to-back) of persons 1, 2, 3; person 3's one-day gap is not adjacent
        ("measureObservationPeriodOverlap.observation_period", (1, 3, "fail")),
        # era 2 (count 0) of eras 1, 2 (era 3's NULL not counted); 50% > 1
        ("plausibleValueLow.condition_era.condition_occurrence_count", (1, 2, "fail")),
        # period 5 ends 2030-01-01, after today + 1 day; 1 of 5 = 20% > 1
        ("plausibleValueHigh.observation_period.observation_period_end_date", (1, 5, "fail")),
        # co5 (1979-12-31 before 1980-03-15) of 5 dated rows, orphan co4 counted; person 2's year-only birth is
        # 1990-01-01 here (month and day default to 01), so co2 on 1990-01-01 is not before it; 20% > 1
        ("plausibleAfterBirth.condition_occurrence.condition_start_date", (1, 5, "fail")),
        # co2 (female) of co1..co4: the orphan co4 and the gender-less co3 count, never violate; 25% > 5
        ("plausibleGender.condition_occurrence.condition_concept_id.26662", (1, 4, "fail")),
        # descendants of 4025213 (26662): the same four rows; 25% > 2
        ("plausibleGenderUseDescendants.condition_occurrence.condition_concept_id.4090861,4025213", (1, 4, "fail")),
    ],
)
def test_counts_follow_the_official_sql(results, check_id: str, expected: tuple[int, int, str]) -> None:
    r = results[check_id]
    assert (r.num_violated_rows, r.num_denominator_rows, r.status) == expected


def test_missing_table_and_field_fail_and_make_their_checks_not_applicable(results) -> None:
    assert results["cdmTable.note_nlp"].status == "fail"
    assert results["cdmField.note_nlp.note_nlp_id"].status == "not_applicable"  # cdmField: NA when table missing
    assert results["cdmField.specimen.anatomic_site_concept_id"].status == "fail"
    assert results["isForeignKey.specimen.anatomic_site_concept_id"].status == "not_applicable"
    empty = results["measurePersonCompleteness.specimen"]  # empty, not missing: applicable (4 of 4 <= 100%)
    assert (empty.num_violated_rows, empty.num_denominator_rows, empty.status) == (4, 4, "pass")
    assert results["plausibleGender.condition_occurrence.condition_concept_id.26935"].status == "not_applicable"


def test_concept_level_value_bounds_are_not_run_as_in_dqd(results) -> None:
    """The v5.4 check descriptions list plausibleValueLow/High at FIELD level only: the concept rows' bounds
    (plasma cholesterol 50..500 mg/dL) are not evaluated, so observation 2 (600 mg/dL) is not counted anywhere."""
    assert not [r for r in results.values() if r.check_name.startswith("plausibleValue") and r.concept_id]


def test_query_text_of_each_failed_check_lists_its_violating_rows(results, db_path: Path) -> None:
    """The SQL the QA report and the DQD export show for a failed check finds exactly the rows it counted."""
    failed = [r for r in results.values() if r.status == "fail" and r.check_name not in ("cdmTable", "cdmField")]
    assert len({r.check_name for r in failed}) >= 12
    db = connect(db_path, read_only=True)
    try:
        for r in failed:
            assert db.query(r.query_text).height == r.num_violated_rows, r.check_id
    finally:
        db.dispose()


def test_partial_run_has_no_not_applicable_status(db_path: Path) -> None:
    """Without cdmTable, cdmField and measureValueCompleteness DQD computes no not-applicable status: a concept
    with no rows is 0 of 0 and passes (evaluateThresholds.R, .hasNAchecks)."""
    db = connect(db_path, read_only=True)
    try:
        partial = by_id(run_checks(db, checks=["plausibleGender"], today=TODAY).results)
    finally:
        db.dispose()
    no_rows = partial["plausibleGender.condition_occurrence.condition_concept_id.26935"]
    assert (no_rows.num_violated_rows, no_rows.num_denominator_rows, no_rows.status) == (0, 0, "pass")


def test_every_check_type_has_its_official_semantics_recorded() -> None:
    with (DATA / "dqd_check_semantics.csv").open(newline="", encoding="utf-8") as handle:
        recorded = {row["check_name"]: row for row in csv.DictReader(handle)}
    assert set(recorded) == set(load_catalogue().check_types)
    assert all(row["template"].endswith(".sql") and row["what_to_do"] for row in recorded.values())

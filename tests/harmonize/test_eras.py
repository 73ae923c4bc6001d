"""condition_era, drug_era and dose_era against eras worked out by hand (30-day persistence window)."""

from __future__ import annotations

import datetime as dt

import pytest

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.run.eras import build_eras

D = dt.date
ACETAMINOPHEN, TABLET = 1125315, 1127433  # RxNorm ingredient and a clinical drug below it
ROWS = [
    "INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, standard_concept, "
    "concept_code, valid_start_date, valid_end_date) VALUES "
    f"({ACETAMINOPHEN}, 'acetaminophen', 'Drug', 'RxNorm', 'Ingredient', 'S', '161', DATE '1970-01-01', "
    f"DATE '2099-12-31'), ({TABLET}, 'acetaminophen 500 MG Oral Tablet', 'Drug', 'RxNorm', 'Clinical Drug', 'S', "
    "'198440', DATE '1970-01-01', DATE '2099-12-31')",
    "INSERT INTO concept_ancestor (ancestor_concept_id, descendant_concept_id, min_levels_of_separation, "
    f"max_levels_of_separation) VALUES ({ACETAMINOPHEN}, {ACETAMINOPHEN}, 0, 0), ({ACETAMINOPHEN}, {TABLET}, 1, 1)",
    "INSERT INTO drug_strength (drug_concept_id, ingredient_concept_id, amount_value, amount_unit_concept_id, "
    f"valid_start_date, valid_end_date) VALUES ({TABLET}, {ACETAMINOPHEN}, 500, 8576, DATE '1970-01-01', "
    "DATE '2099-12-31')",
    "INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, condition_start_date, "
    "condition_end_date, condition_type_concept_id) VALUES "
    "(1, 1, 201826, DATE '2020-01-01', DATE '2020-01-10', 32817), "
    "(2, 1, 201826, DATE '2020-02-05', NULL, 32817), "  # ends 02-06; starts 26 days after 01-10: same era
    "(3, 1, 201826, DATE '2020-03-10', DATE '2020-03-12', 32817), "  # 33 days after 02-06: a new era
    "(4, 1, 0, DATE '2020-03-11', NULL, 32817), "  # unmapped: no era
    "(5, 2, 201826, DATE '2020-01-01', DATE '2020-01-05', 32817), "
    "(6, 3, 201826, DATE '2020-01-01', DATE '2020-01-02', 32817), "
    "(7, 3, 201826, DATE '2020-02-01', DATE '2020-02-01', 32817)",  # exactly 30 days after 01-02: same era
    "INSERT INTO drug_exposure (drug_exposure_id, person_id, drug_concept_id, drug_exposure_start_date, "
    "drug_exposure_end_date, drug_type_concept_id, quantity, days_supply) VALUES "
    f"(1, 1, {TABLET}, DATE '2020-01-01', DATE '2020-01-10', 32817, 20, 10), "
    f"(2, 1, {TABLET}, DATE '2020-01-05', DATE '2020-01-15', 32817, 20, 10), "  # overlaps the first
    f"(3, 1, {ACETAMINOPHEN}, DATE '2020-02-10', DATE '2020-02-15', 32817, NULL, 5), "
    f"(4, 1, {TABLET}, DATE '2020-04-01', DATE '2020-04-10', 32817, 10, 10)",  # 46 days after 02-15
]


def seeded(db: Database) -> Database:
    create_cdm(db.engine, constraints="none")
    for sql in ROWS:
        db.execute(sql)
    return db


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path):
    url = tmp_path / "eras.duckdb" if request.param == "duckdb" else request.getfixturevalue("postgres_url")
    database = seeded(connect(url))
    yield database
    database.dispose()


def rows(db: Database, sql: str) -> list[tuple]:
    return [tuple(r) for r in db.query(sql).iter_rows()]


def test_eras_equal_the_hand_computed_ones(db: Database) -> None:
    built = build_eras(db)
    assert built == {"condition_era": 4, "drug_era": 2, "dose_era": 2}
    assert rows(
        db,
        "SELECT person_id, condition_concept_id, condition_era_start_date, condition_era_end_date, "
        "condition_occurrence_count FROM condition_era ORDER BY condition_era_id",
    ) == [
        (1, 201826, D(2020, 1, 1), D(2020, 2, 6), 2),
        (1, 201826, D(2020, 3, 10), D(2020, 3, 12), 1),
        (2, 201826, D(2020, 1, 1), D(2020, 1, 5), 1),
        (3, 201826, D(2020, 1, 1), D(2020, 2, 1), 2),
    ]
    # era 1: 01-01..02-15 is 45 days; covered: 01-01..01-15 (14, the overlap once) + 02-10..02-15 (5) -> gap 26
    assert rows(
        db,
        "SELECT person_id, drug_concept_id, drug_era_start_date, drug_era_end_date, drug_exposure_count, gap_days "
        "FROM drug_era ORDER BY drug_era_id",
    ) == [
        (1, ACETAMINOPHEN, D(2020, 1, 1), D(2020, 2, 15), 3, 26),
        (1, ACETAMINOPHEN, D(2020, 4, 1), D(2020, 4, 10), 1, 0),
    ]
    # daily dose = quantity x 500 mg / days_supply: 20 x 500 / 10 = 1000 (exposures 1, 2), 10 x 500 / 10 = 500;
    # exposure 3 has no quantity, so no dose era
    assert rows(
        db,
        "SELECT person_id, drug_concept_id, unit_concept_id, dose_value, dose_era_start_date, dose_era_end_date "
        "FROM dose_era ORDER BY dose_era_start_date",
    ) == [
        (1, ACETAMINOPHEN, 8576, 1000.0, D(2020, 1, 1), D(2020, 1, 15)),
        (1, ACETAMINOPHEN, 8576, 500.0, D(2020, 4, 1), D(2020, 4, 10)),
    ]
    assert build_eras(db) == built  # rebuilt, not appended


def test_drug_end_dates_follow_the_ohdsi_era_script(tmp_path) -> None:
    """A NULL end with days_supply 0 lasts one day (NULLIF(start + days_supply, start) -> start + 1), a NULL end
    with days_supply 7 ends 7 days later, and an exposure with a negative days_supply makes no era
    (ETL-CMS create_CDMv5_drug_era.sql, as ETL-Synthea runs it)."""
    db = seeded(connect(tmp_path / "ends.duckdb"))
    try:  # v5.4 requires the end date; a CDM loaded from an older ETL may still lack it
        db.execute("ALTER TABLE drug_exposure ALTER COLUMN drug_exposure_end_date DROP NOT NULL")
        db.execute(
            "INSERT INTO drug_exposure (drug_exposure_id, person_id, drug_concept_id, drug_exposure_start_date, "
            "drug_exposure_end_date, drug_type_concept_id, quantity, days_supply) VALUES "
            f"(5, 5, {TABLET}, DATE '2021-01-01', NULL, 32817, 2, 0), "
            f"(6, 6, {TABLET}, DATE '2021-01-01', DATE '2021-01-10', 32817, 2, -5), "
            f"(7, 7, {TABLET}, DATE '2021-03-01', NULL, 32817, NULL, 7)"
        )
        build_eras(db)
        assert rows(
            db,
            "SELECT person_id, drug_era_start_date, drug_era_end_date, drug_exposure_count, gap_days FROM drug_era "
            "WHERE person_id >= 5 ORDER BY person_id",
        ) == [(5, D(2021, 1, 1), D(2021, 1, 2), 1, 0), (7, D(2021, 3, 1), D(2021, 3, 8), 1, 0)]
        # no dose: days_supply 0 (person 5), excluded (6), no quantity (7)
        assert rows(db, "SELECT person_id FROM dose_era WHERE person_id >= 5") == []
    finally:
        db.dispose()

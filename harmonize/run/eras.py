"""Era tables derived after the load, as OMOP ETLs build them: condition_era, drug_era and dose_era.

An era joins a person's records of one concept whose intervals lie within a persistence window of each other:
30 days for conditions (a record starting at most 30 days after the previous records' latest end continues the
era), 30 days for drugs after rolling each exposure up to its ingredient(s) through CONCEPT_ANCESTOR. Records
without an end last one day (conditions: end = start + 1 day, drugs: start + days_supply when days_supply is
above 0, else + 1 day), and exposures with a negative days_supply are left out, as in the OHDSI era scripts
(ETL-CMS create_CDMv5_drug_era.sql, used by ETL-Synthea). Unlike those, ingredients of RxNorm Extension count
too (European sites map to them). Eras are computed in SQL inside the site database (DuckDB or PostgreSQL), so nothing
but the counts leaves it; they are rebuilt from scratch each run (the tables are emptied first).

drug_era.gap_days is the era's length minus the days actually covered by its exposures (overlapping
exposures are first merged into sub-exposures, so overlap is not counted twice). dose_era is built only from
exposures whose daily dose is known: quantity, days_supply and the ingredient's DRUG_STRENGTH amount; an era is
a run of one ingredient at one daily dose (same unit), with the same 30-day window.
"""

from __future__ import annotations

from fedomop.harmonize.ground.db import Database

PERSISTENCE_DAYS = 30  # condition_era and drug_era: the OHDSI default persistence window
DOSE_PERSISTENCE_DAYS = 30


def _islands(source: str, keys: str, gap: int, sums: str = "SUM(n) AS n") -> str:
    """SQL grouping the rows of ``source`` (columns ``keys``, ``s``, ``e`` and ``n``) into islands: a row whose
    start is more than ``gap`` days after the latest end of the earlier rows of its keys opens a new island.
    Returns rows (keys, s, e, ``sums``) per island."""
    return (
        f"SELECT {keys}, MIN(s) AS s, MAX(e) AS e, {sums} FROM ("
        f"SELECT *, SUM(opens) OVER (PARTITION BY {keys} ORDER BY s, e ROWS UNBOUNDED PRECEDING) AS island FROM ("
        f"SELECT *, CASE WHEN s <= MAX(e) OVER (PARTITION BY {keys} ORDER BY s, e "
        f"ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) + {gap} THEN 0 ELSE 1 END AS opens FROM ({source}) r"
        f") marked) grouped GROUP BY {keys}, island"
    )


def condition_era_sql() -> str:
    """Condition eras of every mapped condition (concept 0 has no era)."""
    rows = (
        "SELECT person_id, condition_concept_id AS concept_id, condition_start_date AS s, "
        "COALESCE(condition_end_date, condition_start_date + 1) AS e, 1 AS n FROM condition_occurrence "
        "WHERE condition_concept_id <> 0 AND condition_start_date IS NOT NULL"
    )
    eras = _islands(rows, "person_id, concept_id", PERSISTENCE_DAYS)
    return (
        "INSERT INTO condition_era (condition_era_id, person_id, condition_concept_id, condition_era_start_date, "
        "condition_era_end_date, condition_occurrence_count) SELECT ROW_NUMBER() OVER (ORDER BY person_id, "
        f"concept_id, s), person_id, concept_id, s, e, n FROM ({eras}) eras"
    )


_INGREDIENT_EXPOSURES = (
    "SELECT de.person_id, ca.ancestor_concept_id AS concept_id, de.drug_concept_id, de.quantity, de.days_supply, "
    "de.drug_exposure_start_date AS s, COALESCE(de.drug_exposure_end_date, "
    "NULLIF(de.drug_exposure_start_date + de.days_supply, de.drug_exposure_start_date), "
    "de.drug_exposure_start_date + 1) AS e FROM drug_exposure de "
    "JOIN concept_ancestor ca ON ca.descendant_concept_id = de.drug_concept_id "
    "JOIN concept c ON c.concept_id = ca.ancestor_concept_id AND c.concept_class_id = 'Ingredient' "
    "AND c.vocabulary_id IN ('RxNorm', 'RxNorm Extension') "
    "WHERE de.drug_concept_id <> 0 AND de.drug_exposure_start_date IS NOT NULL AND COALESCE(de.days_supply, 0) >= 0"
)


def drug_era_sql() -> str:
    """Drug eras per ingredient: overlapping exposures merged into sub-exposures, then a 30-day window."""
    exposures = f"SELECT person_id, concept_id, s, e, 1 AS n FROM ({_INGREDIENT_EXPOSURES}) x"
    sub_exposures = _islands(exposures, "person_id, concept_id", 0)
    covered = f"SELECT person_id, concept_id, s, e, n, e - s AS covered FROM ({sub_exposures}) sub"
    eras = _islands(covered, "person_id, concept_id", PERSISTENCE_DAYS, "SUM(n) AS n, SUM(covered) AS covered")
    return (
        "INSERT INTO drug_era (drug_era_id, person_id, drug_concept_id, drug_era_start_date, drug_era_end_date, "
        "drug_exposure_count, gap_days) SELECT ROW_NUMBER() OVER (ORDER BY person_id, concept_id, s), person_id, "
        f"concept_id, s, e, n, (e - s) - covered FROM ({eras}) eras"
    )


def dose_era_sql() -> str:
    """Dose eras where the daily dose is known: quantity x strength amount / days_supply of the ingredient."""
    dosed = (
        "SELECT x.person_id, x.concept_id, ds.amount_unit_concept_id AS unit_concept_id, "
        "CAST(x.quantity * ds.amount_value / x.days_supply AS DOUBLE PRECISION) AS dose_value, x.s, x.e, 1 AS n "
        f"FROM ({_INGREDIENT_EXPOSURES}) x JOIN drug_strength ds ON ds.drug_concept_id = x.drug_concept_id "
        "AND ds.ingredient_concept_id = x.concept_id WHERE x.quantity > 0 AND x.days_supply > 0 "
        "AND ds.amount_value IS NOT NULL AND ds.amount_unit_concept_id IS NOT NULL"
    )
    eras = _islands(dosed, "person_id, concept_id, unit_concept_id, dose_value", DOSE_PERSISTENCE_DAYS)
    return (
        "INSERT INTO dose_era (dose_era_id, person_id, drug_concept_id, unit_concept_id, dose_value, "
        "dose_era_start_date, dose_era_end_date) SELECT ROW_NUMBER() OVER (ORDER BY person_id, concept_id, s, "
        f"dose_value), person_id, concept_id, unit_concept_id, dose_value, s, e FROM ({eras}) eras"
    )


def build_eras(db: Database) -> dict[str, int]:
    """Rebuild condition_era, drug_era and dose_era from the loaded rows; returns the rows per table."""
    built: dict[str, int] = {}
    for table, sql in (
        ("condition_era", condition_era_sql()),
        ("drug_era", drug_era_sql()),
        ("dose_era", dose_era_sql()),
    ):
        db.execute(f"DELETE FROM {table}")
        db.execute(sql)
        built[table] = int(db.scalar(f"SELECT COUNT(*) FROM {table}"))
    return built

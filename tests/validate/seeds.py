"""Seeded defects: SQL that breaks a clean copy of Eunomia in one known way, and the check that must catch it.

The SQL is plain enough to run unchanged on DuckDB and PostgreSQL (the parity test seeds both).
"""

from __future__ import annotations

from dataclasses import dataclass

GLUCOSE = 3000483  # LOINC 2339-0 Glucose [Mass/volume] in Blood; plausible unit mg/dL (8840) only
MMOL_PER_L = 8753


@dataclass(frozen=True)
class Defect:
    name: str
    sql: tuple[str, ...]
    check_id: str  # the check that must fail on the seeded copy (and pass on the clean one)


DEFECTS = (
    Defect(
        "wrong unit",
        (f"UPDATE measurement SET unit_concept_id = {MMOL_PER_L} WHERE measurement_concept_id = {GLUCOSE}",),
        f"plausibleUnitConceptIds.measurement.measurement_concept_id.{GLUCOSE}",
    ),
    Defect(
        "death before birth",
        ("UPDATE death SET death_date = DATE '1901-01-01' WHERE person_id = (SELECT MIN(person_id) FROM death)",),
        "plausibleAfterBirth.death.death_date",
    ),
    Defect(
        "unmapped codes",
        (
            "UPDATE condition_occurrence SET condition_concept_id = 0 WHERE condition_occurrence_id IN "
            "(SELECT condition_occurrence_id FROM condition_occurrence ORDER BY condition_occurrence_id LIMIT 60)",
        ),
        "standardConceptRecordCompleteness.condition_occurrence.condition_concept_id",
    ),
    Defect(
        "orphan rows",
        tuple(
            "INSERT INTO procedure_occurrence (procedure_occurrence_id, person_id, procedure_concept_id, "
            f"procedure_date, procedure_type_concept_id) VALUES ({9_000_000 + n}, 999999, 4107731, DATE '2015-03-0{n}', 32817)"
            for n in range(1, 4)
        ),
        "isForeignKey.procedure_occurrence.person_id",
    ),
    Defect(
        "duplicate primary key",
        ("INSERT INTO person SELECT * FROM person WHERE person_id = (SELECT MIN(person_id) FROM person)",),
        "isPrimaryKey.person.person_id",
    ),
    Defect(
        "value out of plausible range",
        ("UPDATE person SET month_of_birth = 13 WHERE person_id = (SELECT MAX(person_id) FROM person)",),
        "plausibleValueHigh.person.month_of_birth",
    ),
    Defect(
        "visit ends before it starts",
        (
            "UPDATE visit_occurrence SET visit_end_date = visit_start_date - 5 WHERE visit_occurrence_id IN "
            "(SELECT visit_occurrence_id FROM visit_occurrence ORDER BY visit_occurrence_id LIMIT 100)",
        ),
        "plausibleStartBeforeEnd.visit_occurrence.visit_start_date",
    ),
)


def seed(db: object, defects: tuple[Defect, ...] = DEFECTS) -> None:
    for defect in defects:
        for statement in defect.sql:
            db.execute(statement)  # type: ignore[attr-defined]

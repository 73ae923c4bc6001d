"""Concept-level DQD checks (plausible gender, with descendants, plausible units).

The catalogue has hundreds of concept rows per table; instead of one query per concept,
each (table, field) gets one query that joins an inline ``VALUES`` list of the
concepts with their parameters and groups by concept, so a table is scanned once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from fedomop.harmonize.validate.catalogue import CheckType, Row
from fedomop.harmonize.validate.checks.base import CheckContext, CheckInstance, CheckQuery, CheckWork, q, register_check

GENDER_CONCEPTS = {"Male": 8507, "Female": 8532}  # OMOP standard Gender concepts


def _by_field(ctx: CheckContext, name: str) -> dict[tuple[str, str], list[Row]]:
    """Concept rows with a value in column ``name``, grouped by (table, field)."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in ctx.catalogue.concept_rows:
        if row.get(name, "").strip():
            groups.setdefault((row["cdmTableName"].lower(), row["cdmFieldName"].lower()), []).append(row)
    return groups


def _instances(ctx: CheckContext, check: CheckType, rows: list[Row]) -> list[CheckInstance]:
    return [
        ctx.instance(
            check,
            row,
            concept_id=_concept_ids(row)[0] if len(_concept_ids(row)) == 1 else row["conceptId"].replace(" ", ""),
            unit_concept_id=int(row["unitConceptId"]) if row.get("unitConceptId") else None,
        )
        for row in rows
    ]


def _concept_ids(row: Row) -> list[int]:
    """The row's concept ids: usually one, a comma-separated list for some descendant checks."""
    return [int(part) for part in row["conceptId"].split(",") if part.strip()]


def _values(rows: Sequence[tuple[object, ...]], columns: str) -> str:
    body = ", ".join("(" + ", ".join(str(v) for v in row) + ")" for row in rows)
    return f"(VALUES {body}) AS v({columns})"


def _absent_all(ctx: CheckContext, instances: list[CheckInstance], *needs: tuple[str, str | None]) -> list[CheckWork]:
    absent = [ctx.missing(i, *needs) for i in instances]
    return [a for a in absent if a is not None]


def _gender_check(ctx: CheckContext, name: str, descendants: bool) -> Iterator[CheckWork]:
    check = ctx.catalogue.check_types[name]
    for (table, column), rows in _by_field(ctx, name).items():
        instances = _instances(ctx, check, rows)
        needs: list[tuple[str, str | None]] = [(table, column), (table, "person_id"), ("person", "gender_concept_id")]
        if descendants:
            needs.append(("concept_ancestor", "descendant_concept_id"))
        absent = _absent_all(ctx, instances, *needs)
        if absent:
            yield from absent
            continue
        values = _values(
            [(k, cid, GENDER_CONCEPTS[row[name]]) for k, row in enumerate(rows) for cid in _concept_ids(row)],
            "k, concept_id, gender",
        )
        concept_join = (
            f"JOIN concept_ancestor ca ON ca.descendant_concept_id = t.{q(column)} "
            f"JOIN {values} ON v.concept_id = ca.ancestor_concept_id"
            if descendants
            else f"JOIN {values} ON v.concept_id = t.{q(column)}"
        )
        yield CheckQuery(
            f"SELECT v.k AS check_key, SUM(CASE WHEN p.gender_concept_id <> v.gender THEN 1 ELSE 0 END) "
            f"AS num_violated_rows, COUNT(*) AS num_denominator_rows FROM {q(table)} t {concept_join} "
            f"LEFT JOIN person p ON p.person_id = t.person_id GROUP BY v.k",  # orphan rows count, never violate
            tuple(instances),
            tuple(_gender_rows_sql(table, column, row[name], _concept_ids(row), descendants) for row in rows),
        )


def _gender_rows_sql(table: str, column: str, gender: str, concept_ids: list[int], descendants: bool) -> str:
    ids = ", ".join(str(c) for c in concept_ids)
    where = (
        f"t.{q(column)} IN (SELECT descendant_concept_id FROM concept_ancestor WHERE ancestor_concept_id IN ({ids}))"
        if descendants
        else f"t.{q(column)} IN ({ids})"
    )
    return (
        f"SELECT t.* FROM {q(table)} t JOIN person p ON p.person_id = t.person_id "
        f"WHERE {where} AND p.gender_concept_id <> {GENDER_CONCEPTS[gender]}"
    )


@register_check("plausibleGender")
def plausible_gender(ctx: CheckContext) -> Iterator[CheckWork]:
    """Records of a sex-specific concept (e.g. prostate cancer) on persons of the other gender, out of all records
    of the concept (a record whose person is missing, or has no gender, counts and never violates, as in DQD)."""
    yield from _gender_check(ctx, "plausibleGender", descendants=False)


@register_check("plausibleGenderUseDescendants")
def plausible_gender_use_descendants(ctx: CheckContext) -> Iterator[CheckWork]:
    """As plausibleGender, for every descendant of the concept (through concept_ancestor)."""
    yield from _gender_check(ctx, "plausibleGenderUseDescendants", descendants=True)


@register_check("plausibleUnitConceptIds")
def plausible_unit_concept_ids(ctx: CheckContext) -> Iterator[CheckWork]:
    """Records of the concept whose unit is not one of its plausible units (a list of just -1: no unit allowed).

    As in DQD: a NULL unit never violates, unit 0 is neither counted nor violating (that is
    standardConceptRecordCompleteness' job), and rows count whether or not they carry a value.
    """
    check = ctx.catalogue.check_types["plausibleUnitConceptIds"]
    for (table, column), rows in _by_field(ctx, "plausibleUnitConceptIds").items():
        instances = _instances(ctx, check, rows)
        absent = _absent_all(ctx, instances, (table, column), (table, "unit_concept_id"))
        if absent:
            yield from absent
            continue
        concepts = _values([(k, cid) for k, row in enumerate(rows) for cid in _concept_ids(row)], "k, concept_id")
        units = [(-1, -1)]  # never joins (keys start at 0); keeps the VALUES list non-empty when every list is -1
        for k, row in enumerate(rows):
            allowed = [int(u) for u in row["plausibleUnitConceptIds"].split(",") if u.strip()]
            units += [(k, unit) for unit in allowed if allowed != [-1]]
        unit_values = _values(units, "k, unit_concept_id").replace("AS v(", "AS u(")
        yield CheckQuery(
            f"SELECT v.k AS check_key, SUM(CASE WHEN t.unit_concept_id IS NOT NULL AND t.unit_concept_id <> 0 "
            f"AND u.k IS NULL THEN 1 ELSE 0 END) AS num_violated_rows, COUNT(*) AS num_denominator_rows "
            f"FROM {q(table)} t JOIN {concepts} ON v.concept_id = t.{q(column)} "
            f"LEFT JOIN {unit_values} ON u.k = v.k AND u.unit_concept_id = t.unit_concept_id "
            f"WHERE t.unit_concept_id <> 0 OR t.unit_concept_id IS NULL GROUP BY v.k",
            tuple(instances),
            tuple(_unit_rows_sql(table, column, row) for row in rows),
        )


def _unit_rows_sql(table: str, column: str, row: Row) -> str:
    allowed = [u.strip() for u in row["plausibleUnitConceptIds"].split(",") if u.strip()]
    unit_rule = "" if allowed == ["-1"] else f" AND unit_concept_id NOT IN ({', '.join(allowed)})"
    ids = ", ".join(str(c) for c in _concept_ids(row))
    return (
        f"SELECT * FROM {q(table)} WHERE {q(column)} IN ({ids}) AND unit_concept_id IS NOT NULL "
        f"AND unit_concept_id <> 0{unit_rule}"
    )

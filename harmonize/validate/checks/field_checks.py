"""Field-level DQD conformance and completeness checks, one registered function per check type.

Each reads its rows (table, field, threshold, parameters) from the DQD field-level CSV
and returns SQL; simple row conditions are :class:`RowPredicate` so that all of a
table's conditions are counted in one scan.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources

from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.validate.checks.base import (
    Absent,
    CheckContext,
    CheckInstance,
    CheckWork,
    RowPredicate,
    q,
    register_check,
    scalar_query,
)

_INTEGER_TYPES = re.compile(r"^(TINYINT|SMALLINT|INTEGER|INT|BIGINT|HUGEINT|INT2|INT4|INT8|UINTEGER|UBIGINT)$", re.I)


def _field_instances(ctx: CheckContext, name: str) -> Iterator[tuple[CheckInstance, Absent | None]]:
    """(instance, why it cannot run or None) for each catalogue row of a field-level check."""
    for check, row in ctx.catalogue_rows(name):
        instance = ctx.instance(check, row)
        yield instance, ctx.missing(instance, (instance.table, instance.field))


@register_check("cdmField")
def cdm_field(ctx: CheckContext) -> Iterator[CheckWork]:
    """1 of 1 when the field is missing from a table that is present (a missing table is ``cdmTable``'s job)."""
    for check, row in ctx.catalogue_rows("cdmField"):
        instance = ctx.instance(check, row)
        absent = ctx.missing(instance, (instance.table, None))
        if absent:
            yield absent
            continue
        missing = 0 if ctx.has_field(instance.table, instance.field or "") else 1
        yield scalar_query(instance, f"SELECT {missing}", "SELECT 1")


def _row_predicates(ctx: CheckContext, name: str, violated: str, denominator: str = "1 = 1") -> Iterator[CheckWork]:
    """A RowPredicate per catalogue row; ``{c}`` in the SQL stands for the quoted field."""
    for instance, absent in _field_instances(ctx, name):
        column = ctx.col(instance.table, instance.field)
        yield absent or RowPredicate(instance, violated.format(c=column), denominator.format(c=column))


@register_check("isRequired")
def is_required(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows with a NULL in a field the spec says is required."""
    yield from _row_predicates(ctx, "isRequired", "{c} IS NULL")


@register_check("measureValueCompleteness")
def measure_value_completeness(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows with a NULL in the field (characterization: how complete is it)."""
    yield from _row_predicates(ctx, "measureValueCompleteness", "{c} IS NULL")


@lru_cache(maxsize=1)
def _source_value_pairs() -> list[dict[str, str]]:
    """DQD's pairs of an optional concept field and the source value it is mapped from (recorded as data from
    field_concept_record_completeness.sql): a NULL concept with a source value is unmapped too."""
    path = resources.files("fedomop.harmonize.validate") / "data" / "dqd_concept_source_values.csv"
    with path.open("rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _paired_source_value(ctx: CheckContext, table: str, column: str) -> str | None:
    for pair in _source_value_pairs():
        if pair["concept_field"] != column or table == pair["except_table"]:
            continue
        if pair["only_table"] and table != pair["only_table"]:
            continue
        if ctx.has_field(table, pair["source_value_field"]):
            return ctx.col(table, pair["source_value_field"])
    return None


def _concept_record_completeness(ctx: CheckContext, name: str) -> Iterator[CheckWork]:
    """Rows whose concept is 0, or NULL while its source value is given, out of the rows with either."""
    for instance, absent in _field_instances(ctx, name):
        if absent:
            yield absent
            continue
        c = ctx.col(instance.table, instance.field)
        source = _paired_source_value(ctx, instance.table, instance.field or "")
        if source is None:
            yield RowPredicate(instance, f"{c} = 0", f"{c} IS NOT NULL")
            continue
        yield RowPredicate(
            instance, f"{c} = 0 OR ({c} IS NULL AND {source} IS NOT NULL)", f"{c} IS NOT NULL OR {source} IS NOT NULL"
        )


@register_check("standardConceptRecordCompleteness")
def standard_concept_record_completeness(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose standard concept is 0 (no standard concept found: unmapped)."""
    yield from _concept_record_completeness(ctx, "standardConceptRecordCompleteness")


@register_check("sourceConceptRecordCompleteness")
def source_concept_record_completeness(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose source concept is 0 (the source code is not in the vocabulary)."""
    yield from _concept_record_completeness(ctx, "sourceConceptRecordCompleteness")


@register_check("cdmDatatype")
def cdm_datatype(ctx: CheckContext) -> Iterator[CheckWork]:
    """Values of an integer field that are not whole numbers, out of all rows (NULLs count in the denominator, as in
    DQD's field_cdm_datatype.sql); free when the column is an integer type."""
    for instance, absent in _field_instances(ctx, "cdmDatatype"):
        if absent:
            yield absent
            continue
        column = ctx.col(instance.table, instance.field)
        native = _INTEGER_TYPES.match(ctx.column_type(instance.table, instance.field or "").strip())
        violated = "1 = 0" if native else ctx.not_integer(column)
        yield RowPredicate(instance, violated)


@register_check("isPrimaryKey")
def is_primary_key(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose primary-key value occurs more than once."""
    for instance, absent in _field_instances(ctx, "isPrimaryKey"):
        if absent:
            yield absent
            continue
        t, c = q(instance.table), ctx.col(instance.table, instance.field)
        yield scalar_query(
            instance,
            f"SELECT COUNT(*) FROM {t} WHERE {c} IN (SELECT {c} FROM {t} GROUP BY {c} HAVING COUNT(*) > 1)",
            f"SELECT COUNT(*) FROM {t}",
        )


@register_check("isForeignKey")
def is_foreign_key(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose (non-null) value is not found in the referenced table: orphans."""
    for check, row in ctx.catalogue_rows("isForeignKey"):
        instance = ctx.instance(check, row)
        fk_table, fk_field = row["fkTableName"].lower(), row["fkFieldName"].lower()
        absent = ctx.missing(instance, (instance.table, instance.field), (fk_table, fk_field))
        if absent:
            yield absent
            continue
        t, c = q(instance.table), ctx.col(instance.table, instance.field)
        yield scalar_query(
            instance,
            f"SELECT COUNT(*) FROM {t} x WHERE x.{c} IS NOT NULL AND NOT EXISTS "
            f"(SELECT 1 FROM {q(fk_table)} f WHERE f.{q(fk_field)} = x.{c})",
            f"SELECT COUNT(*) FROM {t}",
        )


def _concept_attribute_check(
    ctx: CheckContext, name: str, condition: str, denominator: str = ""
) -> Iterator[CheckWork]:
    """Rows whose concept (other than 0) fails ``condition`` (SQL on alias ``co``, ``{row}`` filled from the row)."""
    for check, row in ctx.catalogue_rows(name):
        instance = ctx.instance(check, row)
        absent = ctx.missing(instance, (instance.table, instance.field), ("concept", "concept_id"))
        if absent:
            yield absent
            continue
        t, c = q(instance.table), ctx.col(instance.table, instance.field)
        predicate = condition.format(**{k: _sql_text(v) for k, v in row.items()})
        yield scalar_query(
            instance,
            f"SELECT COUNT(*) FROM {t} x JOIN concept co ON co.concept_id = x.{c} "
            f"WHERE co.concept_id <> 0 AND ({predicate})",
            f"SELECT COUNT(*) FROM {t} {denominator.format(c=c)}",
        )


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@register_check("fkDomain")
def fk_domain(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose concept belongs to another domain than the field's (e.g. a drug in condition_concept_id)."""
    yield from _concept_attribute_check(ctx, "fkDomain", "co.domain_id <> {fkDomain}")


@register_check("fkClass")
def fk_class(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose concept is of another concept class than the field requires."""
    yield from _concept_attribute_check(ctx, "fkClass", "co.concept_class_id <> {fkClass}")


@register_check("isStandardValidConcept")
def is_standard_valid_concept(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose concept (not 0) is not a standard, valid concept, out of the rows with a concept."""
    yield from _concept_attribute_check(
        ctx,
        "isStandardValidConcept",
        "COALESCE(co.standard_concept, '') <> 'S' OR co.invalid_reason IS NOT NULL",
        "WHERE {c} IS NOT NULL",
    )


@register_check("sourceValueCompleteness")
def source_value_completeness(ctx: CheckContext) -> Iterator[CheckWork]:
    """Distinct source values whose standard concept is 0, out of all distinct source values (NULL counts as one
    value in both, as in DQD)."""
    for check, row in ctx.catalogue_rows("sourceValueCompleteness"):
        instance = ctx.instance(check, row)
        standard = row.get("standardConceptFieldName", "").lower()
        absent = ctx.missing(instance, (instance.table, instance.field), (instance.table, standard or None))
        if absent or not standard:
            yield absent or Absent(instance, "the catalogue row names no standardConceptFieldName")
            continue
        t, c, s = q(instance.table), ctx.col(instance.table, instance.field), ctx.col(instance.table, standard)
        yield scalar_query(
            instance,
            f"SELECT COUNT(DISTINCT CASE WHEN {s} = 0 THEN {c} END) "
            f"+ MAX(CASE WHEN {s} = 0 AND {c} IS NULL THEN 1 ELSE 0 END) FROM {t}",
            f"SELECT COUNT(DISTINCT {c}) + MAX(CASE WHEN {c} IS NULL THEN 1 ELSE 0 END) FROM {t}",
            f"SELECT DISTINCT {c} FROM {t} WHERE {s} = 0",  # NULL is one of the distinct values listed
        )


# -- plausible values ------------------------------------------------------------------------------------------


def plausible_bound_sql(ctx: CheckContext, text: str) -> tuple[str, bool]:
    """Translate a catalogue bound into SQL: (literal, is_date). The catalogue writes SQL Server expressions
    (``'19500101'``, ``YEAR(GETDATE())+1``, ``DATEADD(dd,1,GETDATE())``); they are evaluated here, once."""
    text = text.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return text, False
    if match := re.fullmatch(r"'(\d{4})(\d{2})(\d{2})'", text):
        return f"DATE '{match[1]}-{match[2]}-{match[3]}'", True
    if match := re.fullmatch(r"YEAR\(GETDATE\(\)\)\s*([+-]\s*\d+)?", text, re.I):
        return str(ctx.today.year + int((match[1] or "0").replace(" ", ""))), False
    if match := re.fullmatch(r"DATEADD\(dd,\s*(-?\d+),\s*GETDATE\(\)\)", text, re.I):
        return f"DATE '{(ctx.today + dt.timedelta(days=int(match[1]))).isoformat()}'", True
    raise ValidationError(
        f"cannot read plausible value bound {text!r}",
        fix="write a number, a date as 'YYYYMMDD', YEAR(GETDATE())+n or DATEADD(dd,n,GETDATE())",
    )


def _plausible_value(ctx: CheckContext, name: str, operator: str) -> Iterator[CheckWork]:
    for check, row in ctx.catalogue_rows(name):
        instance = ctx.instance(check, row)
        absent = ctx.missing(instance, (instance.table, instance.field))
        if absent:
            yield absent
            continue
        bound, is_date = plausible_bound_sql(ctx, row[name])
        c = ctx.col(instance.table, instance.field)
        value = f"CAST({c} AS DATE)" if is_date else c
        yield RowPredicate(instance, f"{value} {operator} {bound}", f"{c} IS NOT NULL")


@register_check("plausibleValueLow")
def plausible_value_low(ctx: CheckContext) -> Iterator[CheckWork]:
    """Values below the plausible minimum of the field. Per field only: the v5.4 check descriptions list this check
    at FIELD level alone, so DQD does not run the concept-level rows' bounds (concept_plausible_value_low.sql)."""
    yield from _plausible_value(ctx, "plausibleValueLow", "<")


@register_check("plausibleValueHigh")
def plausible_value_high(ctx: CheckContext) -> Iterator[CheckWork]:
    """Values above the plausible maximum of the field (per field only, as plausibleValueLow)."""
    yield from _plausible_value(ctx, "plausibleValueHigh", ">")

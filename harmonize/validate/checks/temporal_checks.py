"""Temporal plausibility checks: events after birth, before death, within visits, starts before ends."""

from __future__ import annotations

from collections.abc import Iterator

from fedomop.harmonize.validate.checks.base import (
    CheckContext,
    CheckWork,
    RowPredicate,
    birth_date_sql,
    q,
    register_check,
    scalar_query,
)

# Records up to this many days after death are accepted (claims and autopsy reports trail the death date).
DEATH_GRACE_DAYS = 60
# withinVisitDates: records may fall this many days either side of their visit.
VISIT_WINDOW_DAYS = 7

_DEATH = "(SELECT person_id, MIN(death_date) AS death_date FROM death GROUP BY person_id)"


def _as_date(expression: str) -> str:
    return f"CAST({expression} AS DATE)"


@register_check("plausibleTemporalAfter")
def plausible_temporal_after(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose date is before the date it must follow (same row, or the person's birth)."""
    for check, row in ctx.catalogue_rows("plausibleTemporalAfter"):
        instance = ctx.instance(check, row)
        other_table = row["plausibleTemporalAfterTableName"].lower()
        other_field = row["plausibleTemporalAfterFieldName"].lower()
        absent = ctx.missing(instance, (instance.table, instance.field), (other_table, other_field))
        if absent:
            yield absent
            continue
        c = ctx.col(instance.table, instance.field)
        if other_table == instance.table:
            yield RowPredicate(
                instance, f"{_as_date(ctx.col(other_table, other_field))} > {_as_date(c)}", f"{c} IS NOT NULL"
            )
            continue
        after = (
            birth_date_sql("o")
            if (other_table, other_field) == ("person", "birth_datetime")
            else _as_date(f"o.{ctx.col(other_table, other_field)}")
        )
        t = q(instance.table)
        yield scalar_query(
            instance,
            f"SELECT COUNT(*) FROM {t} x JOIN {q(other_table)} o ON o.person_id = x.person_id "
            f"WHERE {after} > {_as_date('x.' + c)}",
            f"SELECT COUNT(*) FROM {t} WHERE {c} IS NOT NULL",
        )


def _joined_date_check(
    ctx: CheckContext, name: str, key: str, other: tuple[str, str], join: str, violation: str
) -> Iterator[CheckWork]:
    """Rows of each catalogue table joined (on ``key``) to ``join``, violating ``violation``; ``{d}`` in it stands
    for the row's date. The denominator is every row with a date (rows without a partner row cannot violate)."""
    for check, row in ctx.catalogue_rows(name):
        instance = ctx.instance(check, row)
        absent = ctx.missing(instance, (instance.table, instance.field), (instance.table, key))
        absent = absent or ctx.missing(instance, other)
        if absent:
            yield absent
            continue
        t, c = q(instance.table), ctx.col(instance.table, instance.field)
        yield scalar_query(
            instance,
            f"SELECT COUNT(*) FROM {t} x {join} WHERE {violation.format(d=_as_date('x.' + c))}",
            f"SELECT COUNT(*) FROM {t} WHERE {c} IS NOT NULL",
        )


def _after_death(ctx: CheckContext, name: str) -> Iterator[CheckWork]:
    yield from _joined_date_check(
        ctx,
        name,
        "person_id",
        ("death", "death_date"),
        f"JOIN {_DEATH} d ON d.person_id = x.person_id",
        f"{{d}} > d.death_date + INTERVAL '{DEATH_GRACE_DAYS} days'",
    )


@register_check("plausibleDuringLife")
def plausible_during_life(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows dated more than 60 days after the person's death."""
    yield from _after_death(ctx, "plausibleDuringLife")


@register_check("plausibleBeforeDeath")
def plausible_before_death(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows dated more than 60 days after the person's death (DQD keeps both names for this test)."""
    yield from _after_death(ctx, "plausibleBeforeDeath")


@register_check("plausibleAfterBirth")
def plausible_after_birth(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows dated before the person's birth (including a death recorded before birth)."""
    yield from _joined_date_check(
        ctx,
        "plausibleAfterBirth",
        "person_id",
        ("person", "year_of_birth"),
        "JOIN person p ON p.person_id = x.person_id",
        f"{birth_date_sql('p')} > {{d}}",
    )


@register_check("plausibleStartBeforeEnd")
def plausible_start_before_end(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose start is after their end (e.g. a visit that ends before it starts)."""
    for check, row in ctx.catalogue_rows("plausibleStartBeforeEnd"):
        instance = ctx.instance(check, row)
        end = row["plausibleStartBeforeEndFieldName"].lower()
        absent = ctx.missing(instance, (instance.table, instance.field), (instance.table, end))
        if absent:
            yield absent
            continue
        start, stop = ctx.col(instance.table, instance.field), ctx.col(instance.table, end)
        yield RowPredicate(instance, f"{start} > {stop}", f"{start} IS NOT NULL AND {stop} IS NOT NULL")


@register_check("withinVisitDates")
def within_visit_dates(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows dated more than a week before their visit starts or after it ends."""
    window = f"INTERVAL '{VISIT_WINDOW_DAYS} days'"
    yield from _joined_date_check(
        ctx,
        "withinVisitDates",
        "visit_occurrence_id",
        ("visit_occurrence", "visit_end_date"),
        "JOIN visit_occurrence vo ON vo.visit_occurrence_id = x.visit_occurrence_id",
        f"({{d}} < vo.visit_start_date - {window} OR {{d}} > vo.visit_end_date + {window})",
    )

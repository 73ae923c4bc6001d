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


def _as_date(expression: str) -> str:
    return f"CAST({expression} AS DATE)"


def _birth_mid_year(person_alias: str) -> str:
    """Birth date for plausibleTemporalAfter: birth_datetime, else 1 June of the year of birth (DQD's choice:
    the middle of the year errs least when month and day are unknown)."""
    p = person_alias
    return f"COALESCE(CAST({p}.birth_datetime AS DATE), make_date({p}.year_of_birth, 6, 1))"


@register_check("plausibleTemporalAfter")
def plausible_temporal_after(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows whose date is before the date it must follow (same row, or the person's birth); every row counts in
    the denominator, a NULL date never violates."""
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
            after = _birth_mid_year(q(other_table)) if other_table == "person" else _as_date(ctx.col("", other_field))
            yield RowPredicate(instance, f"{after} > {_as_date(c)}")
            continue
        after = _birth_mid_year("o") if other_table == "person" else _as_date(f"x.{ctx.col('', other_field)}")
        t = q(instance.table)
        yield scalar_query(
            instance,
            f"SELECT COUNT(*) FROM {t} x JOIN {q(other_table)} o ON o.person_id = x.person_id "
            f"WHERE {after} > {_as_date('x.' + c)}",
            f"SELECT COUNT(*) FROM {t}",
        )


def _joined_date_check(
    ctx: CheckContext, name: str, key: str, other: tuple[str, str], join: str, violation: str, denominator: str
) -> Iterator[CheckWork]:
    """Rows of each catalogue table joined (on ``key``) to ``join``, violating ``violation``; ``{d}`` in it stands
    for the row's date, ``{c}`` for the field; ``denominator`` is the FROM/WHERE tail counted as the denominator
    (after ``FROM <table> x``)."""
    for check, row in ctx.catalogue_rows(name):
        instance = ctx.instance(check, row)
        absent = ctx.missing(instance, (instance.table, instance.field), (instance.table, key))
        absent = absent or ctx.missing(instance, other)
        if absent:
            yield absent
            continue
        t, c = q(instance.table), "x." + ctx.col(instance.table, instance.field)
        yield scalar_query(
            instance,
            f"SELECT COUNT(*) FROM {t} x {join} WHERE {violation.format(d=_as_date(c), c=c)}",
            f"SELECT COUNT(*) FROM {t} x {denominator.format(c=c)}",
        )


_DEATH_JOIN = "JOIN death d ON d.person_id = x.person_id"  # as DQD: one row per death record
_AFTER_DEATH = f"{{d}} > CAST(d.death_date AS DATE) + INTERVAL '{DEATH_GRACE_DAYS} days'"


@register_check("plausibleDuringLife")
def plausible_during_life(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows dated more than 60 days after the person's death, out of the rows of persons who died."""
    yield from _joined_date_check(
        ctx,
        "plausibleDuringLife",
        "person_id",
        ("death", "death_date"),
        _DEATH_JOIN,
        _AFTER_DEATH,
        "WHERE x.person_id IN (SELECT person_id FROM death)",
    )


@register_check("plausibleBeforeDeath")
def plausible_before_death(ctx: CheckContext) -> Iterator[CheckWork]:
    """As plausibleDuringLife, out of the dated rows joined to a death record (DQD keeps both names)."""
    yield from _joined_date_check(
        ctx,
        "plausibleBeforeDeath",
        "person_id",
        ("death", "death_date"),
        _DEATH_JOIN,
        f"{{c}} IS NOT NULL AND {_AFTER_DEATH}",
        f"{_DEATH_JOIN} WHERE {{c}} IS NOT NULL",
    )


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
        "WHERE {c} IS NOT NULL",
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
        yield RowPredicate(  # dates, not timestamps: a visit starting and ending the same day is fine
            instance, f"{_as_date(start)} > {_as_date(stop)}", f"{start} IS NOT NULL AND {stop} IS NOT NULL"
        )


@register_check("withinVisitDates")
def within_visit_dates(ctx: CheckContext) -> Iterator[CheckWork]:
    """Rows dated more than a week before their visit starts or after it ends, out of the rows with a visit."""
    window = f"INTERVAL '{VISIT_WINDOW_DAYS} days'"
    visit = "JOIN visit_occurrence vo ON vo.visit_occurrence_id = x.visit_occurrence_id"
    yield from _joined_date_check(
        ctx,
        "withinVisitDates",
        "visit_occurrence_id",
        ("visit_occurrence", "visit_end_date"),
        visit,
        f"({{c}} < CAST(vo.visit_start_date - {window} AS DATE) OR {{c}} > CAST(vo.visit_end_date + {window} AS DATE))",
        visit,
    )

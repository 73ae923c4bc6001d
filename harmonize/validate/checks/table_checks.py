"""Table-level DQD checks: is the table there, does every person have a record, are periods sane."""

from __future__ import annotations

from collections.abc import Iterator

from fedomop.harmonize.validate.checks.base import CheckContext, CheckQuery, CheckWork, q, register_check


@register_check("cdmTable")
def cdm_table(ctx: CheckContext) -> Iterator[CheckWork]:
    """1 violation out of 1 when the table is missing from the database."""
    for check, row in ctx.catalogue_rows("cdmTable"):
        instance = ctx.instance(check, row)
        present = 1 if ctx.has_table(instance.table) else 0
        yield CheckQuery(
            f"SELECT 0 AS check_key, {1 - present} AS num_violated_rows, 1 AS num_denominator_rows", (instance,)
        )


@register_check("measurePersonCompleteness")
def measure_person_completeness(ctx: CheckContext) -> Iterator[CheckWork]:
    """Persons with no record at all in the table, out of all persons."""
    for check, row in ctx.catalogue_rows("measurePersonCompleteness"):
        instance = ctx.instance(check, row)
        absent = ctx.missing(instance, ("person", "person_id"), (instance.table, "person_id"))
        if absent:
            yield absent
            continue
        yield CheckQuery(
            f"SELECT 0 AS check_key, "
            f"(SELECT COUNT(*) FROM person p WHERE NOT EXISTS "
            f"(SELECT 1 FROM {q(instance.table)} t WHERE t.person_id = p.person_id)) AS num_violated_rows, "
            f"(SELECT COUNT(*) FROM person) AS num_denominator_rows",
            (instance,),
            (
                f"SELECT p.* FROM person p WHERE NOT EXISTS (SELECT 1 FROM {q(instance.table)} t "
                "WHERE t.person_id = p.person_id)",
            ),
        )


@register_check("measureConditionEraCompleteness")
def measure_condition_era_completeness(ctx: CheckContext) -> Iterator[CheckWork]:
    """Persons with a mapped condition occurrence (concept not 0) but no condition era (eras not built for them)."""
    for check, row in ctx.catalogue_rows("measureConditionEraCompleteness"):
        instance = ctx.instance(check, row)
        absent = ctx.missing(instance, ("condition_occurrence", "person_id"), ("condition_era", "person_id"))
        if absent:
            yield absent
            continue
        yield CheckQuery(
            "SELECT 0 AS check_key, "
            "(SELECT COUNT(DISTINCT co.person_id) FROM condition_occurrence co WHERE co.condition_concept_id <> 0 "
            "AND NOT EXISTS (SELECT 1 FROM condition_era ce WHERE ce.person_id = co.person_id)) AS num_violated_rows, "
            "(SELECT COUNT(DISTINCT person_id) FROM condition_occurrence WHERE condition_concept_id <> 0) "
            "AS num_denominator_rows",
            (instance,),
            (
                "SELECT DISTINCT co.person_id FROM condition_occurrence co WHERE co.condition_concept_id <> 0 "
                "AND NOT EXISTS (SELECT 1 FROM condition_era ce WHERE ce.person_id = co.person_id)",
            ),
        )


@register_check("measureObservationPeriodOverlap")
def measure_observation_period_overlap(ctx: CheckContext) -> Iterator[CheckWork]:
    """Persons with two observation periods that overlap or touch (start on or the day after another's end)."""
    for check, row in ctx.catalogue_rows("measureObservationPeriodOverlap"):
        instance = ctx.instance(check, row)
        absent = ctx.missing(instance, ("observation_period", "observation_period_id"))
        if absent:
            yield absent
            continue
        yield CheckQuery(
            "SELECT 0 AS check_key, "
            "(SELECT COUNT(DISTINCT a.person_id) FROM observation_period a JOIN observation_period b "
            "ON a.person_id = b.person_id AND a.observation_period_id <> b.observation_period_id "
            "AND b.observation_period_start_date >= a.observation_period_start_date "
            "AND b.observation_period_start_date <= a.observation_period_end_date + INTERVAL '1 day') "
            "AS num_violated_rows, "
            "(SELECT COUNT(DISTINCT person_id) FROM observation_period) AS num_denominator_rows",
            (instance,),
            (
                "SELECT DISTINCT a.person_id FROM observation_period a "
                "JOIN observation_period b ON a.person_id = b.person_id "
                "AND a.observation_period_id <> b.observation_period_id "
                "AND b.observation_period_start_date >= a.observation_period_start_date "
                "AND b.observation_period_start_date <= a.observation_period_end_date + INTERVAL '1 day'",
            ),
        )

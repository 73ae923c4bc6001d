"""person: one row per patient; ``start`` is the birth date, from which year/month/day of birth derive."""

import polars as pl

from fedomop.harmonize.tables._target import TableTarget


def _birth_parts(frame: pl.DataFrame) -> pl.DataFrame:
    """Year/month/day of birth from the birth date; a partial FHIR birthDate (``1960``, ``1961-07``) gives only
    the parts it has: month/day of birth and birth_datetime stay NULL (the CDM requires only year_of_birth)."""
    born = pl.coalesce(pl.col("birth_datetime").cast(pl.Date), pl.col("_birth_date"))
    given = pl.col("_start_precision") if "_start_precision" in frame.columns else pl.lit(None, pl.String)
    has_month = given.is_null() | given.is_in(["month", "day", "time"])
    has_day = given.is_null() | given.is_in(["day", "time"])
    return frame.with_columns(
        pl.coalesce("year_of_birth", born.dt.year()).alias("year_of_birth"),
        pl.coalesce("month_of_birth", pl.when(has_month).then(born.dt.month())).alias("month_of_birth"),
        pl.coalesce("day_of_birth", pl.when(has_day).then(born.dt.day())).alias("day_of_birth"),
        pl.when(has_day).then(pl.col("birth_datetime")).alias("birth_datetime"),
        *(pl.col(c).fill_null(0) for c in ("gender_concept_id", "race_concept_id", "ethnicity_concept_id")),
    ).drop("_birth_date", *(["_start_precision"] if "_start_precision" in frame.columns else []))


TARGET = TableTarget(
    table="person",
    columns={
        "_source_key": "person_source_value",
        "_start_date": "_birth_date",
        "_start_datetime": "birth_datetime",
        "_location_id": "location_id",
        "_provider_id": "provider_id",
        "_care_site_id": "care_site_id",
    },
    required_rule_keys=("id", "start"),
    finish=_birth_parts,
)

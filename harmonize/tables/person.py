"""person: one row per patient; ``start`` is the birth date, from which year/month/day of birth derive."""

import polars as pl

from fedomop.harmonize.tables._target import TableTarget


def _birth_parts(frame: pl.DataFrame) -> pl.DataFrame:
    born = pl.coalesce(pl.col("birth_datetime").cast(pl.Date), pl.col("_birth_date"))
    return frame.with_columns(
        pl.coalesce("year_of_birth", born.dt.year()).alias("year_of_birth"),
        pl.coalesce("month_of_birth", born.dt.month()).alias("month_of_birth"),
        pl.coalesce("day_of_birth", born.dt.day()).alias("day_of_birth"),
        *(pl.col(c).fill_null(0) for c in ("gender_concept_id", "race_concept_id", "ethnicity_concept_id")),
    ).drop("_birth_date")


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

"""observation_period: one span per person, from the earliest to the latest of the person's records."""

from __future__ import annotations

import polars as pl

from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(table="observation_period", columns={}, derived=True)

# (start column, end column) of each table that contributes to a person's span
SPAN_COLUMNS: dict[str, tuple[str, str | None]] = {
    "visit_occurrence": ("visit_start_date", "visit_end_date"),
    "condition_occurrence": ("condition_start_date", "condition_end_date"),
    "drug_exposure": ("drug_exposure_start_date", "drug_exposure_end_date"),
    "procedure_occurrence": ("procedure_date", "procedure_end_date"),
    "measurement": ("measurement_date", None),
    "observation": ("observation_date", None),
    "device_exposure": ("device_exposure_start_date", "device_exposure_end_date"),
}


def person_last_dates(tables: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """person_id, _last: each person's latest start or end date over the span tables (empty when none)."""
    spans = [
        tables[name].select(
            "person_id", pl.max_horizontal(start, end).alias("_last") if end else pl.col(start).alias("_last")
        )
        for name, (start, end) in SPAN_COLUMNS.items()
        if name in tables and tables[name].height
    ]
    if not spans:
        return pl.DataFrame(schema={"person_id": pl.Int64, "_last": pl.Date})
    return pl.concat(spans, how="vertical_relaxed").group_by("person_id").agg(pl.max("_last"))


def build(tables: dict[str, pl.DataFrame], person: pl.DataFrame, type_concept_id: int) -> pl.DataFrame:
    """Span of each person's records; persons without records get none (lineage: the person's source row)."""
    spans = [
        tables[name].select(
            "person_id",
            pl.col(start).alias("_from"),
            pl.coalesce(end, start).alias("_to") if end else pl.col(start).alias("_to"),
        )
        for name, (start, end) in SPAN_COLUMNS.items()
        if name in tables and tables[name].height
    ]
    if not spans:
        return pl.DataFrame()
    span = pl.concat(spans).group_by("person_id").agg(pl.min("_from"), pl.max("_to"))
    return (
        person.select("person_id", "_source", "_source_file", "_source_row", "_ord")
        .join(span, on="person_id", how="inner")
        .sort("person_id")
        .with_row_index("observation_period_id", offset=1)
        .with_columns(
            pl.col("observation_period_id").cast(pl.Int64),
            pl.col("_from").alias("observation_period_start_date"),
            pl.max_horizontal("_from", "_to").alias("observation_period_end_date"),
            pl.lit(type_concept_id, pl.Int64).alias("period_type_concept_id"),
        )
        .drop("_from", "_to")
    )

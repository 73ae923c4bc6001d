"""episode_event: links each cancer condition_occurrence row to its disease episode."""

from __future__ import annotations

import polars as pl

from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(table="episode_event", columns={}, derived=True)
# OMOP "Metadata" concept naming the field the event id refers to
CONDITION_OCCURRENCE_ID_FIELD = 1147127  # condition_occurrence.condition_occurrence_id


def build(cancers: pl.DataFrame, episodes: pl.DataFrame) -> pl.DataFrame:
    if episodes.is_empty():
        return pl.DataFrame()
    keys = episodes.select("episode_id", "person_id", pl.col("episode_object_concept_id").alias("condition_concept_id"))
    return (
        cancers.join(keys, on=["person_id", "condition_concept_id"], how="inner")
        .sort("episode_id", "condition_occurrence_id")
        .select(
            "episode_id",
            pl.col("condition_occurrence_id").alias("event_id"),
            pl.lit(CONDITION_OCCURRENCE_ID_FIELD, pl.Int64).alias("episode_event_field_concept_id"),
            "_source",
            "_source_file",
            "_source_row",
            "_ord",
        )
    )

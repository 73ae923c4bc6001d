"""episode (oncology extension): a "Disease First Occurrence" episode per person and cancer diagnosis concept.

The episode starts at the first condition_occurrence of that concept; each such condition row is linked to it
through episode_event (see ``episode_event.py``).
"""

from __future__ import annotations

import polars as pl

from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(table="episode", columns={}, derived=True)


def cancer_conditions(condition: pl.DataFrame, cancer_concept_ids: list[int]) -> pl.DataFrame:
    """Condition rows whose standard concept is one of the cancer concepts (or a descendant)."""
    return condition.filter(pl.col("condition_concept_id").is_in(cancer_concept_ids))


def build(cancers: pl.DataFrame, episode_concept_id: int, type_concept_id: int) -> pl.DataFrame:
    """One episode per (person, concept), numbered in (person, concept) order; keeps the first row's lineage."""
    if cancers.is_empty():
        return pl.DataFrame()
    first = (
        cancers.sort("person_id", "condition_concept_id", "condition_start_date", "condition_occurrence_id")
        .group_by("person_id", "condition_concept_id", maintain_order=True)
        .first()
    )
    return first.with_row_index("episode_id", offset=1).select(
        pl.col("episode_id").cast(pl.Int64),
        "person_id",
        pl.lit(episode_concept_id, pl.Int64).alias("episode_concept_id"),
        pl.col("condition_start_date").alias("episode_start_date"),
        pl.col("condition_start_datetime").alias("episode_start_datetime"),
        pl.col("condition_concept_id").alias("episode_object_concept_id"),
        pl.lit(type_concept_id, pl.Int64).alias("episode_type_concept_id"),
        pl.col("condition_source_value").alias("episode_source_value"),
        "_source",
        "_source_file",
        "_source_row",
        "_ord",
    )

"""Concept coverage of a mapped site: per OMOP table and source vocabulary, records mapped to a standard concept.

A run that balances (every record loaded or quarantined) can still be useless when most codes landed on concept
0, so coverage is reported next to the reconciliation and a mapping can demand a minimum per table
(``min_coverage``): below it ``fedomop map`` exits 1. These are the site's exact internal numbers; small-cell
suppression applies to what leaves the site, not to the steward's own console.
"""

from __future__ import annotations

import polars as pl

from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.mapping.models import Mapping
from fedomop.harmonize.steward.codes import event_tables, rule_vocabularies

COVERAGE_SCHEMA = {
    "omop_table": pl.String,
    "source_vocabulary_id": pl.String,
    "records": pl.Int64,
    "mapped": pl.Int64,
    "unmapped": pl.Int64,
    "coverage": pl.Float64,
}


def concept_coverage(db: Database, mapping: Mapping) -> pl.DataFrame:
    """One row per (event table, source vocabulary) with records, mapped (concept <> 0), unmapped and coverage."""
    vocabularies = rule_vocabularies(mapping)
    frames = []
    for table, prefix in event_tables(db):
        frame = db.query(
            f"SELECT c.vocabulary_id AS source_vocabulary_id, COUNT(*) AS records, "
            f"SUM(CASE WHEN t.{prefix}_concept_id <> 0 THEN 1 ELSE 0 END) AS mapped FROM {table} t "
            f"LEFT JOIN concept c ON c.concept_id = t.{prefix}_source_concept_id AND c.concept_id <> 0 GROUP BY 1"
        )
        if frame.is_empty():
            continue
        fallback = vocabularies.get(table, "unknown")
        frames.append(
            frame.with_columns(
                pl.lit(table).alias("omop_table"),
                pl.col("source_vocabulary_id").fill_null(fallback),
                pl.col("records").cast(pl.Int64),
                pl.col("mapped").cast(pl.Int64),
            )
            .group_by("omop_table", "source_vocabulary_id")
            .agg(pl.col("records").sum(), pl.col("mapped").sum())
        )
    if not frames:
        return pl.DataFrame(schema=COVERAGE_SCHEMA)
    out = pl.concat(frames).with_columns((pl.col("records") - pl.col("mapped")).alias("unmapped"))
    out = out.with_columns((pl.col("mapped") / pl.col("records")).alias("coverage"))
    return out.select(list(COVERAGE_SCHEMA)).sort("omop_table", "source_vocabulary_id")


def table_coverage(coverage: pl.DataFrame) -> dict[str, float]:
    """Coverage per OMOP table over all its source vocabularies."""
    per_table = coverage.group_by("omop_table").agg(pl.col("mapped").sum(), pl.col("records").sum())
    return {t: m / r for t, m, r in per_table.iter_rows() if r}


def coverage_failures(coverage: pl.DataFrame, mapping: Mapping) -> list[str]:
    """One line per table whose coverage is below the mapping's ``min_coverage`` for it."""
    actual = table_coverage(coverage)
    failures = []
    for table, minimum in sorted(mapping.min_coverage.items()):
        value = actual.get(table)
        if value is None:
            failures.append(f"{table}: no records, min_coverage {minimum:.1%}")
        elif value < minimum:
            failures.append(f"{table}: coverage {value:.1%} is below min_coverage {minimum:.1%}")
    return failures

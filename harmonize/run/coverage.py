"""Concept coverage of a mapped site: per OMOP table, source vocabulary and source code, records mapped to a
standard concept.

A run that balances (every record loaded or quarantined) can still be useless when most codes landed on concept
0, so coverage is reported next to the reconciliation and a mapping can demand a minimum per table
(``min_coverage``): below it ``fedomop map`` exits 1. One query (:func:`code_counts`) serves ``fedomop map``,
the steward's review of unmapped codes and the QA report, so the three can never count differently. These are
exact internal numbers; small-cell suppression applies where they leave the site (the QA report's shareable
copy, the comparison).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import polars as pl

from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.mapping.models import Mapping

# event table -> (column prefix incl. "_", the domain its standard concepts belong to)
EVENT_TABLES = {
    "condition_occurrence": ("condition_", "Condition"),
    "procedure_occurrence": ("procedure_", "Procedure"),
    "drug_exposure": ("drug_", "Drug"),
    "measurement": ("measurement_", "Measurement"),
    "observation": ("observation_", "Observation"),
    "device_exposure": ("device_", "Device"),
}
CODE_COUNTS_SCHEMA = {
    "omop_table": pl.String,
    "source_vocabulary_id": pl.String,
    "source_code": pl.String,
    "source_name": pl.String,
    "records": pl.Int64,
    "mapped": pl.Int64,
    "unmapped": pl.Int64,
}
COVERAGE_SCHEMA = {
    "omop_table": pl.String,
    "source_vocabulary_id": pl.String,
    "records": pl.Int64,
    "mapped": pl.Int64,
    "unmapped": pl.Int64,
    "coverage": pl.Float64,
}


def rule_vocabularies(mapping: Mapping) -> dict[str, str]:
    """Table -> the fixed source vocabulary of its coded rules ("ICD10CM or SNOMED" when they differ).

    Used for codes the vocabulary does not know (source concept 0), whose vocabulary the database cannot tell.
    """
    found: dict[str, set[str]] = {}
    for table, rules in mapping.tables.items():
        for rule in rules:
            if rule.concept is not None and rule.concept.vocabulary:
                found.setdefault(table, set()).add(rule.concept.vocabulary)
            for wide in (rule.unpivot or {}).values():
                found.setdefault(table, set()).add(wide.vocabulary)
    return {table: " or ".join(sorted(v)) for table, v in found.items()}


def code_counts(db: Database, tables: Iterable[tuple[str, str]] | None = None) -> pl.DataFrame:
    """Records per (OMOP table, source vocabulary, source code) and how many reached a standard concept (<> 0).

    ``tables`` are (table, column prefix) pairs, the event tables by default; absent tables are skipped. The
    source vocabulary is that of the row's source concept (null when the vocabulary does not know the code).
    """
    present = set(db.table_names())
    frames = []
    for table, prefix in tables if tables is not None else ((t, p) for t, (p, _) in EVENT_TABLES.items()):
        if table not in present:
            continue
        joined = "concept" in present and f"{prefix}source_concept_id" in {c.name for c in db.describe(table)}
        join = f"LEFT JOIN concept c ON c.concept_id = t.{prefix}source_concept_id AND c.concept_id <> 0"
        frame = db.query(
            f"SELECT t.{prefix}source_value AS source_code, "
            f"{'c.vocabulary_id' if joined else 'NULL'} AS source_vocabulary_id, "
            f"{'MAX(c.concept_name)' if joined else 'NULL'} AS source_name, COUNT(*) AS records, "
            f"SUM(CASE WHEN t.{prefix}concept_id <> 0 THEN 1 ELSE 0 END) AS mapped "
            f"FROM {table} t {join if joined else ''} GROUP BY 1, 2"
        )
        frames.append(frame.with_columns(pl.lit(table).alias("omop_table")))
    if not frames:
        return pl.DataFrame(schema=CODE_COUNTS_SCHEMA)
    out = pl.concat(frames, how="diagonal_relaxed").with_columns(
        *(pl.col(c).cast(t) for c, t in CODE_COUNTS_SCHEMA.items() if c != "unmapped")
    )
    out = out.with_columns((pl.col("records") - pl.col("mapped")).alias("unmapped"))
    return out.select(list(CODE_COUNTS_SCHEMA))


def concept_coverage(db: Database, mapping: Mapping) -> pl.DataFrame:
    """One row per (event table, source vocabulary) with records, mapped (concept <> 0), unmapped and coverage."""
    vocabularies = rule_vocabularies(mapping)
    counts = code_counts(db)
    if counts.is_empty():
        return pl.DataFrame(schema=COVERAGE_SCHEMA)
    fallback = pl.col("omop_table").replace_strict(vocabularies, default="unknown", return_dtype=pl.String)
    out = (
        counts.with_columns(pl.col("source_vocabulary_id").fill_null(fallback))
        .group_by("omop_table", "source_vocabulary_id")
        .agg(pl.col("records").sum(), pl.col("mapped").sum(), pl.col("unmapped").sum())
        .with_columns((pl.col("mapped") / pl.col("records")).alias("coverage"))
    )
    return out.select(list(COVERAGE_SCHEMA)).sort("omop_table", "source_vocabulary_id")


def share(value: float) -> str:
    """A coverage as a percentage with one decimal, rounded down: 4 unmapped of 10,040 is 99.9%, never "100.0%"
    (which would contradict a failed min_coverage of 99.99%), and 100.0% means every record."""
    return f"{math.floor(value * 1000 + 1e-9) / 10:.1f}%"  # (+1e-9: 0.57 * 1000 is 569.99...)


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
            failures.append(f"{table}: coverage {share(value)} is below min_coverage {minimum:.1%}")
    return failures

"""Site profile for the QA report: mapping coverage, reconciliation, quarantine, records per year, and the
distributions of key measurements. Every number is computed by SQL in the database; counts come back
wrapped in :class:`Count` so that :func:`~fedomop.harmonize.ground.smallcell.suppress` can hide small cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from fedomop.harmonize.cdm import load_spec
from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.smallcell import Count, percent
from fedomop.harmonize.run.coverage import code_counts
from fedomop.harmonize.validate.catalogue import Catalogue, load_catalogue
from fedomop.harmonize.validate.checks.base import CheckContext, q

QUARANTINE_TABLE = "fedomop_quarantine"
RECONCILIATION_TABLE = "fedomop_reconciliation"
LINEAGE_TABLE = "fedomop_lineage"
HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class ProfileOptions:
    """What to profile. ``min_cell`` also gates distributions: no quantiles are computed over fewer rows."""

    min_cell: int = 10
    top_unmapped: int = 10
    key_measurements: int = 8  # the most frequent measurement concepts with numeric values
    measurement_concepts: tuple[int, ...] = ()  # or exactly these concepts


def _rows(db: Database, sql: str) -> list[tuple[Any, ...]]:  # polars rows: values of any SQL type
    return list(db.query(sql).iter_rows())


def concept_tables(catalogue: Catalogue | None = None) -> list[tuple[str, str, str]]:
    """(table, standard concept field, source value field) for each event table, from the DQD ``conceptPrefix``."""
    catalogue = catalogue or load_catalogue()
    found = []
    for row in catalogue.table_rows:
        prefix = row.get("conceptPrefix", "").lower()
        if prefix:
            found.append((row["cdmTableName"].lower(), f"{prefix}concept_id", f"{prefix}source_value"))
    return found


def coverage_bounds(records: int, mapped: int, threshold: int) -> list[float] | None:
    """Where the exact share of mapped records is withheld (mapped or unmapped is a small cell), the interval it
    lies in, in percent. It tells no more than the withheld cell's label (``unmapped < 10`` of ``records``), so a
    near-complete site still shows "at least 99.2%" in the comparison instead of a blank."""
    if records < threshold:
        return None  # the total itself is withheld
    if 0 < records - mapped < threshold:
        return [round(100.0 * (records - threshold + 1) / records, 4), 100.0]
    if 0 < mapped < threshold:
        return [0.0, round(100.0 * (threshold - 1) / records, 4)]
    return None


UNKNOWN_VOCABULARY = "(code not in the vocabulary)"


def mapping_coverage(db: Database, ctx: CheckContext, options: ProfileOptions) -> dict[str, object]:
    """Share of records with a standard concept (concept_id <> 0) per table and per source vocabulary, and the top
    unmapped source codes; the same counts ``fedomop map`` prints (:func:`~fedomop.harmonize.run.coverage.code_counts`).

    The counts of one table's vocabularies add up to its total, so they are one complementary group: a small cell
    in any of them withholds them all (the table-level numbers stay)."""
    pairs = [
        (table, concept.removesuffix("concept_id"))
        for table, concept, source in concept_tables(ctx.catalogue)
        if ctx.has_field(table, concept) and ctx.has_field(table, source)
    ]
    counts = code_counts(db, pairs).with_columns(pl.col("source_vocabulary_id").fill_null(UNKNOWN_VOCABULARY))
    tables, vocabularies = [], []
    for table, prefix in pairs:
        part = counts.filter(pl.col("omop_table") == table)
        records, mapped = int(part["records"].sum()), int(part["mapped"].sum())
        if not records:
            continue
        group = f"coverage:{table}"
        tables.append(
            {
                "table": table,
                "field": f"{prefix}concept_id",
                "records": Count(records),
                "mapped": Count(mapped, group=group),
                "unmapped": Count(records - mapped, group=group),
                "pct_mapped": percent(Count(mapped, group=group), records),
                "pct_mapped_bounds": coverage_bounds(records, mapped, options.min_cell),
            }
        )
        per_vocabulary = part.group_by("source_vocabulary_id").agg(pl.col("records").sum(), pl.col("mapped").sum())
        for vocabulary, n, m in per_vocabulary.sort("source_vocabulary_id").iter_rows():
            group = f"vocabularies:{table}"
            vocabularies.append(
                {
                    "table": table,
                    "source_vocabulary_id": vocabulary,
                    "records": Count(int(n), group=group),
                    "mapped": Count(int(m), group=group),
                    "unmapped": Count(int(n) - int(m), group=group),
                    "pct_mapped": percent(Count(int(m), group=group), int(n)),
                }
            )
    top = (
        counts.filter(pl.col("unmapped") > 0)
        .sort(["unmapped", "omop_table", "source_code"], descending=[True, False, False], nulls_last=True)
        .head(options.top_unmapped)
    )
    unmapped = [
        {"table": t, "source_vocabulary_id": v, "source_value": c, "records": Count(int(n))}
        for t, v, c, n in top.select("omop_table", "source_vocabulary_id", "source_code", "unmapped").iter_rows()
    ]
    return {"tables": tables, "by_vocabulary": vocabularies, "top_unmapped": unmapped}


def event_date_fields() -> dict[str, str]:
    """table -> the first required date field of each person-level event table (its event date), from the spec."""
    fields = {}
    for table in load_spec().tables_in("CDM"):
        if table.name.endswith("_era") or "person_id" not in table.column_names:
            continue
        date = next((f.name for f in table.fields if f.datatype == "date" and f.required), None)
        if date:
            fields[table.name] = date
    return fields


def records_per_year(db: Database, ctx: CheckContext) -> dict[str, list[dict[str, object]]]:
    per_table: dict[str, list[dict[str, object]]] = {}
    for table, column in event_date_fields().items():
        if not ctx.has_field(table, column):
            continue
        rows = _rows(
            db,
            f"SELECT CAST(EXTRACT(YEAR FROM {q(column)}) AS INTEGER) AS y, COUNT(*) FROM {q(table)} "
            f"WHERE {q(column)} IS NOT NULL GROUP BY y ORDER BY y",
        )
        if rows:
            per_table[table] = [{"year": int(y), "records": Count(int(n))} for y, n in rows]
    return per_table


def _key_measurements(db: Database, options: ProfileOptions) -> list[tuple[int, int]]:
    """(concept, unit) pairs to describe: the named concepts, else the most frequent numeric ones."""
    where = "value_as_number IS NOT NULL AND measurement_concept_id <> 0"
    if options.measurement_concepts:
        where += f" AND measurement_concept_id IN ({', '.join(str(int(c)) for c in options.measurement_concepts)})"
    rows = _rows(
        db,
        f"SELECT measurement_concept_id, COALESCE(unit_concept_id, 0) AS unit, COUNT(*) AS n FROM measurement "
        f"WHERE {where} GROUP BY measurement_concept_id, COALESCE(unit_concept_id, 0) "
        f"HAVING COUNT(*) >= {int(options.min_cell)} ORDER BY n DESC, measurement_concept_id "
        f"LIMIT {int(options.key_measurements)}",
    )
    return [(int(c), int(u)) for c, u, _ in rows]


def _concept_names(db: Database, ctx: CheckContext, ids: set[int]) -> dict[int, str]:
    if not ids or not ctx.has_field("concept", "concept_name"):
        return {}
    rows = _rows(db, f"SELECT concept_id, concept_name FROM concept WHERE concept_id IN ({', '.join(map(str, ids))})")
    return {int(c): str(n) for c, n in rows}


def measurement_distributions(db: Database, ctx: CheckContext, options: ProfileOptions) -> list[dict[str, object]]:
    """Quantiles (never min/max: extremes identify people) and a 20-bin histogram between the 1st and 99th
    percentile, per key measurement concept and unit."""
    if not (ctx.has_field("measurement", "value_as_number") and ctx.has_field("measurement", "unit_concept_id")):
        return []
    keys = _key_measurements(db, options)
    names = _concept_names(db, ctx, {c for c, _ in keys} | {u for _, u in keys})
    out = []
    for concept, unit in keys:
        subset = (
            f"FROM measurement WHERE measurement_concept_id = {concept} "
            f"AND COALESCE(unit_concept_id, 0) = {unit} AND value_as_number IS NOT NULL"
        )
        fractions = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
        stats = ", ".join(f"{ctx.quantile('value_as_number', f)} AS q{i}" for i, f in enumerate(fractions))
        ((n, *values),) = _rows(db, f"SELECT COUNT(*) AS n, {stats} {subset}")
        p01, p05, p25, p50, p75, p95, p99 = (float(v) for v in values)
        out.append(
            {
                "concept_id": concept,
                "concept_name": names.get(concept, ""),
                "unit_concept_id": unit,
                "unit_name": names.get(unit, ""),
                "records": Count(int(n)),
                "p05": p05,
                "p25": p25,
                "median": p50,
                "p75": p75,
                "p95": p95,
                "histogram": _histogram(db, subset, p01, p99),
            }
        )
    return out


def _histogram(db: Database, subset: str, low: float, high: float) -> dict[str, object]:
    width = (high - low) / HISTOGRAM_BINS if high > low else 1.0
    rows = _rows(
        db,
        f"SELECT CAST(FLOOR((value_as_number - {low!r}) / {width!r}) AS INTEGER) AS b, COUNT(*) {subset} "
        f"AND value_as_number >= {low!r} AND value_as_number <= {high!r} GROUP BY b",
    )
    counts = [0] * HISTOGRAM_BINS
    for b, n in rows:
        counts[min(int(b), HISTOGRAM_BINS - 1)] += int(n)
    return {"edges": [low + width * i for i in range(HISTOGRAM_BINS + 1)], "counts": [Count(c) for c in counts]}


def person_count(db: Database, ctx: CheckContext) -> Count | None:
    return Count(int(db.scalar("SELECT COUNT(*) FROM person"))) if ctx.has_table("person") else None


def table_counts(db: Database, ctx: CheckContext) -> dict[str, Count]:
    """Rows per CDM table present (one UNION query)."""
    present = [t for t in load_spec().tables if ctx.has_table(t)]
    if not present:
        return {}
    sql = " UNION ALL ".join(f"SELECT '{t}' AS t, COUNT(*) AS n FROM {q(t)}" for t in present)
    return {str(t): Count(int(n)) for t, n in _rows(db, sql)}


def reconciliation(db: Database, ctx: CheckContext) -> dict[str, object]:
    """The mapping run's reconciliation rows (source = loaded + quarantined), when the engine wrote them."""
    if not ctx.has_table(RECONCILIATION_TABLE):
        return {
            "available": False,
            "note": f"no {RECONCILIATION_TABLE} table: this database was not built by fedomop map",
        }
    frame = db.query(f"SELECT * FROM {q(RECONCILIATION_TABLE)}")
    # loaded + quarantined = source_count: the parts of a row form one suppression group
    parts = {"loaded", "quarantined"}
    rows = [
        {
            k: Count(int(v), group=f"reconciliation:{n}" if k in parts else None)
            if k in parts | {"source_count"} and v is not None
            else v
            for k, v in row.items()
        }
        for n, row in enumerate(frame.iter_rows(named=True))
    ]
    return {"available": True, "rows": rows}


def quarantine(db: Database, ctx: CheckContext) -> dict[str, object]:
    """Quarantined records by source, field and reason (never the values: they may identify a patient)."""
    if not ctx.has_table(QUARANTINE_TABLE):
        return {"available": False, "note": f"no {QUARANTINE_TABLE} table: this database was not built by fedomop map"}
    rows = _rows(
        db,
        f"SELECT source, field, reason, COUNT(*) AS n FROM {q(QUARANTINE_TABLE)} "
        "GROUP BY source, field, reason ORDER BY n DESC, source, field, reason",
    )
    total = int(db.scalar(f"SELECT COUNT(*) FROM {q(QUARANTINE_TABLE)}") or 0)
    return {
        "available": True,
        "total": Count(total, group="quarantine"),
        "by_reason": [
            {"source": s, "field": f, "reason": r, "records": Count(int(n), group="quarantine")} for s, f, r, n in rows
        ],
    }


def lineage(db: Database, ctx: CheckContext) -> dict[str, object]:
    if not ctx.has_table(LINEAGE_TABLE):
        return {"available": False, "note": f"no {LINEAGE_TABLE} table: this database was not built by fedomop map"}
    rows = _rows(db, f"SELECT omop_table, COUNT(*) FROM {q(LINEAGE_TABLE)} GROUP BY omop_table ORDER BY omop_table")
    return {"available": True, "rows_per_table": {str(t): Count(int(n)) for t, n in rows}}

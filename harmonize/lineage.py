"""Row-level lineage (OMOP row -> source file + row/resource id) and the reconciliation that proves nothing was lost.

For every source: records read = records loaded (into at least one OMOP row) + records only quarantined.
"""

from __future__ import annotations

import polars as pl

LINEAGE_TABLE = "fedomop_lineage"
RECONCILIATION_TABLE = "fedomop_reconciliation"
LINEAGE_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "omop_table": pl.String(),
    "omop_id": pl.Int64(),
    "source": pl.String(),
    "source_file": pl.String(),
    "source_row": pl.String(),
}
RECONCILIATION_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "source": pl.String(),
    "omop_table": pl.String(),
    "source_count": pl.Int64(),
    "loaded": pl.Int64(),
    "quarantined": pl.Int64(),
    "balanced": pl.Boolean(),
}
ALL_TABLES = "*"


def lineage_rows(run_id: str, table: str, id_column: str | pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
    """Lineage of a table's rows (``frame`` still carries _source, _source_file, _source_row)."""
    return frame.select(
        pl.lit(run_id).alias("run_id"),
        pl.lit(table).alias("omop_table"),
        (pl.col(id_column) if isinstance(id_column, str) else id_column).cast(pl.Int64).alias("omop_id"),
        pl.col("_source").alias("source"),
        pl.col("_source_file").alias("source_file"),
        pl.col("_source_row").alias("source_row"),
    )


def reconcile(
    run_id: str,
    seen: dict[str, int],
    lineage: pl.DataFrame,
    quarantine: pl.DataFrame,
    rule_tables: dict[str, set[str]],
) -> pl.DataFrame:
    """Per source and table: records, loaded, quarantined; a ``*`` row per source checks the whole balance."""
    keys = ["source_file", "source_row"]
    rows: list[dict[str, object]] = []
    for source, count in seen.items():
        loaded = lineage.filter(pl.col("source") == source).select(keys).unique()
        quarantined = quarantine.filter(pl.col("source") == source).select(keys).unique()
        only_quarantined = quarantined.join(loaded, on=keys, how="anti").height
        rows.append(
            {
                "source": source,
                "omop_table": ALL_TABLES,
                "source_count": count,
                "loaded": loaded.height,
                "quarantined": only_quarantined,
                "balanced": count == loaded.height + only_quarantined,
            }
        )
        by_table = (
            lineage.filter(pl.col("source") == source)
            .group_by("omop_table")
            .agg(pl.struct(keys).n_unique().alias("loaded"))
        )
        for table, n in sorted(by_table.iter_rows()):
            rows.append(
                {
                    "source": source,
                    "omop_table": table,
                    "source_count": None,
                    "loaded": n,
                    "quarantined": None,
                    "balanced": None,
                }
            )
        for table in sorted(rule_tables.get(source, set()) - set(by_table.get_column("omop_table").to_list())):
            rows.append(
                {
                    "source": source,
                    "omop_table": table,
                    "source_count": None,
                    "loaded": 0,
                    "quarantined": None,
                    "balanced": None,
                }
            )
    frame = pl.DataFrame(rows, schema={k: v for k, v in RECONCILIATION_SCHEMA.items() if k != "run_id"})
    return frame.select(pl.lit(run_id).alias("run_id"), *frame.columns)

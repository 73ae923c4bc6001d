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
    """Per source: records read = loaded + quarantined (the ``*`` row, which must balance), and per OMOP table
    the records it received from the source and the records the rules for that table quarantined."""
    keys = ["source_file", "source_row"]
    rows: list[dict[str, object]] = []
    for source, count in seen.items():
        mine = lineage.filter(pl.col("source") == source)
        refused = quarantine.filter(pl.col("source") == source)
        loaded = mine.select(keys).unique()
        only_quarantined = refused.select(keys).unique().join(loaded, on=keys, how="anti").height
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
        tables = set(rule_tables.get(source, set())) | set(mine.get_column("omop_table").unique().to_list())
        for table in sorted(tables):
            into = mine.filter(pl.col("omop_table") == table).select(keys).n_unique()
            held = refused.filter(pl.col("omop_table") == table).select(keys).n_unique()
            rows.append(
                {
                    "source": source,
                    "omop_table": table,
                    "source_count": into + held,
                    "loaded": into,
                    "quarantined": held,
                    "balanced": None,
                }
            )
    frame = pl.DataFrame(rows, schema={k: v for k, v in RECONCILIATION_SCHEMA.items() if k != "run_id"})
    return frame.select(pl.lit(run_id).alias("run_id"), *frame.columns)

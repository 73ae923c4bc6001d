"""The quarantine: every source record the engine cannot load, with where it came from and why.

Nothing is ever dropped: a record is either loaded (and has lineage) or has at least one quarantine row.
"""

from __future__ import annotations

import polars as pl

from fedomop.harmonize.sources.base import REJECT_SCHEMA

QUARANTINE_TABLE = "fedomop_quarantine"
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "source": pl.String(),
    **{k: v() for k, v in REJECT_SCHEMA.items()},
    "omop_table": pl.String(),  # the table of the rule that refused the record (null: refused while reading)
}


class Quarantine:
    """Collects rejects during a run; ``frame()`` gives them in a stable order.

    Rows refused by a rule keep the record's position in its batch (``_ord``, not written to the database) so
    the reconciliation can tick records off by number; read-time rejects never entered a batch and have none.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._parts: list[pl.DataFrame] = []

    def add_rejects(self, source: str, rejects: pl.DataFrame) -> None:
        """Add rows that already have source_file, source_row, field, value, reason (and maybe omop_table, _ord)."""
        if rejects.height:
            table = pl.col("omop_table") if "omop_table" in rejects.columns else pl.lit(None, pl.String)
            ordinal = pl.col("_ord") if "_ord" in rejects.columns else pl.lit(None)
            self._parts.append(
                rejects.select(
                    pl.lit(self.run_id).alias("run_id"),
                    pl.lit(source).alias("source"),
                    *(pl.col(c).cast(pl.String) for c in REJECT_SCHEMA),
                    table.cast(pl.String).alias("omop_table"),
                    ordinal.cast(pl.Int64).alias("_ord"),
                )
            )

    def add_rows(
        self,
        source: str,
        rows: pl.DataFrame,
        field: str | pl.Expr,
        value: pl.Expr,
        reason: pl.Expr | str,
        table: str | None = None,
    ) -> None:
        """Quarantine source rows (with lineage columns) for one field, computing value and reason per row.

        The OMOP table is the rule's (``_declared`` column) unless ``table`` is given.
        """
        if not rows.height:
            return
        reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
        if table is not None:
            table_expr = pl.lit(table, pl.String)
        elif "_declared" in rows.columns:
            table_expr = pl.col("_declared")
        else:
            table_expr = pl.lit(None, pl.String)
        self.add_rejects(
            source,
            rows.select(
                pl.col("_source_file").alias("source_file"),
                pl.col("_source_row").alias("source_row"),
                (pl.lit(field) if isinstance(field, str) else field).cast(pl.String).alias("field"),
                value.cast(pl.String).alias("value"),
                reason_expr.alias("reason"),
                table_expr.alias("omop_table"),
                pl.col("_ord") if "_ord" in rows.columns else pl.lit(None, pl.Int64).alias("_ord"),
            ),
        )

    def frame(self) -> pl.DataFrame:
        if not self._parts:
            return pl.DataFrame(schema={**QUARANTINE_SCHEMA, "_ord": pl.Int64()})
        return pl.concat(self._parts).unique(maintain_order=True)

"""The quarantine: every source record the engine cannot load, with where it came from and why.

Nothing is ever dropped: a record is either loaded (and has lineage) or has at least one quarantine row.
"""

from __future__ import annotations

import polars as pl

from harmonize.sources.base import REJECT_SCHEMA

QUARANTINE_TABLE = "fedomop_quarantine"
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "source": pl.String(),
    **{k: v() for k, v in REJECT_SCHEMA.items()},
}


class Quarantine:
    """Collects rejects during a run; ``frame()`` gives them in a stable order."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._parts: list[pl.DataFrame] = []

    def add_rejects(self, source: str, rejects: pl.DataFrame) -> None:
        """Add rows that already have source_file, source_row, field, value, reason."""
        if rejects.height:
            self._parts.append(
                rejects.select(
                    pl.lit(self.run_id).alias("run_id"),
                    pl.lit(source).alias("source"),
                    *(pl.col(c).cast(pl.String) for c in REJECT_SCHEMA),
                )
            )

    def add_rows(self, source: str, rows: pl.DataFrame, field: str, value: pl.Expr, reason: pl.Expr | str) -> None:
        """Quarantine source rows (with lineage columns) for one field, computing value and reason per row."""
        if not rows.height:
            return
        reason_expr = pl.lit(reason) if isinstance(reason, str) else reason
        self.add_rejects(
            source,
            rows.select(
                pl.col("_source_file").alias("source_file"),
                pl.col("_source_row").alias("source_row"),
                pl.lit(field).alias("field"),
                value.cast(pl.String).alias("value"),
                reason_expr.alias("reason"),
            ),
        )

    def frame(self) -> pl.DataFrame:
        if not self._parts:
            return pl.DataFrame(schema=QUARANTINE_SCHEMA)
        return pl.concat(self._parts).unique(maintain_order=True)

"""Deterministic OMOP ids: the same mapping on the same extract always numbers rows the same way.

Rows are ordered by (rule position in the mapping, source file, source row order, target index) and numbered
from 1, so a rerun yields byte-identical tables and ids never depend on hash seeds or thread timing.
"""

from __future__ import annotations

import polars as pl

ORDER_COLUMNS = ("_rule", "_source_file", "_ord", "_target")


def assign_ids(frame: pl.DataFrame, id_column: str, after: int = 0) -> pl.DataFrame:
    """Sort by the lineage order and number the rows ``after + 1 .. after + n`` into ``id_column``.

    ``after`` is the last id already used: a site mapped in chunks continues numbering where the last chunk ended.
    """
    order = [c for c in ORDER_COLUMNS if c in frame.columns]
    ordered = frame.sort(order) if order and not _in_order(frame, order) else frame
    return ordered.with_row_index(id_column, offset=after + 1).with_columns(pl.col(id_column).cast(pl.Int64))


def _in_order(frame: pl.DataFrame, columns: list[str]) -> bool:
    """Are the rows already sorted by ``columns`` (each row's key <= the next one's, no nulls)? The rules hand
    over their rows in this order, and checking it costs a third of sorting a wide frame (which moves every
    column). A null anywhere counts as "not in order", so the sort decides where nulls go, as before."""
    if frame.height < 2:
        return True
    equal: pl.Expr = pl.lit(True)
    before: pl.Expr = pl.lit(False)
    for column in columns:
        previous = pl.col(column).shift(1)
        before = before | (equal & (previous < pl.col(column)))
        equal = equal & (previous == pl.col(column))
    return bool(frame.select((before | equal).slice(1).fill_null(False).all()).item())

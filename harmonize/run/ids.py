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
    ordered = frame.sort(order) if order else frame
    return ordered.with_row_index(id_column, offset=after + 1).with_columns(pl.col(id_column).cast(pl.Int64))

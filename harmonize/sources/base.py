"""The common shape every source reader returns, so the engine never cares where records came from."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

REJECT_SCHEMA: dict[str, type[pl.DataType]] = {
    "source_file": pl.String,
    "source_row": pl.String,
    "field": pl.String,
    "value": pl.String,
    "reason": pl.String,
}

LINEAGE_COLUMNS = ("_source_file", "_source_row")


@dataclass
class SourceBatch:
    """Records of one logical source: accepted rows (with lineage columns) and read-time rejects.

    ``seen`` must equal ``frame.height + rejects.height`` so reconciliation can prove nothing was lost.
    ``_source_row`` is the 1-based data row for CSV/Parquet and the resource id for FHIR
    (``"<file>:<line>"`` when a resource has no id).
    """

    name: str
    frame: pl.DataFrame
    rejects: pl.DataFrame
    seen: int

    def balanced(self) -> bool:
        """True when every record read is either accepted or rejected."""
        return self.seen == self.frame.height + self.rejects.height


_EMPTY_REJECTS = pl.DataFrame(schema=REJECT_SCHEMA)


def empty_rejects() -> pl.DataFrame:
    """An empty reject frame with the contract schema: a fresh copy of one built at import, because
    building a frame from a schema costs ~0.1 ms -- most of reading a small file when a run reads many."""
    return _EMPTY_REJECTS.clear()

"""Row-level lineage (OMOP row -> source file + row/resource id) and the reconciliation that proves nothing was lost.

For every source: records read = records loaded (into at least one OMOP row) + records only quarantined.

Lineage is stored in its cheapest lossless form and read through a view (the contract, docs/mapping.md):

- ``fedomop_lineage_file`` numbers each (source, source file) of the run once: ``file_no``;
- ``fedomop_lineage_row`` holds one row per *run* of OMOP rows: ``run_id, omop_table, omop_id, file_no``, the
  source row as an integer (``source_row_no``, a CSV/Parquet data row) or, when it is not a plain row number (a
  FHIR resource id, ``12#2`` for a record's second row in one table), as text (``source_row_text``), and
  ``row_count``: OMOP ids ``omop_id .. omop_id + row_count - 1`` came from the rows ``source_row_no ..
  source_row_no + row_count - 1`` of that file, in step (a text row is a run of one);
- ``fedomop_lineage`` is the view with the text columns every reader uses, one row per OMOP row: ``run_id,
  omop_table, omop_id, source, source_file, source_row``.

Text lineage (the file path and the row number written out for every one of millions of OMOP rows) cost
DuckDB three times the CPU and ten times the disk of one integer row per OMOP row; runs cut that again by the
length of a run (a patient's rows in an export sorted by patient: ~8 at site A).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl

LINEAGE_TABLE = "fedomop_lineage"  # the view
LINEAGE_ROW_TABLE = "fedomop_lineage_row"
LINEAGE_FILE_TABLE = "fedomop_lineage_file"
RECONCILIATION_TABLE = "fedomop_reconciliation"
LINEAGE_SCHEMA: dict[str, pl.DataType] = {  # the view's columns
    "run_id": pl.String(),
    "omop_table": pl.String(),
    "omop_id": pl.Int64(),
    "source": pl.String(),
    "source_file": pl.String(),
    "source_row": pl.String(),
}
LINEAGE_ROW_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "omop_table": pl.String(),
    "omop_id": pl.Int64(),
    "file_no": pl.Int32(),
    "source_row_no": pl.Int64(),
    "source_row_text": pl.String(),
    "row_count": pl.Int32(),
}
LINEAGE_FILE_SCHEMA: dict[str, pl.DataType] = {"file_no": pl.Int32(), "source": pl.String(), "source_file": pl.String()}
LINEAGE_VIEW_SQL = (  # a run expanded into its rows (the same SQL in DuckDB and PostgreSQL)
    f"CREATE VIEW {LINEAGE_TABLE} AS SELECT l.run_id, l.omop_table, l.omop_id + s.i AS omop_id, f.source, "
    "f.source_file, COALESCE(l.source_row_text, CAST(l.source_row_no + s.i AS VARCHAR)) AS source_row "
    f"FROM {LINEAGE_ROW_TABLE} l JOIN {LINEAGE_FILE_TABLE} f ON f.file_no = l.file_no "
    "CROSS JOIN LATERAL generate_series(0, l.row_count - 1) AS s(i)"
)
# a source row stored as an integer: exactly the decimal digits that integer prints as (so the view gives it back)
_ROW_NUMBER = r"^[1-9][0-9]{0,17}$"
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


def lineage_rows(id_column: str | pl.Expr, frame: pl.DataFrame) -> pl.DataFrame:
    """Lineage of one table's rows (``frame`` still carries _source, _source_file, _source_row).

    The run id and table name are the same for every row: they are written as constants, not repeated here.
    """
    return frame.select(
        (pl.col(id_column) if isinstance(id_column, str) else id_column).cast(pl.Int64).alias("omop_id"),
        pl.col("_source").alias("source"),
        pl.col("_source_file").alias("source_file"),
        pl.col("_source_row").alias("source_row"),
    )


class LineageFiles:
    """Numbers each (source, source file) of a run once, for the integer lineage rows.

    ``number`` returns a batch's lineage rows in the stored form and the (source, file) pairs first seen in it,
    which the caller appends to ``fedomop_lineage_file`` with them.
    """

    def __init__(self) -> None:
        self.known = pl.DataFrame(schema=LINEAGE_FILE_SCHEMA)

    def number(self, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        pairs = rows.lazy().select("source", "source_file").unique().collect()
        new = pairs.join(self.known, on=["source", "source_file"], how="anti", nulls_equal=True)
        if new.height:
            new = new.sort("source", "source_file", nulls_last=True).select(
                (pl.int_range(pl.len(), dtype=pl.Int32) + self.known.height + 1).alias("file_no"),
                "source",
                "source_file",
            )
            self.known = pl.concat([self.known, new])
        numbers = pairs.join(self.known, on=["source", "source_file"], how="left", nulls_equal=True)
        row, is_number = pl.col("source_row"), pl.col("_is_number")
        stored = (
            rows.with_columns(row.str.contains(_ROW_NUMBER).alias("_is_number"))  # once: eager polars repeats a regex
            .select(
                "omop_id",
                _file_number(numbers).alias("file_no"),
                pl.when(is_number).then(row.cast(pl.Int64, strict=False)).alias("source_row_no"),
                pl.when(is_number).then(None).otherwise(row).alias("source_row_text"),
            )
        )
        return _runs(stored), new


def _runs(stored: pl.DataFrame) -> pl.DataFrame:
    """One row per run: a row that continues the one before it (next OMOP id, next source row, same file) is
    counted in that row's ``row_count`` instead of being stored. Text rows never continue a run."""
    follows = (
        (pl.col("omop_id").diff() == 1)
        & (pl.col("source_row_no").diff() == 1)
        & (pl.col("file_no") == pl.col("file_no").shift())
    )
    starts = stored.select((~follows).fill_null(True)).to_series()
    first = np.flatnonzero(starts.to_numpy())
    return stored.filter(starts).with_columns(pl.Series("row_count", np.diff(first, append=stored.height), pl.Int32))


def _file_number(numbers: pl.DataFrame) -> pl.Expr:
    """Each row's file number, by comparing with the few (source, file) pairs of the batch: 2.5x cheaper than a
    join of millions of rows on two text columns."""
    if numbers.height <= 1:
        return pl.lit(numbers.item(0, "file_no") if numbers.height else None, pl.Int32)
    return pl.coalesce(
        pl.when(_equals("source", source) & _equals("source_file", source_file)).then(pl.lit(file_no, pl.Int32))
        for source, source_file, file_no in numbers.select("source", "source_file", "file_no").iter_rows()
    )


def _equals(column: str, value: str | None) -> pl.Expr:
    return pl.col(column).is_null() if value is None else pl.col(column) == value


class RecordLedger:
    """One bit per source record of a batch: did it reach an OMOP table, the quarantine, or neither?

    Records are numbered per source by ``_ord`` (their position in the batch), so ticking them off is array
    indexing, not a join on (file, row) text keys: reconciling millions of records takes a fraction of a second.
    Read-time rejects never entered a batch; they are counted by their (file, row).
    """

    def __init__(self, sizes: dict[str, int]) -> None:
        self.loaded = {source: np.zeros(n, dtype=bool) for source, n in sizes.items()}
        self.held = {source: np.zeros(n, dtype=bool) for source, n in sizes.items()}
        self.into: Counter[tuple[str, str]] = Counter()  # (source, table) -> records that reached the table
        self.held_by: Counter[tuple[str, str]] = Counter()  # (source, table) -> records that table's rules refused
        self.rejected: Counter[str] = Counter()  # source -> records refused while reading

    def _grow(self, source: str, size: int) -> None:
        """Books for records outside the batch (FHIR types no rule maps) are opened, or widened, on first use."""
        for book in (self.loaded, self.held):
            have = book.get(source, np.zeros(0, dtype=bool))
            book[source] = np.concatenate([have, np.zeros(size - len(have), dtype=bool)]) if len(have) < size else have

    def _marks(self, ledger: dict[str, np.ndarray], source: str, ords: np.ndarray) -> np.ndarray:
        """A fresh mask of the given records, also ticked off in ``ledger``."""
        self._grow(source, int(ords.max()) + 1 if len(ords) else 0)
        size = len(self.loaded[source])
        mask = np.zeros(size, dtype=bool)
        mask[ords] = True
        ledger[source] |= mask
        return mask

    def mark_loaded(self, table: str, frame: pl.DataFrame) -> None:
        """Records behind a finished table's rows (tables without a source record, like cdm_source, have none)."""
        if "_ord" not in frame.columns or not frame.height:
            return
        # split by source as numpy arrays (a group_by into lists made a Python int of every row's number)
        for (source,), part in frame.select("_source", "_ord").partition_by("_source", as_dict=True).items():
            mask = self._marks(self.loaded, str(source), part.get_column("_ord").cast(pl.Int64).to_numpy())
            self.into[(str(source), table)] += int(mask.sum())

    def mark_quarantined(self, quarantine: pl.DataFrame) -> None:
        """Quarantine rows: by rule (with ``_ord``, per table) and read-time rejects (by file and row)."""
        refused = quarantine.filter(pl.col("_ord").is_not_null())
        for source, table, ords in refused.group_by("source", "omop_table").agg(pl.col("_ord")).iter_rows():
            mask = self._marks(self.held, str(source), np.asarray(ords, dtype=np.int64))
            if table is not None:
                self.held_by[(str(source), str(table))] += int(mask.sum())
        unread = quarantine.filter(pl.col("_ord").is_null()).unique(["source", "source_file", "source_row"])
        for source, count in unread.group_by("source").len().iter_rows():
            self.rejected[str(source)] += int(count)

    def unaccounted(self, source: str) -> np.ndarray:
        """Mask of the source's records that are in no table and not quarantined."""
        return ~(self.loaded[source] | self.held[source])

    def mark_held(self, source: str, mask: np.ndarray) -> None:
        self.held[source] |= mask

    def reconciliation(self, run_id: str, seen: dict[str, int], rule_tables: dict[str, set[str]]) -> pl.DataFrame:
        """Per source: read = loaded + quarantined (the ``*`` row, which must balance), and per OMOP table the
        records it received from the source and the records the rules for that table quarantined."""
        rows: list[dict[str, object]] = []
        for source, count in seen.items():
            loaded = self.loaded.get(source, np.zeros(0, dtype=bool))
            only_held = int((self.held.get(source, loaded) & ~loaded).sum()) + self.rejected[source]
            rows.append(
                {
                    "source": source,
                    "omop_table": ALL_TABLES,
                    "source_count": count,
                    "loaded": int(loaded.sum()),
                    "quarantined": only_held,
                    "balanced": count == int(loaded.sum()) + only_held,
                }
            )
            fed = {table for (name, table) in self.into if name == source}
            for table in sorted(set(rule_tables.get(source, set())) | fed):
                into, held = self.into[(source, table)], self.held_by[(source, table)]
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

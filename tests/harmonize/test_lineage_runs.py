"""Lineage is stored as runs (docs/mapping.md): one stored row per stretch of OMOP rows that came, in step, from
consecutive rows of one file. Expected rows worked out by hand from the contract."""

from __future__ import annotations

import duckdb
import polars as pl

from fedomop.harmonize.run.lineage import (
    LINEAGE_FILE_TABLE,
    LINEAGE_ROW_SCHEMA,
    LINEAGE_ROW_TABLE,
    LINEAGE_VIEW_SQL,
    LineageFiles,
)

# OMOP ids 1-8 of one table: a.csv rows 5, 6, then 8, 9 (a gap in the rows), b.csv row 10 (another file), two
# FHIR resource ids, and id 9 skipped (a gap in the ids) before a.csv row 11.
ROWS = pl.DataFrame(
    {
        "omop_id": [1, 2, 3, 4, 5, 6, 7, 9],
        "source": ["s", "s", "s", "s", "s", "f", "f", "s"],
        "source_file": ["a.csv", "a.csv", "a.csv", "a.csv", "b.csv", "x.ndjson", "x.ndjson", "a.csv"],
        "source_row": ["5", "6", "8", "9", "10", "c1", "c2", "10"],
    }
)


def test_rows_in_step_are_stored_as_one_run() -> None:
    stored, files = LineageFiles().number(ROWS)
    numbers = {(source, name): no for no, source, name in files.iter_rows()}
    a, b, x = numbers[("s", "a.csv")], numbers[("s", "b.csv")], numbers[("f", "x.ndjson")]
    assert stored.select("omop_id", "file_no", "source_row_no", "source_row_text", "row_count").rows() == [
        (1, a, 5, None, 2),
        (3, a, 8, None, 2),
        (5, b, 10, None, 1),
        (6, x, None, "c1", 1),
        (7, x, None, "c2", 1),
        (9, a, 10, None, 1),
    ]
    assert list(stored.columns) == [c for c in LINEAGE_ROW_SCHEMA if c not in ("run_id", "omop_table")]


def test_the_view_gives_back_one_row_per_omop_row() -> None:
    stored, files = LineageFiles().number(ROWS)
    con = duckdb.connect()
    con.execute(f"CREATE TABLE {LINEAGE_FILE_TABLE} (file_no INTEGER, source VARCHAR, source_file VARCHAR)")
    con.execute(
        f"CREATE TABLE {LINEAGE_ROW_TABLE} (run_id VARCHAR, omop_table VARCHAR, omop_id BIGINT, file_no INTEGER, "
        "source_row_no BIGINT, source_row_text VARCHAR, row_count INTEGER)"
    )
    con.execute(LINEAGE_VIEW_SQL)
    con.register("files", files.to_arrow())
    con.register("stored", stored.to_arrow())
    con.execute(f"INSERT INTO {LINEAGE_FILE_TABLE} SELECT * FROM files")
    con.execute(f"INSERT INTO {LINEAGE_ROW_TABLE} SELECT 'r1', 'measurement', * FROM stored")
    back = con.execute(
        "SELECT run_id, omop_table, omop_id, source, source_file, source_row FROM fedomop_lineage ORDER BY omop_id"
    ).fetchall()
    assert back == [("r1", "measurement", *row) for row in ROWS.rows()]

"""Walk the official spec CSV row by row and check the created database has exactly that schema.

Runs on DuckDB (default), SQLite and a real PostgreSQL server.
"""

from __future__ import annotations

import csv
import datetime as dt
import re

import polars as pl
import pytest
import sqlalchemy as sa

from fedomop.harmonize.cdm.schema import (
    add_primary_keys,
    create_cdm,
    cycle_closing_foreign_keys,
    supports_deferred_keys,
)
from fedomop.harmonize.cdm.spec import FIELD_LEVEL_CSV, bundled_spec_dir, load_spec
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import DatabaseError

from ..conftest import SHARED


def spec_rows() -> list[dict[str, str]]:
    """The official rows; the spec quotes the reserved word note_nlp."offset" as in DDL, the column is offset."""
    with (SHARED / "omop" / FIELD_LEVEL_CSV).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["cdmFieldName"] = row["cdmFieldName"].strip('"')
    return rows


def test_bundled_spec_is_a_verbatim_copy_of_the_official_csv() -> None:
    for name in ("OMOP_CDMv5.4_Field_Level.csv", "OMOP_CDMv5.4_Table_Level.csv"):
        assert (bundled_spec_dir() / name).read_bytes() == (SHARED / "omop" / name).read_bytes()


def test_spec_covers_every_table_including_oncology() -> None:
    spec = load_spec()
    assert len(spec.tables) == 39
    for name in ("episode", "episode_event", "cdm_source", "concept", "source_to_concept_map", "cohort"):
        assert name in spec.tables
    assert spec.table("episode").primary_key.name == "episode_id"  # type: ignore[union-attr]


def normalise_type(reflected: str) -> tuple[str, int | None]:
    text = reflected.upper()
    if "INT" in text:
        return "integer", None
    if any(k in text for k in ("DOUBLE", "FLOAT", "REAL", "NUMERIC")):  # NUMERIC: the DDL's type on PostgreSQL
        return "float", None
    if text == "DATE":
        return "date", None
    if "TIMESTAMP" in text or "DATETIME" in text:
        return "datetime", None
    if text == "TEXT":
        return "varchar", None
    match = re.fullmatch(r"(?:CHARACTER VARYING|VARCHAR)(?:\((\d+)\))?", text)
    if match:
        return "varchar", int(match.group(1)) if match.group(1) else None
    raise AssertionError(f"unexpected reflected type {reflected!r}")


def duckdb_foreign_keys(database) -> set[tuple[str, str, str, str]]:
    found = set()
    with database.raw_duckdb() as con:
        rows = con.sql(
            "select table_name, constraint_column_names, referenced_table, referenced_column_names "
            "from duckdb_constraints() where constraint_type = 'FOREIGN KEY'"
        ).fetchall()
    for table, cols, ref_table, ref_cols in rows:
        found.add((table, cols[0], ref_table, ref_cols[0]))
    return found


def inspector_foreign_keys(database) -> set[tuple[str, str, str, str]]:
    inspector = sa.inspect(database.engine)
    found = set()
    for table in inspector.get_table_names():
        for fk in inspector.get_foreign_keys(table):
            found.add((table, fk["constrained_columns"][0], fk["referred_table"], fk["referred_columns"][0]))
    return found


@pytest.fixture(params=["duckdb", "sqlite", "postgresql"])
def backend_url(request, tmp_path):
    if request.param == "duckdb":
        return f"duckdb:///{tmp_path / 'cdm.duckdb'}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cdm.sqlite'}"
    return request.getfixturevalue("postgres_url")


def test_created_schema_matches_spec_field_by_field(backend_url: str) -> None:
    database = connect(backend_url)
    create_cdm(database.engine, constraints="all")
    inspector = sa.inspect(database.engine)
    rows = spec_rows()
    tables = {r["cdmTableName"].lower() for r in rows}
    assert set(inspector.get_table_names()) == tables

    columns = {t: {c.name: c for c in database.describe(t)} for t in tables}
    for row in rows:
        table, field = row["cdmTableName"].lower(), row["cdmFieldName"].lower()
        where = f"{database.dialect}: {table}.{field}"
        assert field in columns[table], where
        column = columns[table][field]
        kind, length = normalise_type(column.type)
        expected = row["cdmDatatype"].lower()
        if expected.startswith("varchar"):
            assert kind == "varchar", where
            size = expected[len("varchar(") : -1]
            if database.dialect != "duckdb":  # DuckDB stores VARCHAR without a length
                assert length == (None if size == "max" else int(size)), where
        else:
            assert kind == expected, where
        assert column.nullable is (row["isRequired"] != "Yes"), where
        assert column.primary_key is (row["isPrimaryKey"] == "Yes"), where
    for table in tables:  # no column that the spec does not have
        assert len(columns[table]) == sum(1 for r in rows if r["cdmTableName"].lower() == table)

    expected_fks = {
        (r["cdmTableName"].lower(), r["cdmFieldName"].lower(), r["fkTableName"].lower(), r["fkFieldName"].lower())
        for r in rows
        if r["isForeignKey"] == "Yes"
    }
    if database.dialect == "duckdb":
        skipped = cycle_closing_foreign_keys()
        assert skipped and all(t in {"domain", "vocabulary", "concept_class"} for t, _ in skipped)
        expected_fks = {fk for fk in expected_fks if (fk[0], fk[1]) not in skipped}
        assert duckdb_foreign_keys(database) == expected_fks
    else:
        assert inspector_foreign_keys(database) == expected_fks
    database.dispose()


def test_reserved_word_column_is_created_unquoted(tmp_path) -> None:
    database = connect(tmp_path / "nlp.duckdb")
    create_cdm(database.engine, tables=["note_nlp"])
    assert "offset" in {c.name for c in database.describe("note_nlp")}
    database.load_arrow(
        "note_nlp",
        pl.DataFrame(
            {
                "note_nlp_id": [1],
                "note_id": [2],
                "lexical_variant": ["x"],
                "nlp_date": [dt.date(2024, 1, 1)],
                "offset": ["12"],
            }
        ),
    )
    assert database.scalar('select "offset" from note_nlp') == "12"


def test_create_is_idempotent(tmp_path) -> None:
    database = connect(tmp_path / "again.duckdb")
    create_cdm(database.engine)
    create_cdm(database.engine)
    assert len(database.table_names()) == 39


def test_keys_added_after_a_bulk_load_refuse_repeated_ids(backend_url: str) -> None:
    """The engine loads keyless tables and adds the spec's keys afterwards; a repeated id fails, naming the table."""
    db = connect(backend_url)
    if db.dialect == "sqlite":  # SQLite cannot add a key to a table: the engine creates it keyed from the start
        assert not supports_deferred_keys(db.engine)
        return
    create_cdm(db.engine, constraints="none", tables=["person", "episode"])
    rows = {"gender_concept_id": 0, "year_of_birth": 1950, "race_concept_id": 0, "ethnicity_concept_id": 0}
    db.load_arrow("person", pl.DataFrame([{"person_id": 1, **rows}, {"person_id": 1, **rows}]))
    with pytest.raises(DatabaseError, match="cannot add the primary key person_id to person"):
        add_primary_keys(db.engine, ["person"])
    assert add_primary_keys(db.engine, ["episode"]) == ["episode"]
    with pytest.raises(DatabaseError):  # the key now exists: a repeated episode id is refused at load
        db.load_arrow("episode", pl.DataFrame([_episode(7), _episode(7)]))


def _episode(episode_id: int) -> dict[str, object]:
    return {
        "episode_id": episode_id,
        "person_id": 1,
        "episode_concept_id": 32533,
        "episode_start_date": dt.date(2020, 1, 1),
        "episode_object_concept_id": 0,
        "episode_type_concept_id": 32879,
    }

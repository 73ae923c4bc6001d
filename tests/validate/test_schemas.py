"""pandera schemas generated from the spec: field by field agreement, lazy validation, sampling."""

from __future__ import annotations

import datetime as dt

import polars as pl

from fedomop.harmonize.cdm import load_spec
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.validate.schemas import table_schema, validate_frame, validate_schemas, validate_table


def test_every_table_schema_agrees_with_the_spec_field_by_field():
    expected = {
        "integer": pl.Int64,
        "float": pl.Float64,
        "date": pl.Date,
        "datetime": pl.Datetime,
        "varchar": pl.String,
    }
    for table in load_spec().tables.values():
        schema = table_schema(table.name)
        assert list(schema.columns) == table.column_names
        for field in table.fields:
            column = schema.columns[field.name]
            assert column.dtype.type == expected[field.datatype](), (table.name, field.name)
            assert column.nullable is (not field.required), (table.name, field.name)
            assert column.unique is field.primary_key, (table.name, field.name)
            lengths = [c for c in column.checks if c.name == "str_length"]
            assert bool(lengths) is bool(field.datatype == "varchar" and field.length), (table.name, field.name)


def test_validation_is_lazy_and_collects_every_failure():
    frame = pl.DataFrame(
        {
            "person_id": [1, 1, 3],  # duplicate key
            "gender_concept_id": [8507, None, 8532],  # required
            "year_of_birth": ["1970", "1980", "1990"],  # text where the spec wants an integer
            "race_concept_id": [0, 0, 0],
            "ethnicity_concept_id": [0, 0, 0],
            "gender_source_value": ["M", "F" * 60, "F"],  # varchar(50)
        }
    )
    failures = {(f.column, f.check): f.count for f in validate_frame("person", frame)}
    assert failures[("person_id", "field_uniqueness")] == 2
    assert failures[("gender_concept_id", "not_nullable")] == 1
    assert ("year_of_birth", "dtype('Int64')") in failures
    assert failures[("gender_source_value", "str_length(None, 50)")] == 1
    missing = {c for c, k in failures if k == "column_in_dataframe"}
    assert "month_of_birth" in missing or "person" in missing


def test_clean_eunomia_tables_pass_their_schemas(eunomia_duckdb):
    db = connect(eunomia_duckdb, read_only=True)
    results = {r.table: r for r in validate_schemas(db, sample_rows=3_000)}
    db.dispose()
    for name in ("person", "visit_occurrence", "condition_occurrence", "measurement", "observation", "concept"):
        assert results[name].status == "pass", (name, results[name].failures)
    assert results["measurement"].sampled and results["measurement"].rows_checked == 3_000
    assert results["measurement"].rows_in_table == 10_040
    assert results["note"].status == "empty"


def test_sampled_batches_find_a_null_in_a_required_field(tmp_path):
    db = connect(tmp_path / "s.duckdb")
    from fedomop.harmonize.cdm import create_cdm

    create_cdm(db.engine, constraints="none", tables=["observation_period"])
    db.execute("ALTER TABLE observation_period ALTER COLUMN period_type_concept_id DROP NOT NULL")
    frame = pl.DataFrame(
        {
            "observation_period_id": list(range(1, 121)),
            "person_id": [1] * 120,
            "observation_period_start_date": [dt.date(2020, 1, 1)] * 120,
            "observation_period_end_date": [dt.date(2020, 2, 1)] * 120,
            "period_type_concept_id": [32817] * 119 + [None],
        }
    )
    db.load_arrow("observation_period", frame)
    result = validate_table(db, "observation_period", sample_rows=1_000)
    assert result.rows_checked == 120 and not result.sampled
    assert [(f.column, f.check, f.count) for f in result.failures] == [("period_type_concept_id", "not_nullable", 1)]

"""The created CDM carries the official PostgreSQL DDL's indexes, NUMERIC types and constraint names.

Expected values are the facts recorded from OHDSI/CommonDataModel ``inst/ddl/5.4/postgresql`` in
``harmonize/cdm/data/ddl_*.csv``; the counts below were counted by hand in those SQL files (70 ``CREATE INDEX``,
32 ``CLUSTER``, 28 primary keys, 176 foreign keys, 25 ``NUMERIC`` columns).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from fedomop.harmonize.cdm.ddl import create_indexes, load_ddl_facts
from fedomop.harmonize.cdm.schema import add_primary_keys, create_cdm
from fedomop.harmonize.cdm.spec import load_spec
from fedomop.harmonize.ground.db import connect


def test_recorded_facts_have_the_official_counts_and_agree_with_the_spec() -> None:
    facts = load_ddl_facts()
    assert len(facts.indexes) == 70
    assert sum(i.cluster for i in facts.indexes) == 32
    assert len(facts.primary_keys) == 28 and len(facts.foreign_keys) == 176
    assert len(facts.numeric_columns) == 25
    spec = load_spec()
    assert {(t, c) for t, c in facts.primary_key_columns.items()} == {
        (t.name, t.primary_key.name) for t in spec.tables.values() if t.primary_key
    }
    floats = {(f.table, f.name) for t in spec.tables.values() for f in t.fields if f.datatype == "float"}
    assert facts.numeric_columns == floats
    assert all(name == f"xpk_{table}" for table, name in facts.primary_keys.items())
    assert all(k.name == f"fpk_{t}_{c}" for (t, c), k in facts.foreign_keys.items())


def rows(connection: sa.Connection, sql: str) -> set[tuple]:
    return {tuple(r) for r in connection.execute(sa.text(sql))}


@pytest.mark.postgres
def test_postgresql_catalogue_equals_the_official_ddl(postgres_url: str) -> None:
    db = connect(postgres_url)
    create_cdm(db.engine, constraints="all")
    made = create_indexes(db.engine)
    facts = load_ddl_facts()
    assert len(made) == 70
    with db.engine.connect() as c:
        indexes = rows(
            c,
            "select i.relname, t.relname, a.attname from pg_index x "
            "join pg_class i on i.oid = x.indexrelid join pg_class t on t.oid = x.indrelid "
            "join pg_namespace n on n.oid = t.relnamespace and n.nspname = 'public' "
            "join pg_attribute a on a.attrelid = t.oid and a.attnum = x.indkey[0] where i.relname like 'idx%'",
        )
        clustered = rows(
            c, "select i.relname from pg_index x join pg_class i on i.oid = x.indexrelid where x.indisclustered"
        )
        columns = "select table_name, column_name from information_schema.columns where table_schema = 'public'"
        numeric = rows(c, f"{columns} and data_type = 'numeric'")
        doubles = rows(c, f"{columns} and data_type = 'double precision'")
        constraints = rows(
            c,
            "select constraint_type, constraint_name, table_name from information_schema.table_constraints "
            "where table_schema = 'public' and constraint_type in ('PRIMARY KEY', 'FOREIGN KEY')",
        )
        listed = rows(c, "select indexname from pg_indexes where indexname like 'idx%'")
    db.dispose()
    assert indexes == {(i.name, i.table, i.column) for i in facts.indexes}
    assert len(listed) == 70
    assert clustered == {(i.name,) for i in facts.indexes if i.cluster}
    assert numeric == set(facts.numeric_columns) and doubles == set()
    assert {(n, t) for k, n, t in constraints if k == "PRIMARY KEY"} == {(n, t) for t, n in facts.primary_keys.items()}
    assert {(n, t) for k, n, t in constraints if k == "FOREIGN KEY"} == {
        (k.name, k.table) for k in facts.foreign_keys.values()
    }


@pytest.mark.postgres
def test_postgresql_numeric_keeps_exact_values_and_reads_back_floats(postgres_url: str) -> None:
    db = connect(postgres_url)
    create_cdm(db.engine, tables=["measurement"])
    db.execute(
        "insert into measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
        "measurement_type_concept_id, value_as_number) values (1, 1, 0, '2020-01-01', 0, 0.0004)"
    )
    assert db.scalar("select value_as_number::text from measurement") == "0.0004"
    value = db.query("select value_as_number from measurement")["value_as_number"][0]
    db.dispose()
    assert value == 0.0004 and isinstance(value, float)


def test_duckdb_gets_the_indexes_after_a_keyless_load_and_doubles(tmp_path) -> None:
    db = connect(tmp_path / "cdm.duckdb")
    create_cdm(db.engine, constraints="none")
    db.execute(
        "insert into measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
        "measurement_type_concept_id, value_as_number) values (1, 1, 0, '2020-01-01', 0, 0.0004)"
    )
    add_primary_keys(db.engine, ["measurement", "person"])
    made = create_indexes(db.engine)
    with db.raw_duckdb() as con:
        found = {(n, t) for n, t in con.sql("select index_name, table_name from duckdb_indexes()").fetchall()}
        kinds = {
            k
            for (k,) in con.sql(
                "select distinct data_type from information_schema.columns where column_name = 'value_as_number'"
            ).fetchall()
        }
        keys = con.sql("select count(*) from duckdb_constraints() where constraint_type = 'PRIMARY KEY'").fetchall()
    value = db.scalar("select value_as_number from measurement")
    db.dispose()
    assert found == {(i.name, i.table) for i in load_ddl_facts().indexes} and len(made) == 70
    assert kinds == {"DOUBLE"} and value == 0.0004
    assert keys == [(2,)]

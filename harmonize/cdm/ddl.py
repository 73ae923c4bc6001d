"""Facts from the official OHDSI CommonDataModel v5.4 PostgreSQL DDL, kept as data in ``cdm/data/ddl_*.csv``.

The field-level spec says which columns exist; it does not say which indexes the CDM ships with, what the
constraints are called or which float columns are exact ``NUMERIC``. Those facts were read from
``inst/ddl/5.4/postgresql/OMOPCDM_postgresql_5.4_{ddl,indices,primary_keys,constraints}.sql`` (commit
f853f6e3 of OHDSI/CommonDataModel) and recorded one row per index, key and column, so the schema, the
post-load index step and the conformance test all read the same table.

Indexes are created after the bulk load (building an index once over loaded rows is far cheaper than
maintaining it row by row). PostgreSQL also gets the DDL's ``CLUSTER ... USING`` for the indexes marked
``cluster``; DuckDB has no clustering statement (its storage keeps insertion order), so there it is skipped.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fedomop.harmonize.cdm.spec import bundled_spec_dir


@dataclass(frozen=True)
class DdlIndex:
    """One ``CREATE INDEX`` of the official DDL (all are single-column, ascending)."""

    name: str
    table: str
    column: str
    cluster: bool


@dataclass(frozen=True)
class DdlForeignKey:
    name: str
    table: str
    column: str
    references_table: str
    references_column: str


@dataclass(frozen=True)
class DdlFacts:
    indexes: tuple[DdlIndex, ...]
    primary_keys: dict[str, str]  # table -> constraint name (xpk_<table>)
    primary_key_columns: dict[str, str]  # table -> column
    foreign_keys: dict[tuple[str, str], DdlForeignKey]  # (table, column) -> key
    numeric_columns: frozenset[tuple[str, str]]  # (table, column) typed NUMERIC in the DDL


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@lru_cache(maxsize=1)
def load_ddl_facts() -> DdlFacts:
    """The recorded DDL facts (cached: they never change at run time)."""
    data = bundled_spec_dir()
    pks = _rows(data / "ddl_primary_keys.csv")
    fks = [
        DdlForeignKey(r["constraint_name"], r["table"], r["column"], r["references_table"], r["references_column"])
        for r in _rows(data / "ddl_foreign_keys.csv")
    ]
    return DdlFacts(
        indexes=tuple(
            DdlIndex(r["index_name"], r["table"], r["column"], r["cluster"] == "yes")
            for r in _rows(data / "ddl_indexes.csv")
        ),
        primary_keys={r["table"]: r["constraint_name"] for r in pks},
        primary_key_columns={r["table"]: r["column"] for r in pks},
        foreign_keys={(k.table, k.column): k for k in fks},
        numeric_columns=frozenset((r["table"], r["column"]) for r in _rows(data / "ddl_numeric_columns.csv")),
    )


def primary_key_name(table: str) -> str:
    """The DDL's constraint name for a table's primary key (``xpk_<table>``)."""
    return load_ddl_facts().primary_keys.get(table, f"xpk_{table}")


def foreign_key_name(table: str, column: str) -> str:
    """The DDL's constraint name for a foreign key (``fpk_<table>_<column>``)."""
    key = load_ddl_facts().foreign_keys.get((table, column))
    return key.name if key else f"fpk_{table}_{column}"


def _qualified(engine: Engine, table: str, schema: str | None) -> str:
    quote = engine.dialect.identifier_preparer.quote
    return quote(table) if schema is None else f"{quote(schema)}.{quote(table)}"


def create_indexes(engine: Engine, tables: Iterable[str] | None = None, *, schema: str | None = None) -> list[str]:
    """Create the official DDL's indexes on the existing CDM tables (all, or those named); returns the names made.

    Idempotent (``IF NOT EXISTS``), so a re-run or a database that already has some indexes is fine. On
    PostgreSQL the clustered ones are then clustered and the tables analysed, as after the official DDL.
    SQLite (tests only) gets no indexes.
    """
    if engine.dialect.name not in ("duckdb", "postgresql"):
        return []
    inspector = sa.inspect(engine)
    present = set(inspector.get_table_names(schema=schema))
    wanted = set(tables) if tables is not None else None
    made: list[str] = []
    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as connection:
        for index in load_ddl_facts().indexes:
            if index.table not in present or (wanted is not None and index.table not in wanted):
                continue
            target = _qualified(engine, index.table, schema)
            connection.execute(
                sa.text(f"CREATE INDEX IF NOT EXISTS {quote(index.name)} ON {target} ({quote(index.column)})")
            )
            if index.cluster and engine.dialect.name == "postgresql":
                connection.execute(sa.text(f"CLUSTER {target} USING {quote(index.name)}"))
            made.append(index.name)
    return made

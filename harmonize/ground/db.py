"""Database connections and fast bulk I/O for DuckDB (default), PostgreSQL and SQLite.

A database is named by a SQLAlchemy URL. A bare path (``site_a.duckdb``) means a
DuckDB file. Bulk loads never go row by row where the backend has a bulk path:
DuckDB ingests Arrow directly, PostgreSQL gets ``COPY ... FROM STDIN`` fed
from Arrow's CSV writer, SQLite (tests only) falls back to ``executemany``.
"""

from __future__ import annotations

import atexit
import gc
import io
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fedomop.harmonize.ground.errors import DatabaseError

_COPY_CHUNK_ROWS = 200_000


def _drop_duckdb_engine_globals() -> None:
    """At exit, before modules are torn down: with torch also loaded, duckdb 2's nanobind bindings print
    "leaked instances" for the DuckDB types that duckdb_engine's module globals still hold. Dropping those
    globals first ends the process quietly; nothing runs after atexit, so nothing can miss them."""
    for name in [m for m in sys.modules if m == "duckdb_engine" or m.startswith("duckdb_engine.")]:
        sys.modules[name].__dict__.clear()
    gc.collect()


atexit.register(_drop_duckdb_engine_globals)  # registered first, so it runs after every later atexit handler


def quote_identifier(name: str) -> str:
    """A SQL identifier in double quotes, inner quotes doubled (safe for reserved words such as ``offset``)."""
    escaped = name.replace('"', '""')
    return f'"{escaped}"'


def normalize_url(url: str | Path) -> str:
    """Turn a bare file path into a DuckDB URL; leave real URLs alone."""
    text = str(url)
    if "://" in text:
        return text
    if text.startswith("postgres") or text.startswith("sqlite:"):
        return text
    return f"duckdb:///{Path(text).expanduser()}"


def _numeric_as_float(dbapi_connection: Any, _record: Any) -> None:
    """PostgreSQL NUMERIC columns (the CDM's value_as_number, quantity, cost.*) read back as Python floats,
    as the same columns do from DuckDB's DOUBLE; stored exactly, computed on as floats (like the DQD's R code)."""
    adapters = getattr(dbapi_connection, "adapters", None)  # psycopg 3; other drivers keep their own reading
    if adapters is not None:
        from psycopg.types.numeric import FloatLoader

        adapters.register_loader("numeric", FloatLoader)


@dataclass(frozen=True)
class ColumnInfo:
    """A column as reflected from a live database."""

    name: str
    type: str
    nullable: bool
    primary_key: bool


class Database:
    """A site database: a SQLAlchemy engine plus fast Arrow/polars paths for bulk data."""

    def __init__(self, url: str | Path, *, read_only: bool = False, must_exist: bool = False) -> None:
        self.url = normalize_url(url)
        try:
            parsed = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise DatabaseError(
                f"not a database URL: {url!r}",
                fix="use duckdb:///path/site.duckdb, postgresql+psycopg://user@host/db or a .duckdb file path",
            ) from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect == "postgres":
            self.dialect = "postgresql"
        kwargs: dict[str, Any] = {}
        if self.dialect == "duckdb":
            if parsed.database and parsed.database != ":memory:":
                if (read_only or must_exist) and not Path(parsed.database).is_file():
                    # a command that reads a database never creates one (nor its folder): a typo must not pass
                    raise DatabaseError(
                        "database file not found",
                        where=str(parsed.database),
                        fix="pass the DuckDB file `fedomop map` (or `vocab load`) wrote, or a database URL, to --db",
                    )
                # a command that writes one creates the named file's folder (docs/mapping.md, "--db")
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            if read_only:
                kwargs["connect_args"] = {"read_only": True}
        if self.dialect == "postgresql" and parsed.drivername in ("postgresql", "postgres"):
            self.url = str(parsed.set(drivername="postgresql+psycopg"))
        try:
            self.engine: Engine = sa.create_engine(self.url, **kwargs)
        except Exception as exc:  # noqa: BLE001 - driver import/config errors vary by backend
            raise DatabaseError(
                f"cannot open {self.url}: {exc}", fix="check the URL and that its driver is installed"
            ) from exc
        if self.dialect == "postgresql":
            sa.event.listen(self.engine, "connect", _numeric_as_float)

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    def dispose(self) -> None:
        self.engine.dispose()

    # -- plain SQL -----------------------------------------------------------------------------------
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.text(sql), params or {})

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql), params or {}).scalar()

    def query(self, sql: str, params: dict[str, Any] | None = None) -> pl.DataFrame:
        """Run a query and return a polars DataFrame (through Arrow on DuckDB)."""
        if self.dialect == "duckdb" and not params:
            with self.raw_duckdb() as con:
                frame = pl.from_arrow(con.sql(sql).to_arrow_table())
                assert isinstance(frame, pl.DataFrame)  # an Arrow table (not an array) gives a DataFrame
                return frame
        with self.engine.connect() as connection:
            result = connection.execute(sa.text(sql), params or {})
            columns = list(result.keys())
            rows = result.fetchall()
        return pl.DataFrame([list(r) for r in rows], schema=columns, orient="row", infer_schema_length=None)

    def table_names(self) -> list[str]:
        return sa.inspect(self.engine).get_table_names()

    def has_table(self, name: str) -> bool:
        return sa.inspect(self.engine).has_table(name)

    def describe(self, table: str) -> list[ColumnInfo]:
        """Columns of a table as the database reports them (DuckDB through its catalog functions,
        since duckdb-engine's reflection of columns is broken on DuckDB 2)."""
        if self.dialect == "duckdb":
            with self.raw_duckdb() as con:
                rows = con.execute(
                    "select column_name, data_type, is_nullable = 'YES' from information_schema.columns "
                    "where table_name = ? order by ordinal_position",
                    [table],
                ).fetchall()
                pk_rows = con.execute(
                    "select constraint_column_names from duckdb_constraints() "
                    "where table_name = ? and constraint_type = 'PRIMARY KEY'",
                    [table],
                ).fetchall()
            pk = {c for (cols,) in pk_rows for c in cols}
            return [ColumnInfo(name, str(kind), bool(nullable), name in pk) for name, kind, nullable in rows]
        inspector = sa.inspect(self.engine)
        pk = set(inspector.get_pk_constraint(table)["constrained_columns"])
        return [
            ColumnInfo(c["name"], str(c["type"]), bool(c["nullable"]), c["name"] in pk)
            for c in inspector.get_columns(table)
        ]

    @contextmanager
    def raw_duckdb(self) -> Iterator[Any]:
        """The native duckdb connection under this engine (DuckDB only)."""
        if self.dialect != "duckdb":
            raise DatabaseError(f"{self.url} is not a DuckDB database", fix="use a duckdb:/// URL for this operation")
        raw = self.engine.raw_connection()
        try:
            yield raw.driver_connection
            raw.commit()
        finally:
            raw.close()

    # -- bulk load -----------------------------------------------------------------------------------
    def load_arrow(
        self,
        table: str,
        data: pa.Table | pl.DataFrame,
        *,
        columns: Sequence[str] | None = None,
        constants: Mapping[str, str | int] | None = None,
    ) -> int:
        """Append rows to an existing table by column name, using the backend's bulk path. Returns row count.

        ``constants`` fill columns that hold one value for every row (a run id, a table name): DuckDB takes them
        as query parameters instead of millions of repeated values in the Arrow data.
        """
        arrow = data.to_arrow(compat_level=self._arrow_level) if isinstance(data, pl.DataFrame) else data
        if columns is not None:
            arrow = arrow.select(list(columns))
        if arrow.num_rows == 0:
            return 0
        constants = dict(constants or {})
        try:
            if self.dialect == "duckdb":
                self._load_duckdb(table, arrow, constants)
            else:
                for name, value in constants.items():
                    arrow = arrow.append_column(name, pa.repeat(value, arrow.num_rows))
                if self.dialect == "postgresql":
                    self._load_postgres(table, arrow)
                else:
                    self._load_executemany(table, arrow)
        except DatabaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - surface backend errors with the table name
            raise DatabaseError(
                f"bulk load of {arrow.num_rows} rows into {table!r} failed: {exc}",
                where=f"{self!r} table {table}",
                fix="check the rows against the table's schema (types, NOT NULL, primary key)",
            ) from exc
        return arrow.num_rows

    @property
    def _arrow_level(self) -> pl.CompatLevel:
        """DuckDB reads polars' own string views (no copy of every text column: 1.5 s of CPU at 1M persons);
        the other backends' paths (CSV for COPY, Python rows) take the classic Arrow strings."""
        return pl.CompatLevel.newest() if self.dialect == "duckdb" else pl.CompatLevel.oldest()

    def _load_duckdb(self, table: str, arrow: pa.Table, constants: dict[str, str | int]) -> None:
        names = ", ".join(quote_identifier(c) for c in arrow.column_names)
        extra = "".join(f", {quote_identifier(c)}" for c in constants)
        values = "".join(", ?" for _ in constants)
        with self.raw_duckdb() as con:
            con.register("__fedomop_load", arrow)
            try:
                con.execute(
                    f'INSERT INTO "{table}" ({names}{extra}) SELECT {names}{values} FROM __fedomop_load',
                    list(constants.values()),
                )
            finally:
                con.unregister("__fedomop_load")

    def _load_postgres(self, table: str, arrow: pa.Table) -> None:
        names = ", ".join(quote_identifier(c) for c in arrow.column_names)
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None, "a checked-out pool connection holds a psycopg connection"
            with driver.cursor() as cursor:
                with cursor.copy(f'COPY "{table}" ({names}) FROM STDIN WITH (FORMAT csv, HEADER false)') as copy:
                    for batch in arrow.to_batches(max_chunksize=_COPY_CHUNK_ROWS):
                        buffer = io.BytesIO()
                        pacsv.write_csv(batch, buffer, write_options=pacsv.WriteOptions(include_header=False))
                        copy.write(buffer.getvalue())
            raw.commit()
        finally:
            raw.close()

    def _load_executemany(self, table: str, arrow: pa.Table) -> None:
        metadata = sa.MetaData()
        target = sa.Table(table, metadata, autoload_with=self.engine)
        with self.engine.begin() as connection:
            for batch in arrow.to_batches(max_chunksize=50_000):
                connection.execute(target.insert(), batch.to_pylist())


def connect(url: str | Path, *, read_only: bool = False, must_exist: bool = False) -> Database:
    """Open a site database by URL or DuckDB file path.

    A DuckDB file is created, with its folder, unless ``read_only`` or ``must_exist``: then a missing file is a
    DatabaseError (bad input), and nothing is created."""
    return Database(url, read_only=read_only, must_exist=must_exist)

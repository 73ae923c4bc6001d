"""Atomic site loads: build the new site database aside, then swap it in only when the whole run succeeded.

DuckDB: build ``<db>.tmp-<run_id>`` and ``os.replace`` it over the target file.
PostgreSQL: build in a staging schema, then, in one transaction, replace *only the tables fedomop built*
in the target schema (``--schema``; fedomop's own ``fedomop_*`` run tables may go to ``--results-schema``,
OHDSI's cdm/results split) and drop the emptied staging schema. Other objects in those schemas (a hospital's
``achilles_results``) are never touched. A target schema that already holds OMOP tables but no
``fedomop_run`` table was not made by fedomop and is refused.
A failure anywhere before the swap leaves the previous database exactly as it was.

An existing ``--db`` file that is not a DuckDB database, or a DuckDB database with tables but no
``fedomop_run`` table, is refused rather than replaced.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa

from fedomop.harmonize.ground.db import Database, connect, normalize_url
from fedomop.harmonize.ground.errors import DatabaseError

FEDOMOP_MARKER = "fedomop_run"  # the run table: its presence says fedomop built this database/schema
DUCKDB_MAGIC = b"DUCK"  # bytes 8..12 of a DuckDB database file


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_duckdb_target(path: Path) -> None:
    """Refuse a --db that fedomop would otherwise silently replace: a folder, a non-DuckDB file, another tool's
    DuckDB database, or a path whose parent is a file."""
    fix = "give a new file name, or the path of a database fedomop created"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DatabaseError(f"the --db folder {parent} is a file, not a folder", where=str(path), fix=fix)
            break
    if not path.exists():
        return
    if path.is_dir():
        raise DatabaseError("--db names a folder, not a database file", where=str(path), fix=fix)
    with path.open("rb") as handle:
        head = handle.read(12)
    if path.stat().st_size and head[8:12] != DUCKDB_MAGIC:
        raise DatabaseError(
            "--db names an existing file that is not a DuckDB database; fedomop will not replace it",
            where=str(path),
            fix=fix,
        )
    if not path.stat().st_size:
        return
    import duckdb

    try:
        with duckdb.connect(str(path), read_only=True) as con:
            tables = {row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()}
    except duckdb.Error as exc:
        raise DatabaseError(f"cannot open the existing --db: {exc}", where=str(path), fix=fix) from None
    if tables and FEDOMOP_MARKER not in tables:
        raise DatabaseError(
            f"--db is a DuckDB database fedomop did not create ({len(tables)} tables, no {FEDOMOP_MARKER}); "
            "fedomop will not replace it",
            where=str(path),
            fix=fix,
        )


def _search_path_url(url: str, schema: str) -> str:
    parsed = sa.engine.make_url(url)
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


class AtomicTarget:
    """``with AtomicTarget(url, run_id) as db: ...; target.commit()`` — only ``commit`` makes the load visible."""

    def __init__(
        self, url: str | Path, run_id: str, *, schema: str = "public", results_schema: str | None = None
    ) -> None:
        self.url = normalize_url(url)
        self.run_id = run_id
        self.schema = schema
        self.results_schema = results_schema or schema
        parsed = sa.engine.make_url(self.url)
        self.dialect = parsed.get_backend_name()
        self.db: Database | None = None
        self.seed: Path | None = None  # DuckDB: start the aside database as a copy of this file (a vocabulary store)
        self._committed = False
        if self.dialect == "duckdb":
            if not parsed.database or parsed.database == ":memory:":
                raise DatabaseError("an in-memory DuckDB cannot be loaded atomically", fix="give a .duckdb file path")
            self.path = Path(parsed.database)
            _check_duckdb_target(self.path)
            self.tmp = self.path.with_name(f"{self.path.name}.tmp-{run_id}")
        elif self.dialect in ("postgresql", "postgres"):
            self.stage = f"fedomop_stage_{run_id.replace('-', '_')}".lower()
        else:
            raise DatabaseError(f"{self.dialect} is not a site database backend", fix="use DuckDB or PostgreSQL")

    def __enter__(self) -> Database:
        if self.dialect == "duckdb":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for stale in (self.tmp, Path(f"{self.tmp}.wal")):
                stale.unlink(missing_ok=True)
            if self.seed is not None:
                shutil.copyfile(self.seed, self.tmp)
            self.db = connect(self.tmp)
        else:
            admin = connect(self.url)
            admin.execute(f'CREATE SCHEMA "{self.stage}"')
            admin.dispose()
            self.db = connect(_search_path_url(self.url, self.stage))
        return self.db

    def commit(self) -> None:
        """Make the new database the site database, in one step."""
        assert self.db is not None
        if self.dialect == "duckdb":
            self.db.execute("CHECKPOINT")
            self.db.dispose()
            Path(f"{self.path}.wal").unlink(missing_ok=True)
            os.replace(self.tmp, self.path)
        else:
            self.db.dispose()
            admin = connect(self.url)
            with admin.engine.begin() as connection:
                self._swap_tables(connection)
            admin.dispose()
        self._committed = True

    def _swap_tables(self, connection: sa.Connection) -> None:
        """Move each staged relation into its schema, replacing only the same-named relation of an earlier run."""
        staged = connection.execute(
            sa.text(
                "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND c.relkind IN ('r', 'v', 'm', 'p')"
            ),
            {"s": self.stage},
        ).all()
        for schema in {self.schema, self.results_schema}:
            connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}"))
            self._refuse_foreign(connection, schema, {name for name, _ in staged})
        kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}
        # views first: an earlier run's view (fedomop_lineage) goes before the tables it reads are dropped
        for name, kind in sorted(staged, key=lambda relation: relation[1] not in ("v", "m")):
            target = self.results_schema if name.startswith("fedomop_") else self.schema
            existing = connection.execute(
                sa.text(
                    "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :s AND c.relname = :t AND c.relkind IN ('r', 'v', 'm', 'p')"
                ),
                {"s": target, "t": name},
            ).scalar()
            if existing:
                connection.execute(sa.text(f"DROP {kinds[existing]} {_quote(target)}.{_quote(name)}"))
            connection.execute(
                sa.text(f"ALTER {kinds[kind]} {_quote(self.stage)}.{_quote(name)} SET SCHEMA {_quote(target)}")
            )
        connection.execute(sa.text(f"DROP SCHEMA {_quote(self.stage)} CASCADE"))  # ours; only leftovers remain

    def _refuse_foreign(self, connection: sa.Connection, schema: str, names: set[str]) -> None:
        """A schema holding tables fedomop would replace but no marker of an earlier fedomop run: refuse."""
        present = set(
            connection.execute(
                sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"), {"s": schema}
            ).scalars()
        )
        clash = sorted(present & names)
        marker_schema = self.results_schema
        marked = FEDOMOP_MARKER in present or (
            schema != marker_schema
            and connection.execute(
                sa.text("SELECT 1 FROM information_schema.tables WHERE table_schema = :s AND table_name = :t"),
                {"s": marker_schema, "t": FEDOMOP_MARKER},
            ).scalar()
        )
        if clash and not marked:
            raise DatabaseError(
                f"schema {schema!r} already holds {', '.join(clash[:5])}{' ...' if len(clash) > 5 else ''} that "
                f"fedomop did not create (no {FEDOMOP_MARKER} table); fedomop will not replace them",
                where=f"{sa.engine.make_url(self.url).render_as_string(hide_password=True)} schema {schema}",
                fix="map into another schema (--schema), or drop those tables yourself if they are disposable",
            )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._committed:
            return
        if self.db is not None:
            self.db.dispose()
        if self.dialect == "duckdb":
            for stale in (self.tmp, Path(f"{self.tmp}.wal")):
                stale.unlink(missing_ok=True)
        else:
            admin = connect(self.url)
            admin.execute(f'DROP SCHEMA IF EXISTS "{self.stage}" CASCADE')
            admin.dispose()

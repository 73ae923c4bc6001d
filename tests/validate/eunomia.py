"""Load the Eunomia CSV export into a database (until harmonize.cdm.io.load_cdm_folder is complete)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from harmonize.cdm import create_cdm, load_spec
from harmonize.db import Database

_TYPES = {"integer": pl.Int64, "float": pl.Float64, "date": pl.Date, "datetime": pl.Datetime("us")}


def read_table(path: Path, table: str) -> pl.DataFrame:
    spec = load_spec().table(table)
    raw = pl.read_csv(path, infer_schema=False)
    raw = raw.rename({c: c.lower() for c in raw.columns})
    columns = []
    for field in spec.fields:
        value = pl.col(field.name) if field.name in raw.columns else pl.lit(None, pl.String)
        value = pl.when(value != "").then(value)
        if field.datatype == "date":
            value = value.str.slice(0, 10).str.to_date("%Y-%m-%d")
        elif field.datatype == "datetime":
            value = value.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False)
        elif field.datatype in _TYPES:
            value = value.cast(_TYPES[field.datatype])
        columns.append(value.alias(field.name))
    return raw.select(columns)


def load_folder(db: Database, folder: Path) -> dict[str, int]:
    """Create the CDM without constraints (so tests can seed duplicate keys) and load every CSV."""
    create_cdm(db.engine, constraints="none")
    spec = load_spec()
    counts = {}
    for path in sorted(folder.glob("*.csv")):
        table = path.stem.lower()
        if table in spec.tables:
            counts[table] = db.load_arrow(table, read_table(path, table))
    return counts

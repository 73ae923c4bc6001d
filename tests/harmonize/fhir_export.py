"""Hand-written FHIR R4 exports for the tests: resources to Bulk Data NDJSON files, and the mapped rows back."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path

import duckdb


def write_ndjson(folder: Path, name: str, resources: Iterable[dict[str, object]]) -> Path:
    """``resources`` one per line in ``folder/name`` (gzip-compressed when the name ends in .gz)."""
    text = "".join(json.dumps(resource) + "\n" for resource in resources)
    path = folder / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as out:
            out.write(text)
    else:
        path.write_text(text)
    return path


def query_rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    """The rows ``sql`` gives on the DuckDB database ``db`` (opened read-only)."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()

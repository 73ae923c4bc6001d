"""Fixtures for the vocabulary tests: Eunomia's real vocabulary, in its own CSV form and rewritten as Athena files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.vocabulary import load_vocabulary

from ..conftest import EUNOMIA

ATHENA_FILES = ("CONCEPT", "CONCEPT_RELATIONSHIP", "VOCABULARY", "DOMAIN", "CONCEPT_CLASS", "RELATIONSHIP")
DATE_COLUMNS = ("valid_start_date", "valid_end_date")


def read_eunomia(name: str) -> pl.DataFrame:
    """An Eunomia CSV as text, exactly as written (empty fields as empty strings)."""
    frame = pl.read_csv(EUNOMIA / f"{name}.csv", infer_schema=False)
    return frame.with_columns(pl.all().fill_null(""))


def write_athena(frame: pl.DataFrame, path: Path) -> None:
    """Write a frame the way Athena does: tab-delimited, no quoting at all, dates as YYYYMMDD."""
    dated = frame.with_columns(pl.col(c).str.replace_all("-", "") for c in DATE_COLUMNS if c in frame.columns)
    lines = ["\t".join(dated.columns)] + ["\t".join(row) for row in dated.iter_rows()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def csv_records(path: Path) -> int:
    """Data lines of a CSV file (Eunomia has no multi-line fields, so lines minus the header)."""
    with path.open(encoding="utf-8") as handle:
        return sum(1 for _ in handle) - 1


@pytest.fixture(scope="session")
def athena_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eunomia's vocabulary rewritten in Athena's format: the relationships of concepts present in CONCEPT."""
    folder = tmp_path_factory.mktemp("athena")
    concept = read_eunomia("CONCEPT")
    ids = set(concept.get_column("concept_id").to_list())
    relationship = read_eunomia("CONCEPT_RELATIONSHIP").filter(pl.col("concept_id_1").is_in(ids))
    write_athena(concept, folder / "CONCEPT.csv")
    write_athena(relationship, folder / "CONCEPT_RELATIONSHIP.csv")
    for name in ATHENA_FILES[2:]:
        write_athena(read_eunomia(name), folder / f"{name}.csv")
    return folder


@pytest.fixture(scope="module")
def eunomia_db(tmp_path_factory: pytest.TempPathFactory) -> Database:
    """A DuckDB database holding Eunomia's vocabulary (read-only use: tests that write make their own)."""
    db = connect(tmp_path_factory.mktemp("eunomia") / "vocab.duckdb")
    load_vocabulary(db, EUNOMIA)
    return db

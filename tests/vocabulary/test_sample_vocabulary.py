"""The vocabulary subset shipped in sample_data/vocabulary (Athena format) loads and resolves the sites' codes."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.vocabulary import VOCABULARY_TABLES, descendants, load_vocabulary, resolve_codes

from ..conftest import SAMPLE_DATA
from .conftest import csv_records

FOLDER = SAMPLE_DATA / "vocabulary"


def test_sample_vocabulary_loads_every_file(tmp_path: Path) -> None:
    db = connect(tmp_path / "sample.duckdb")
    counts = load_vocabulary(db, FOLDER)
    files = {p.stem.lower(): p for p in FOLDER.glob("*.csv")}
    assert "concept" in files and "concept_relationship" in files
    for table in VOCABULARY_TABLES:
        expected = csv_records(files[table]) if table in files else 0
        assert counts[table] == expected, table
        assert db.scalar(f"SELECT COUNT(*) FROM {table}") == expected, table


def test_sample_vocabulary_maps_icd_codes_to_snomed_prostate_cancer(tmp_path: Path) -> None:
    db = connect(tmp_path / "sample.duckdb")
    load_vocabulary(db, FOLDER)
    codes = pl.DataFrame({"vocabulary_id": ["ICD10CM", "ICD9CM"], "source_code": ["C61", "185"]})
    out = resolve_codes(db, codes)
    assert out.select("source_concept_id", "concept_id", "domain_id", "mapped_via").rows() == [
        (35206266, 200962, "Condition", "maps_to"),
        (44822887, 200962, "Condition", "maps_to"),
    ]
    assert {4116087, 4161028, 37016740} <= set(descendants(db, [200962]))

"""profile -> draft-mapping -> map on the sample sites, with the hand-written mappings' facts as the reference.

Site A (ICD-10-CM, RxNorm, LOINC, SNOMED, ISO dates) and site C (French column names, ';', latin-1 patients
file, day-first dates) must both draft a mapping that runs balanced with one person per patients.csv row.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.db import connect
from tests.conftest import SAMPLE_DATA

runner = CliRunner()
VOCABULARY = SAMPLE_DATA / "vocabulary"
NOT_EXTRACT = ("ground_truth.csv", "truth_persons.csv", "source_to_concept_map.csv")


def _cli(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("site", "expected_tables"),
    [
        ("site_a", {"person", "death", "visit_occurrence", "condition_occurrence", "drug_exposure",
                    "measurement", "procedure_occurrence"}),
        ("site_c", {"person", "death", "visit_occurrence", "condition_occurrence"}),
    ],
)  # fmt: skip
def test_drafted_mapping_runs_balanced(tmp_path: Path, site: str, expected_tables: set[str]) -> None:
    source = tmp_path / "extract"
    source.mkdir()
    for path in (SAMPLE_DATA / site).glob("*.csv"):
        if path.name not in NOT_EXTRACT:
            shutil.copy(path, source / path.name)
    _cli("profile", "--source", source, "--out", tmp_path / "profile", "--vocabulary", VOCABULARY)
    mapping = tmp_path / "mappings" / f"{site}.yaml"
    output = _cli("draft-mapping", "--profile", tmp_path / "profile" / "profile.json", "--out", mapping,
                  "--vocabulary", VOCABULARY)  # fmt: skip
    drafted = {line.split(":")[0] for line in output.splitlines() if ": " in line and not line.startswith("wrote")}
    assert drafted == expected_tables
    db = tmp_path / "out.duckdb"
    assert "reconciliation balanced" in _cli("map", "--mapping", mapping, "--source", source, "--db", db)
    patients = pl.read_csv(source / "patients.csv", separator="," if site == "site_a" else ";", encoding="latin-1")
    assert connect(str(db), read_only=True).query("SELECT COUNT(*) FROM person").item() == patients.height

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
        # site C's drugs, procedures and labs are local codes: drafted as <FILE>_LOCAL vocabularies
        ("site_c", {"person", "death", "visit_occurrence", "condition_occurrence", "drug_exposure",
                    "measurement", "procedure_occurrence"}),
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


def test_review_of_site_c_local_codes_agrees_with_its_hand_made_concept_map(tmp_path: Path) -> None:
    """Site C's drugs and procedures are local codes with French labels; its steward's own source_to_concept_map
    is the reference for the candidates that name similarity proposes."""
    source = tmp_path / "extract"
    source.mkdir()
    for path in (SAMPLE_DATA / "site_c").glob("*.csv"):
        if path.name not in NOT_EXTRACT:
            shutil.copy(path, source / path.name)
    _cli("profile", "--source", source, "--out", tmp_path / "profile", "--vocabulary", VOCABULARY)
    mapping = tmp_path / "site_c.yaml"
    _cli("draft-mapping", "--profile", tmp_path / "profile" / "profile.json", "--out", mapping,
         "--vocabulary", VOCABULARY)  # fmt: skip
    db = tmp_path / "out.duckdb"
    _cli("map", "--mapping", mapping, "--source", source, "--db", db)
    review = tmp_path / "review.csv"
    _cli("codes", "review", "--mapping", mapping, "--db", db, "--source", source, "--out", review)
    sheet = pl.read_csv(review, infer_schema=False)
    assert sheet.filter(pl.col("source_code") == "PAL")["source_name"].item() == "Phosphatases alcalines"
    hand = pl.read_csv(SAMPLE_DATA / "site_c" / "source_to_concept_map.csv", infer_schema=False)
    proposed = sheet.filter(pl.col("candidate_1_id").is_not_null()).join(hand, on="source_code", how="inner")
    assert proposed.height >= 5
    assert proposed["candidate_1_id"].to_list() == proposed["target_concept_id_right"].to_list()

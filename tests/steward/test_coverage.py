"""Coverage is a first-class result: a mapping that loses its source_to_concept_map must not exit 0.

Expected counts are computed from site A's files (conditions.csv, source_to_concept_map.csv, ground_truth.csv),
not from the engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.steward.coverage import concept_coverage
from tests.conftest import MAPPINGS, SAMPLE_DATA

runner = CliRunner()
SITE_A = SAMPLE_DATA / "site_a"


def _site_a_with_min_coverage(tmp_path: Path, *, keep_stcm: bool) -> tuple[Path, Path]:
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS / "common", mappings / "common")
    text = (MAPPINGS / "site_a.yaml").read_text()
    text = text.replace("folder: ../sample_data/vocabulary", f"folder: {SAMPLE_DATA / 'vocabulary'}")
    (mappings / "site_a.yaml").write_text(text + "min_coverage: {condition_occurrence: 0.95, measurement: 0.95}\n")
    source = tmp_path / "site_a"
    shutil.copytree(SITE_A, source)
    if not keep_stcm:
        header = (SITE_A / "source_to_concept_map.csv").read_text().splitlines()[0]
        (source / "source_to_concept_map.csv").write_text(header + "\n")
    return mappings / "site_a.yaml", source


def _expected_condition_zero(*, with_stcm: bool) -> tuple[int, int]:
    truth = pl.read_csv(SITE_A / "ground_truth.csv", infer_schema=False).filter(
        pl.col("expected_table") == "condition_occurrence"
    )
    zero = truth.filter(pl.col("concept_id") == "0").height
    if not with_stcm:
        conditions = pl.read_csv(SITE_A / "conditions.csv", infer_schema=False)
        stcm = pl.read_csv(SITE_A / "source_to_concept_map.csv", infer_schema=False)
        zero += conditions.filter(pl.col("icd10_code").is_in(stcm["source_code"].implode())).height
    return zero, truth.height


def test_min_coverage_passes_with_the_site_concept_map(tmp_path: Path) -> None:
    mapping, source = _site_a_with_min_coverage(tmp_path, keep_stcm=True)
    db = tmp_path / "a.duckdb"
    result = runner.invoke(app, ["map", "--mapping", str(mapping), "--source", str(source), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "concept coverage" in result.output
    coverage = concept_coverage(connect(str(db), read_only=True), load_mapping(mapping))
    row = coverage.filter(pl.col("omop_table") == "condition_occurrence").row(0, named=True)
    assert (row["source_vocabulary_id"], row["unmapped"], row["records"]) == (
        "ICD10CM",
        *_expected_condition_zero(with_stcm=True),
    )


def test_losing_the_site_concept_map_fails_the_run(tmp_path: Path) -> None:
    mapping, source = _site_a_with_min_coverage(tmp_path, keep_stcm=False)
    db = tmp_path / "a.duckdb"
    result = runner.invoke(app, ["map", "--mapping", str(mapping), "--source", str(source), "--db", str(db)])
    assert result.exit_code == 1, result.output
    zero, total = _expected_condition_zero(with_stcm=False)
    assert f"condition_occurrence: coverage {(total - zero) / total:.1%} is below min_coverage 95.0%" in " ".join(
        result.output.split()
    )
    assert "measurement: coverage" not in result.output

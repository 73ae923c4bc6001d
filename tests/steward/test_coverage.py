"""Coverage is a first-class result: a mapping that loses its source_to_concept_map must not exit 0.

Expected counts are computed from site A's files (conditions.csv, source_to_concept_map.csv, ground_truth.csv),
not from the engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.run.coverage import concept_coverage
from fedomop.harmonize.validate.compare import compare_reports, render_comparison_html
from fedomop.harmonize.validate.profile import coverage_bounds
from fedomop.harmonize.validate.report import ValidateOptions, load_report, validate_database
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


def test_the_loss_shows_in_the_internal_report_exactly_and_in_the_shareable_one_suppressed(tmp_path: Path) -> None:
    mapping, source = _site_a_with_min_coverage(tmp_path, keep_stcm=False)
    db = tmp_path / "a.duckdb"
    runner.invoke(app, ["map", "--mapping", str(mapping), "--source", str(source), "--db", str(db)])
    floors = load_mapping(mapping).min_coverage  # condition_occurrence and measurement: 0.95
    options = ValidateOptions(checks=("isPrimaryKey",), sample_rows=100, site="site_a", min_coverage=floors)
    shared = validate_database(db, tmp_path / "qa", options, internal=True)
    internal = load_report(tmp_path / "qa" / "internal" / "report.json")
    assert (shared.data["audience"], internal["audience"]) == ("shareable", "internal")
    zero, total = _expected_condition_zero(with_stcm=False)
    conditions = {t["table"]: t for t in internal["mapping_coverage"]["tables"]}["condition_occurrence"]
    assert (conditions["records"], conditions["unmapped"]) == (total, zero)
    # each lost concept-map code is unmapped as many times as conditions.csv holds it (counted from the file)
    counts = dict(pl.read_csv(SITE_A / "conditions.csv", infer_schema=False).group_by("icd10_code").len().iter_rows())
    lost = set(pl.read_csv(SITE_A / "source_to_concept_map.csv", infer_schema=False)["source_code"])
    top = [u for u in internal["mapping_coverage"]["top_unmapped"] if u["table"] == "condition_occurrence"]
    assert any(u["source_value"] in lost for u in top)
    assert all(u["records"] == counts[u["source_value"]] for u in top if u["source_value"] in lost)
    by_vocabulary = [v for v in internal["mapping_coverage"]["by_vocabulary"] if v["table"] == "condition_occurrence"]
    assert sum(v["records"] for v in by_vocabulary) == total
    assert sum(v["unmapped"] for v in by_vocabulary) == zero
    released = {(u["table"], u["source_value"]): u["records"] for u in shared.data["mapping_coverage"]["top_unmapped"]}
    for u in internal["mapping_coverage"]["top_unmapped"]:
        expected = "<10" if 0 < u["records"] < 10 else u["records"]
        assert released[(u["table"], u["source_value"])] == expected
    # the checks pass, but the verdict is not green: the mapping's floor for conditions is not met
    assert shared.data["overview"]["fatal_failures"] == 0
    assert shared.data["overview"]["coverage_failures"] == [{"table": "condition_occurrence", "min_coverage": 0.95}]
    assert "coverage below condition_occurrence (min_coverage 95%)" in shared.html_path.read_text()
    with pytest.raises(ValidationError, match="internal one"):
        compare_reports([shared.json_path, tmp_path / "qa" / "internal" / "report.json"])


def _coverage_report(site: str, table: dict[str, object]) -> dict[str, object]:
    return {
        "site": site,
        "suppression": {"small_cell_threshold": 10},
        "persons": 2000,
        "overview": {"checks": 1, "fatal_failures": 0, "by_kahn_category": []},
        "mapping_coverage": {"tables": [{"table": "measurement", **table}]},
        "measurements": [],
    }


def test_the_comparison_flags_low_coverage_against_sites_whose_share_is_withheld() -> None:
    # two sites with 1,000 measurements and fewer than 10 unmapped: their share is withheld but lies in
    # [100 * (1000 - 9) / 1000, 100] = [99.1, 100]; the third mapped 285 of 1,000 (28.5 %)
    near_complete = {"records": 1000, "mapped": None, "unmapped": "<10", "pct_mapped": None,
                     "pct_mapped_bounds": [99.1, 100.0]}  # fmt: skip
    low = {"records": 1000, "mapped": 285, "unmapped": 715, "pct_mapped": 28.5, "pct_mapped_bounds": None}
    comparison = compare_reports(
        [_coverage_report("a", near_complete), _coverage_report("b", near_complete), _coverage_report("c", low)]
    )
    flags = [f for f in comparison["flags"] if f["kind"] == "mapping_coverage"]
    assert [f["site"] for f in flags] == ["c"]
    assert "28.5% mapped vs at least 99.1%" in flags[0]["message"]
    assert {s["site"]: s["mapping_coverage"]["measurement"] for s in comparison["sites"]}["a"] == [99.1, 100.0]
    assert "≥ 99.1%" in render_comparison_html(comparison)


def test_coverage_bounds_tell_no_more_than_the_withheld_cell() -> None:
    assert coverage_bounds(1000, 995, 10) == [99.1, 100.0]  # 5 unmapped: at most 9 -> at least 991 mapped
    assert coverage_bounds(1000, 5, 10) == [0.0, 0.9]  # 5 mapped: at most 9
    assert coverage_bounds(1000, 500, 10) is None  # nothing withheld: the exact share is released
    assert coverage_bounds(8, 4, 10) is None  # the total itself is withheld


def test_a_share_is_rounded_down_so_100_percent_means_every_record() -> None:
    """4 unmapped of 10,040 is 99.96%: shown 99.9%, not 100.0% (a min_coverage of 99.99% fails on it)."""
    from fedomop.harmonize.run.coverage import share

    assert [share(10_036 / 10_040), share(1.0), share(0.57), share(0.0)] == ["99.9%", "100.0%", "57.0%", "0.0%"]

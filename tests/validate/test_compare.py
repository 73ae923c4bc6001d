"""Comparing sites from their suppressed reports: side by side, and a unit error flagged."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.validate.compare import compare_reports
from fedomop.harmonize.validate.profile import ProfileOptions
from fedomop.harmonize.validate.report import ValidateOptions, validate_database
from tests.validate.conftest import TODAY
from tests.validate.seeds import GLUCOSE

SYSTOLIC, DIASTOLIC = 3004249, 3012888
OPTIONS = ValidateOptions(
    sample_rows=100,
    checks=("isPrimaryKey", "plausibleUnitConceptIds"),
    profile=ProfileOptions(measurement_concepts=(GLUCOSE, SYSTOLIC, DIASTOLIC)),
    today=TODAY,
)


@pytest.fixture(scope="module")
def site_reports(eunomia_duckdb, tmp_path_factory):
    """Three sites: two clean copies of Eunomia and one whose glucose was loaded 1000x off (g vs mg)."""
    root = tmp_path_factory.mktemp("sites")
    paths = []
    for site in ("site_a", "site_b", "site_c"):
        db_path = root / f"{site}.duckdb"
        shutil.copy(eunomia_duckdb, db_path)
        if site == "site_c":
            db = connect(db_path)
            db.execute(
                f"UPDATE measurement SET value_as_number = value_as_number * 1000 WHERE measurement_concept_id = {GLUCOSE}"
            )
            db.dispose()
        report = validate_database(db_path, root / site, OPTIONS)
        paths.append(report.json_path)
    return paths


def test_a_site_with_a_unit_error_is_flagged_and_only_that_site(site_reports):
    comparison = compare_reports(site_reports)
    flags = [f for f in comparison["flags"] if f["kind"] == "measurement_distribution"]
    assert [(f["site"], f["concept_id"]) for f in flags] == [("site_c", GLUCOSE)]
    assert flags[0]["ratio"] == pytest.approx(1000, rel=1e-6)
    assert "check the unit mapping" in flags[0]["message"]
    sites = {s["site"]: s for s in comparison["sites"]}
    assert set(sites) == {"site_a", "site_b", "site_c"}
    assert (
        sites["site_a"]["measurement_medians"][str(SYSTOLIC)]["median"]
        == sites["site_c"]["measurement_medians"][str(SYSTOLIC)]["median"]
    )


def test_comparison_uses_only_the_suppressed_reports(site_reports, tmp_path):
    # the reports alone are enough: copy them away from their databases and compare again
    copies = []
    for n, path in enumerate(site_reports):
        target = tmp_path / f"r{n}.json"
        target.write_text(path.read_text())
        copies.append(target)
    for path in site_reports:
        (path.parent.parent / f"{path.parent.name}.duckdb").unlink()
    comparison = compare_reports(copies)
    assert comparison["sites"][0]["persons"] == 28
    assert [f["site"] for f in comparison["flags"]] == ["site_c"]


def test_cli_compare_writes_a_comparison_and_prints_the_flag(site_reports, tmp_path):
    result = CliRunner().invoke(
        app, ["validate", "--compare", *map(str, site_reports), "--out", str(tmp_path / "cmp")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "site_c" in result.output and "check the unit mapping" in result.output
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert data["flags"][0]["site"] == "site_c"
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "site_a" in html and "site_c" in html and "Glucose" in html


def test_a_clean_set_of_sites_raises_no_flag(site_reports):
    assert compare_reports(site_reports[:2])["flags"] == []


def test_compare_needs_reports(tmp_path):
    with pytest.raises(ValidationError, match="at least two"):
        compare_reports([])
    bogus = tmp_path / "x.json"
    bogus.write_text('{"hello": 1}')
    with pytest.raises(ValidationError, match="not a fedomop QA report"):
        compare_reports([bogus, bogus])

"""QA report: JSON and HTML with the same suppressed content, bookkeeping sections, no small cell escaping."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.ground.smallcell import Count, percent, suppress
from fedomop.harmonize.validate.html import render_html
from fedomop.harmonize.validate.report import ValidateOptions, build_report, validate_database, write_report
from tests.validate.conftest import TODAY

# Keys whose values count persons or records, anywhere in the report.
COUNT_KEYS = {
    "num_violated_rows", "num_denominator_rows", "records", "mapped", "unmapped", "rows_in_table", "rows_checked",
    "rows", "persons", "total", "source_count", "loaded", "quarantined",
}  # fmt: skip
COUNT_MAPS = {"table_rows", "rows_per_table"}  # dicts whose values are all counts
OPTIONS = ValidateOptions(sample_rows=5_000, today=TODAY)
FEW_CHECKS = ValidateOptions(sample_rows=100, checks=("cdmTable", "isPrimaryKey"), today=TODAY)


def count_values(node, key=None):
    """Every count in a (raw or suppressed) report, found by key."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in COUNT_MAPS and isinstance(v, dict):
                yield from v.values()
            elif k == "histogram":
                yield from v["counts"]
            else:
                yield from count_values(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from count_values(v, key)
    elif key in COUNT_KEYS:
        yield node


def small(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 9


def add_bookkeeping(path: Path) -> None:
    """The tables a fedomop mapping run leaves next to the CDM (a few rows, small counts on purpose)."""
    db = connect(path)
    db.execute(
        "CREATE TABLE fedomop_reconciliation (run_id VARCHAR, source VARCHAR, omop_table VARCHAR, "
        "source_count BIGINT, loaded BIGINT, quarantined BIGINT, balanced BOOLEAN)"
    )
    db.execute(
        "INSERT INTO fedomop_reconciliation VALUES ('r1', 'labs', '*', 120, 115, 5, true), "
        "('r1', 'labs', 'measurement', NULL, 115, NULL, NULL), ('r1', 'patients', '*', 28, 28, 0, true)"
    )
    db.execute(
        "CREATE TABLE fedomop_quarantine (run_id VARCHAR, source VARCHAR, source_file VARCHAR, source_row VARCHAR, "
        "field VARCHAR, value VARCHAR, reason VARCHAR)"
    )
    for n in range(5):
        db.execute(
            f"INSERT INTO fedomop_quarantine VALUES ('r1', 'labs', 'labs.csv', '{n + 2}', 'unit', 'mmol/x', "
            "'unit not convertible')"
        )
    db.execute("CREATE TABLE fedomop_lineage AS SELECT 'r1' AS run_id, 'measurement' AS omop_table, "
               "measurement_id AS omop_id, 'labs' AS source, 'labs.csv' AS source_file, "
               "CAST(measurement_id AS VARCHAR) AS source_row FROM measurement LIMIT 115")  # fmt: skip
    db.dispose()


@pytest.fixture(scope="module")
def site_with_bookkeeping(seeded_duckdb, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("booked") / "site_x.duckdb"
    shutil.copy(seeded_duckdb, path)
    add_bookkeeping(path)
    return path


@pytest.fixture(scope="module")
def raw_report(site_with_bookkeeping):
    db = connect(site_with_bookkeeping, read_only=True)
    try:
        return build_report(db, OPTIONS)
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def written(raw_report, tmp_path_factory):
    return write_report(raw_report, tmp_path_factory.mktemp("report"), OPTIONS.small_cell)


def test_report_files_hold_the_same_content(written):
    data = json.loads(written.json_path.read_text())
    assert data == json.loads(json.dumps(written.data, default=str))
    assert data["format"] == "fedomop-qa-report/1" and data["site"] == "site_x"
    html = written.html_path.read_text()
    assert 'id="overview-table"' in html and 'id="check-table"' in html
    for check in data["checks"]:
        if check["status"] == "fail":
            assert 'data-status="fail"' in html
    assert html.count("<tr data-status=") == len(data["checks"])
    assert data["overview"]["fatal_failures"] >= 3  # duplicate key, orphans, ... (plus the vocabulary subset)
    assert "isPrimaryKey.person.person_id" in data["overview"]["fatal_failed_checks"]


def test_report_is_self_contained(written):
    html = written.html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    assert "<svg" in html and "<script>" in html


def test_reconciliation_quarantine_and_lineage_are_shown_when_present(written):
    data = written.data
    assert data["reconciliation"]["available"]
    labs = next(r for r in data["reconciliation"]["rows"] if r["source"] == "labs" and r["omop_table"] == "*")
    # 5 quarantined are suppressed, so "loaded" (120 - 5) is hidden too: no recovery by subtraction
    assert (labs["source_count"], labs["loaded"], labs["quarantined"]) == (120, None, "<10")
    patients = next(r for r in data["reconciliation"]["rows"] if r["source"] == "patients")
    assert (patients["source_count"], patients["loaded"], patients["quarantined"]) == (28, 28, 0)
    assert data["quarantine"]["by_reason"] == [
        {"source": "labs", "field": "unit", "reason": "unit not convertible", "records": "<10"}
    ]
    assert "mmol/x" not in written.json_path.read_text()  # quarantined values never leave the site
    assert data["lineage"]["rows_per_table"] == {"measurement": 115}
    html = written.html_path.read_text()
    assert "Reconciliation (source = loaded + quarantined)" in html and "unit not convertible" in html


def test_report_says_when_bookkeeping_tables_are_absent(eunomia_duckdb, tmp_path):
    report = validate_database(eunomia_duckdb, tmp_path, FEW_CHECKS)
    for section in ("reconciliation", "quarantine", "lineage"):
        assert report.data[section]["available"] is False
        assert "not built by fedomop map" in report.data[section]["note"]
    assert "no fedomop_reconciliation table" in (tmp_path / "report.html").read_text()


def test_mapping_coverage_shows_the_seeded_unmapped_codes(written):
    coverage = {t["table"]: t for t in written.data["mapping_coverage"]["tables"]}
    conditions = coverage["condition_occurrence"]
    assert (conditions["records"], conditions["unmapped"]) == (470, 60)
    assert conditions["pct_mapped"] == pytest.approx(100 * 410 / 470, abs=1e-3)
    top = written.data["mapping_coverage"]["top_unmapped"]
    assert top and all(u["table"] in ("condition_occurrence", "procedure_occurrence") for u in top)


def test_records_per_year_and_measurement_distributions(written):
    years = written.data["records_per_year"]
    assert {"person", "visit_occurrence", "measurement"} - {"person"} <= set(years)
    assert all(isinstance(r["year"], int) for r in years["measurement"])
    measurements = written.data["measurements"]
    assert measurements
    for m in measurements:
        assert m["p05"] <= m["p25"] <= m["median"] <= m["p75"] <= m["p95"]
        assert len(m["histogram"]["counts"]) == 20 and len(m["histogram"]["edges"]) == 21
        assert isinstance(m["records"], int) and m["records"] >= 10  # no quantiles over small cells


def test_no_count_between_1_and_9_reaches_json_or_html(raw_report, written):
    assert any(small(v) for v in count_values(raw_report)), (
        "the seeded site must have small counts for this test to bite"
    )
    data = json.loads(written.json_path.read_text())
    values = list(count_values(data))
    assert len(values) > 1000
    assert not [v for v in values if small(v)]
    assert "<10" in values
    # a suppressed numerator hides its percentage too
    for check in data["checks"]:
        if check["num_violated_rows"] == "<10":
            assert check["pct_violated_rows"] is None
    html = written.html_path.read_text()
    cells = re.findall(r'<td class="(?:p )?n">([^<]*)</td>', html) + re.findall(r'data-count="([^"]*)"', html)
    assert len(cells) > 1000
    numbers = [c.replace(",", "") for c in cells]
    assert not [c for c in numbers if c.isdigit() and 1 <= int(c) <= 9]
    assert "&lt;10" in cells


def test_small_cell_threshold_is_configurable(eunomia_duckdb):
    db = connect(eunomia_duckdb, read_only=True)
    raw = build_report(db, ValidateOptions(small_cell=50, sample_rows=100, checks=("isPrimaryKey",), today=TODAY))
    db.dispose()
    data = suppress(raw, 50)
    values = list(count_values(data))
    assert "<50" in values and not [v for v in values if isinstance(v, int) and 1 <= v < 50]
    assert data["persons"] == "<50"  # Eunomia has 28 persons


def test_parts_of_a_total_are_hidden_with_their_suppressed_sibling():
    raw = {
        "coverage": {"records": Count(103), "mapped": Count(100, group="t"), "unmapped": Count(3, group="t")},
        "pct_mapped": percent(Count(100, group="t"), 103),
        "other": {"records": Count(200), "mapped": Count(150, group="u"), "unmapped": Count(50, group="u")},
    }
    data = suppress(raw, 10)
    assert data["coverage"] == {"records": 103, "mapped": None, "unmapped": "<10"}
    assert data["pct_mapped"] is None
    assert data["other"] == {"records": 200, "mapped": 150, "unmapped": 50}


def test_writers_refuse_an_unsuppressed_report():
    with pytest.raises(ValidationError, match="without small-cell suppression"):
        render_html({"persons": Count(3)})


def test_validate_refuses_a_database_without_omop_tables(tmp_path):
    db = connect(tmp_path / "other.duckdb")
    db.execute("CREATE TABLE patients (id INTEGER)")
    db.dispose()
    with pytest.raises(ValidationError, match="no OMOP person table"):
        validate_database(tmp_path / "other.duckdb", tmp_path / "out")
    with pytest.raises(ValidationError, match="database file not found"):
        validate_database(tmp_path / "missing.duckdb", tmp_path / "out")
    assert not (tmp_path / "missing.duckdb").exists()


# -- headless Chromium ------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync"
).split()


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def test_html_opens_in_headless_chromium_and_shows_the_overview_table(written, tmp_path):
    binary = chromium_binary()
    if binary is None:
        message = "chromium is not installed: apt-get update && apt-get install -y chromium (see README, .ci/run)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from PIL import Image

    png = tmp_path / "report.png"
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
               "--window-size=1280,2000", written.html_path.resolve().as_uri()]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2000)
    top = image.crop((0, 0, 1280, 600))
    colors = top.getcolors(maxcolors=1_000_000) or []
    counts = {rgb: n for n, rgb in colors}
    assert counts.get((23, 50, 77), 0) > 20_000  # the header band (#17324d)
    assert counts.get((46, 125, 50), 0) > 500  # green "pass" segments of the overview bars (#2e7d32)
    assert counts.get((198, 40, 40), 0) > 50  # red "fail" segments (#c62828): the seeded defects
    dom = subprocess.run(
        [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile2'}",
            "--dump-dom",
            written.html_path.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'id="overview-table"' in dom and "Conformance" in dom
    assert re.search(r'id="filter-count"[^>]*>\d+ shown<', dom)  # the filter script ran

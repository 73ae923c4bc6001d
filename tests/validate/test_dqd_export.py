"""fedomop validate writes dqd_results.json in the shape the OHDSI Data Quality Dashboard viewer reads.

The fields checked are the ones the viewer's code uses (DataQualityDashboard inst/shinyApps/www/js/loadResults.js,
htmlwidgets/lib/dqDashboardComponent.js, dqMetadataComponent.js; listed in dqd_export.VIEWER_FIELDS); the status
rule is the viewer's (isError, then notApplicable, then failed, else PASS). Counts on the tiny CDM of
test_dqd_semantics_all are counted by hand there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.validate.dqd_export import VIEWER_FIELDS, VIEWER_METADATA
from fedomop.harmonize.validate.report import ValidateOptions, validate_database
from tests.validate.conftest import TODAY
from tests.validate.test_dqd_semantics_all import ROWS
from tests.validate.test_report import CHROMIUM_FLAGS, chromium_binary

CHECKS = ("cdmTable", "cdmField", "measureValueCompleteness", "isRequired", "plausibleGenderUseDescendants")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dqd_export") / "site_t.duckdb"
    db = connect(path)
    create_cdm(db.engine, constraints="none")
    for sql in ROWS:
        db.execute(sql)
    db.execute(
        "INSERT INTO cdm_source (cdm_source_name, cdm_source_abbreviation, cdm_holder, source_release_date, "
        "cdm_release_date, cdm_version, cdm_version_concept_id, vocabulary_version) VALUES ('Tiny test site', 'TT', "
        "'Test hospital', DATE '2025-12-01', DATE '2025-12-02', 'v5.4', 756265, 'v5.0 test')"
    )
    db.dispose()
    return path


def export(site: Path, out: Path, small_cell: int) -> dict:
    options = ValidateOptions(sample_rows=100, checks=CHECKS, today=TODAY, small_cell=small_cell)
    report = validate_database(site, out, options)
    assert report.dqd_path == out / "dqd_results.json"
    return json.loads(report.dqd_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def qa_dir(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qa")
    export(site, out, small_cell=1)
    return out


@pytest.fixture(scope="module")
def exact(qa_dir: Path) -> dict:
    return json.loads((qa_dir / "dqd_results.json").read_text(encoding="utf-8"))


def viewer_status(d: dict) -> str:
    """loadResults.js, the STATUS column."""
    if d["isError"] == 1:
        return "ERROR"
    if d["notApplicable"] == 1:
        return "NOT APPLICABLE"
    return "FAIL" if d["failed"] == 1 else "PASS"


def test_shape_has_every_field_the_viewer_reads(exact: dict) -> None:
    assert {"startTimestamp", "executionTime", "CheckResults", "Metadata", "Overview"} <= set(exact)
    assert len(exact["Metadata"]) == 1 and set(VIEWER_METADATA) <= set(exact["Metadata"][0])
    assert exact["Metadata"][0]["cdmSourceName"] == "Tiny test site"
    assert exact["Metadata"][0]["cdmVersion"] == "v5.4"
    for result in exact["CheckResults"]:
        assert set(VIEWER_FIELDS) <= set(result), result["checkId"]
        flags = (result["failed"], result["passed"], result["isError"], result["notApplicable"])
        assert set(flags) <= {0, 1} and sum(flags) == 1
        assert result["context"] in ("Verification", "Validation")
        assert result["category"] in ("Conformance", "Completeness", "Plausibility")
        assert result["pctViolatedRows"] is None or 0 <= result["pctViolatedRows"] <= 1


def test_values_follow_dqd(exact: dict) -> None:
    by_id = {r["checkId"]: r for r in exact["CheckResults"]}
    required = by_id["field_isrequired_person_gender_concept_id"]  # DQD's getCheckId.R format
    assert (required["numViolatedRows"], required["numDenominatorRows"], required["pctViolatedRows"]) == (1, 4, 0.25)
    assert (required["cdmTableName"], required["cdmFieldName"], required["thresholdValue"]) == (
        "PERSON",
        "GENDER_CONCEPT_ID",
        0,
    )
    assert viewer_status(required) == "FAIL" and required["sqlFile"] == "field_is_not_nullable.sql"
    gender = by_id["concept_plausiblegenderusedescendants_condition_occurrence_condition_concept_id_4090861,4025213"]
    assert (gender["numViolatedRows"], gender["numDenominatorRows"], viewer_status(gender)) == (1, 4, "FAIL")
    missing = by_id["field_isrequired_note_nlp_note_nlp_id"]
    assert viewer_status(missing) == "NOT APPLICABLE" and "note_nlp" in missing["notApplicableReason"]
    overview = exact["Overview"]
    failed = sum(r["failed"] for r in exact["CheckResults"])
    assert overview["countTotal"] == len(exact["CheckResults"])
    assert (overview["countOverallFailed"], overview["countPassed"]) == (failed, overview["countTotal"] - failed)


def test_query_text_lists_the_violating_rows(site: Path, exact: dict) -> None:
    """The queryText of a failed check, run on the database, returns as many rows as were counted."""
    failed = [r for r in exact["CheckResults"] if r["failed"] and r["checkName"] != "cdmTable"]
    assert failed
    db = connect(site, read_only=True)
    try:
        for result in failed:
            if result["checkName"] == "cdmField":
                continue  # a missing column has no rows to list
            rows = db.query(result["queryText"]).height
            assert rows == result["numViolatedRows"], result["checkId"]
    finally:
        db.dispose()


def test_small_counts_are_suppressed_as_in_the_qa_report(site: Path, tmp_path: Path) -> None:
    data = export(site, tmp_path, small_cell=10)
    by_id = {r["checkId"]: r for r in data["CheckResults"]}
    required = by_id["field_isrequired_person_gender_concept_id"]
    assert (required["numViolatedRows"], required["numDenominatorRows"], required["pctViolatedRows"]) == (
        "<10",
        "<10",
        None,
    )
    assert required["failed"] == 1  # pass/fail is decided on the exact counts, before suppression


def test_failed_checks_in_the_qa_report_show_what_to_do_and_their_sql(qa_dir: Path) -> None:
    html = (qa_dir / "report.html").read_text(encoding="utf-8")
    row = next(r for r in html.split("<tr ") if "isRequired" in r and "gender_concept_id" in r and "badge fail" in r)
    assert "What to do:" in row and "Fill the required field" in row
    assert "SELECT * FROM &quot;person&quot; WHERE" in row and "gender_concept_id" in row


# Measures the check table's scroll box in a copy of the report, with every SQL block opened.
_MEASURE = (
    "<script>document.querySelectorAll('details').forEach(function (d) { d.open = true; });"
    "var box = document.querySelector('#checks .scroll');"
    "document.title = 'W:' + box.scrollWidth + ':' + box.clientWidth;</script></body>"
)


def test_check_table_fits_1400px_without_horizontal_scrolling(qa_dir: Path, tmp_path: Path) -> None:
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed")
    page = tmp_path / "measure.html"
    page.write_text((qa_dir / "report.html").read_text(encoding="utf-8").replace("</body>", _MEASURE), "utf-8")
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,900",
               "--dump-dom", page.resolve().as_uri()]  # fmt: skip
    dom = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout
    match = re.search(r"<title>W:(\d+):(\d+)</title>", dom)
    assert match, "the measuring script did not run"
    scroll_width, client_width = int(match[1]), int(match[2])
    assert 0 < scroll_width <= client_width

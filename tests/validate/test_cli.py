"""``fedomop validate`` through the real CLI: report files, a site check module, clear errors."""

from __future__ import annotations

import json
import subprocess

import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.validate.checks import registered_checks, unregister_check
from tests.conftest import FEDOMOP_BIN

SITE_CHECKS = """
from fedomop.harmonize.validate.checks import CheckInstance, RowPredicate, register_check, registered_checks


@register_check(
    "siteHeightInCentimetres",
    level="FIELD",
    description="Body height values that look like metres, not centimetres",
    kahn_context="Verification",
    kahn_category="Plausibility",
    kahn_subcategory="Atemporal",
    severity="characterization",
)
def height_in_cm(ctx):
    check = registered_checks()["siteHeightInCentimetres"].check
    instance = CheckInstance(check, "measurement", "value_as_number", concept_id=3036277, threshold=0)
    yield RowPredicate(instance, "value_as_number < 3", "measurement_concept_id = 3036277")
"""


def test_cli_validate_writes_reports_and_runs_a_site_check_module(seeded_duckdb, tmp_path):
    module = tmp_path / "site_checks.py"
    module.write_text(SITE_CHECKS)
    out = tmp_path / "qa"
    try:
        result = CliRunner().invoke(
            app,
            ["validate", "--db", str(seeded_duckdb), "--out", str(out), "--site", "seeded", "--sample-rows", "200",
             "--checks", "isPrimaryKey,siteHeightInCentimetres", "--check-module", str(module), "--fail-on-fatal"],
            catch_exceptions=False,
        )  # fmt: skip
    finally:
        unregister_check("siteHeightInCentimetres")
    assert result.exit_code == 1, result.output  # the seeded duplicate person key is fatal
    assert "wrote" in result.output and "fatal" in result.output
    data = json.loads((out / "report.json").read_text())
    checks = {c["check_id"]: c for c in data["checks"]}
    assert data["site"] == "seeded"
    assert checks["isPrimaryKey.person.person_id"]["status"] == "fail"
    height = checks["siteHeightInCentimetres.measurement.value_as_number.3036277"]
    assert height["kahn_category"] == "Plausibility" and height["status"] in ("pass", "not_applicable")
    assert (out / "report.html").stat().st_size > 10_000
    assert "siteHeightInCentimetres" not in registered_checks()


def fedomop(*args: str) -> tuple[int, str]:
    result = subprocess.run([str(FEDOMOP_BIN), *args], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr
    return result.returncode, " ".join(result.stderr.split())


def test_cli_errors_are_clear_messages_not_tracebacks(tmp_path):
    code, err = fedomop("validate", "--db", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "qa"))
    assert code == 2 and "database file not found" in err and "fix:" in err
    assert not (tmp_path / "none.duckdb").exists()


def test_cli_compare_of_unreadable_reports_names_the_file(tmp_path):
    with pytest.raises(ValidationError, match="cannot read the report") as error:
        CliRunner().invoke(
            app, ["validate", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")], catch_exceptions=False
        )
    assert "a.json" in str(error.value) and error.value.fix


def test_an_empty_cdm_is_not_green(tmp_path, eunomia_duckdb):
    """No person: every data check passes vacuously or is not applicable, so the verdict names the emptiness and
    --fail-on-fatal exits 1; Eunomia (28 persons in PERSON.csv) is not flagged."""
    from fedomop.harmonize.cdm import create_cdm
    from fedomop.harmonize.ground.db import connect
    from fedomop.harmonize.validate.report import ValidateOptions, validate_database

    empty = tmp_path / "empty.duckdb"
    db = connect(empty)
    create_cdm(db.engine, constraints="none")
    db.dispose()
    out = tmp_path / "qa"
    done = subprocess.run(
        [FEDOMOP_BIN, "validate", "--db", str(empty), "--out", str(out), "--checks", "isRequired,cdmTable",
         "--fail-on-fatal"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "holds no person" in " ".join(done.stdout.split()) and "Traceback" not in done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["overview"]["no_persons"] is True and report["overview"]["fatal_failures"] == 0
    html = (out / "report.html").read_text()
    assert "the database holds no person" in html and "All fatal checks pass" not in html
    options = ValidateOptions(checks=("cdmTable",))
    assert validate_database(eunomia_duckdb, None, options).data["overview"]["no_persons"] is False

"""Wide exports: one lab per column, unpivoted by the mapping (``unpivot:``), no preprocessing.

The expected rows are written out by hand from the five-line extract below and the sample vocabulary's concept
table (718-7 -> 3000963, 17861-6 -> 3006906, g/dL -> 8713, mg/dL -> 8840, umol/L -> 8749); creatinine is a
local column code mapped to 3016723 by the site's source_to_concept_map.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import MappingError, SourceError
from tests.conftest import SAMPLE_DATA
from tests.steward.conftest import LAB_SITE

runner = CliRunner()

PATIENTS = "pid,born\nP1,1970-01-01\nP2,1980-06-15\nP3,1990-03-03\n"
LABS = (
    "pid,drawn,hb,calcium,crea,crea_unit\n"
    "P1,2020-01-05,13.5,9.6,1.0,mg/dL\n"
    "P2,2020-02-01,,8.9,88,umol/L\n"
    "P3,2020-03-01,abc,,,\n"
    "P3,2020-03-02,,,,\n"
)
STCM = (
    "source_code,source_concept_id,source_vocabulary_id,source_code_description,target_concept_id,"
    "target_vocabulary_id,valid_start_date,valid_end_date,invalid_reason\n"
    "crea,0,SITE_LAB,Creatinine,3016723,LOINC,1970-01-01,2099-12-31,\n"
)
MEASUREMENT_RULE = """
  measurement:
    - source: labs
      person: pid
      start: {{date: drawn}}
      type_concept: {{constant: 32817, name: EHR}}
{extra}      unpivot:
        hb: {{code: 718-7, vocabulary: LOINC, unit: g/dL}}
        calcium: {{code: 17861-6, vocabulary: LOINC, unit: mg/dL}}
        crea: {{vocabulary: SITE_LAB, unit_column: crea_unit}}
"""


def _site(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    source = tmp_path / "extract"
    source.mkdir()
    (source / "patients.csv").write_text(PATIENTS)
    (source / "labs.csv").write_text(LABS)
    (source / "stcm.csv").write_text(STCM)
    mapping = tmp_path / "wide.yaml"
    mapping.write_text(
        f"""site: wide
cdm_source: {{cdm_source_name: Wide lab site, cdm_source_abbreviation: wide}}
vocabulary: {{folder: {SAMPLE_DATA / "vocabulary"}, source_to_concept_map: stcm.csv}}
"""
        + LAB_SITE
        + MEASUREMENT_RULE.format(extra=extra)
    )
    return mapping, source


def _map(mapping: Path, source: Path, db: Path) -> int:
    result = runner.invoke(app, ["map", "--mapping", str(mapping), "--source", str(source), "--db", str(db)])
    return result.exit_code


def test_each_listed_column_becomes_one_measurement_with_its_own_concept_value_and_unit(tmp_path: Path) -> None:
    mapping, source = _site(tmp_path)
    db_path = tmp_path / "wide.duckdb"
    assert _map(mapping, source, db_path) == 0
    db = connect(str(db_path), read_only=True)
    rows = db.query(
        "SELECT m.measurement_id, p.person_source_value, m.measurement_concept_id, m.value_as_number, "
        "m.unit_concept_id, m.unit_source_value, m.measurement_source_value, m.measurement_date "
        "FROM measurement m JOIN person p USING (person_id) ORDER BY m.measurement_id"
    ).rows()
    assert [tuple(str(v) for v in r) for r in rows] == [
        ("1", "P1", "3000963", "13.5", "8713", "g/dL", "718-7", "2020-01-05"),
        ("2", "P1", "3006906", "9.6", "8840", "mg/dL", "17861-6", "2020-01-05"),
        ("3", "P1", "3016723", "1.0", "8840", "mg/dL", "crea", "2020-01-05"),
        ("4", "P2", "3006906", "8.9", "8840", "mg/dL", "17861-6", "2020-02-01"),
        ("5", "P2", "3016723", "88.0", "8749", "umol/L", "crea", "2020-02-01"),
    ]
    quarantine = db.query("SELECT source_row, field, value, reason FROM fedomop_quarantine ORDER BY source_row")
    assert quarantine.filter(pl.col("reason") == "unparseable number").select("field", "value").rows() == [
        ("hb", "abc")  # the wide export's own column is named, not an engine column
    ]
    assert quarantine.filter(pl.col("reason").str.contains("no mapping rule")).height == 1  # the all-empty row
    recon = db.query(
        "SELECT source_count, loaded, quarantined, balanced FROM fedomop_reconciliation "
        "WHERE source = 'labs' AND omop_table = '*'"
    )
    assert recon.row(0) == (4, 2, 2, True)


def test_unpivot_with_a_concept_is_refused_at_load(tmp_path: Path) -> None:
    mapping, source = _site(tmp_path, extra="      concept: {code: hb, vocabulary: LOINC}\n")
    result = runner.invoke(
        app, ["map", "--mapping", str(mapping), "--source", str(source), "--db", str(tmp_path / "x.duckdb")]
    )
    assert isinstance(result.exception, MappingError), result.output  # the CLI shows it and exits 2
    assert "drop concept/value" in str(result.exception)


def test_unpivot_of_a_column_the_file_lacks_names_it(tmp_path: Path) -> None:
    mapping, source = _site(tmp_path)
    (source / "labs.csv").write_text(LABS.replace("calcium", "ca"))
    result = runner.invoke(
        app, ["map", "--mapping", str(mapping), "--source", str(source), "--db", str(tmp_path / "x.duckdb")]
    )
    assert isinstance(result.exception, MappingError | SourceError), result.output
    assert "unpivot.calcium" in str(result.exception)


def test_a_drafted_mapping_unpivots_a_wide_table_and_review_lists_its_columns(tmp_path: Path) -> None:
    _, source = _site(tmp_path)
    (source / "stcm.csv").unlink()
    # the drafter knows a person file by a birth date and an id unique over at least 20 rows
    people = "".join(f"P{n},19{50 + n}-01-0{1 + n % 9}\n" for n in range(1, 26))
    (source / "patients.csv").write_text("pid,born\n" + people)
    # the same cells without the unit column, and a number for "abc" (a text column would not look like a test)
    wide = [line.rsplit(",", 1)[0].replace("abc", "12.9") for line in LABS.splitlines()]
    (source / "labs.csv").write_text("\n".join(wide) + "\n")
    profile, mapping, db = tmp_path / "profile", tmp_path / "drafted.yaml", tmp_path / "drafted.duckdb"
    vocabulary = str(SAMPLE_DATA / "vocabulary")
    for args in (
        ["profile", "--source", str(source), "--out", str(profile)],
        [
            "draft-mapping",
            "--profile",
            str(profile / "profile.json"),
            "--out",
            str(mapping),
            "--vocabulary",
            vocabulary,
        ],
        ["map", "--mapping", str(mapping), "--source", str(source), "--db", str(db)],
        ["codes", "review", "--mapping", str(mapping), "--db", str(db), "--out", str(tmp_path / "review.csv")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert "unpivot:" in mapping.read_text()
    # filled cells counted in the extract above: hb 2, calcium 2, crea 2 -> the review sheet's counts
    sheet = pl.read_csv(tmp_path / "review.csv", infer_schema=False)
    assert dict(sheet.select("source_code", "records").iter_rows()) == {"calcium": "2", "crea": "2", "hb": "2"}
    assert set(sheet["source_vocabulary_id"]) == {"LABS_LOCAL"}

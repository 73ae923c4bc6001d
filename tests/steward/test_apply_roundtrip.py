"""map -> codes review -> codes apply --mapping -> map: the steward's decisions take effect with no YAML edited by
hand, and the site's local vocabulary gets its VOCABULARY rows and site concepts as the CDM conventions ask.

Expected ids are counted by hand from the rules in harmonize/steward/apply.py's docstring: the review sheet
lists CA (3 records) before K (2); the local target concept comes first (2000000001), then one source concept
per reviewed SITE_LAB code in sheet order (CA 2000000002, K 2000000003), then one concept per new vocabulary
(the site's 2000000004, SITE_LAB 2000000005). Calcium is 3006906 in the sample vocabulary.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.steward.mapping_edit import wire_vocabulary
from tests.conftest import SAMPLE_DATA
from tests.steward.conftest import LAB_SITE

runner = CliRunner()
LABS = (
    "pid,drawn,code,value\n"
    "P1,2020-01-05,CA,9.6\nP1,2020-02-05,K,4.1\nP2,2020-01-07,CA,8.8\nP2,2020-03-01,K,3.9\nP2,2020-04-01,CA,9.1\n"
)
MAPPING = f"""site: lab_site
cdm_source: {{cdm_source_name: Lab site, cdm_source_abbreviation: lab_site}}
vocabulary:
  folder: {SAMPLE_DATA / "vocabulary"}  # the bundled sample vocabulary
  # the steward's reviewed codes go below (codes apply)
"""
MAPPING += LAB_SITE
MAPPING += """  measurement:
    - source: labs
      person: pid
      concept: {code: code, vocabulary: SITE_LAB}
      start: {date: drawn}
      value: {number: value}
      type_concept: {constant: 32817, name: EHR}
"""


def _cli(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _site(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "extract"
    source.mkdir()
    (source / "patients.csv").write_text("pid,born\nP1,1970-01-01\nP2,1980-06-15\n")
    (source / "labs.csv").write_text(LABS)
    mapping = tmp_path / "mappings" / "lab_site.yaml"
    mapping.parent.mkdir()
    mapping.write_text(MAPPING)
    return mapping, source


def _reviewed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The site mapped once and its review sheet written (mapping, extract folder, sheet)."""
    mapping, source = _site(tmp_path)
    first = tmp_path / "first.duckdb"
    _cli("map", "--mapping", mapping, "--source", source, "--db", first)
    review = tmp_path / "review.csv"
    _cli("codes", "review", "--mapping", mapping, "--db", first, "--out", review)
    return mapping, source, review


def test_applied_review_takes_effect_on_the_next_map(tmp_path: Path) -> None:
    mapping, source, review = _reviewed(tmp_path)
    sheet = pl.read_csv(review, infer_schema=False)
    assert sheet.select("source_vocabulary_id", "source_code", "records").rows() == [
        ("SITE_LAB", "CA", "3"),
        ("SITE_LAB", "K", "2"),
    ]
    decided = sheet.with_columns(
        pl.Series("decision", ["approve", "local"]),
        pl.Series("target_concept_id", ["3006906", ""]),
        pl.Series("local_name", ["", "Site potassium"]),
        pl.Series("local_domain", ["", "Measurement"]),
    )
    decided.write_csv(review)
    output = _cli("codes", "apply", "--review", review, "--mapping", mapping, "--source", source)
    assert "vocabulary.source_to_concept_map: source_to_concept_map.csv" in output

    text = mapping.read_text()
    assert "# the bundled sample vocabulary" in text  # the steward's comments survive
    assert 'extensions: ["lab_site_vocabulary"]' in text

    extension = mapping.parent / "lab_site_vocabulary"
    vocabulary = pl.read_csv(extension / "VOCABULARY.csv", separator="\t", infer_schema=False)
    assert vocabulary.select("vocabulary_id", "vocabulary_concept_id").rows() == [
        ("lab_site", "2000000004"),
        ("SITE_LAB", "2000000005"),
    ]
    concept = pl.read_csv(extension / "CONCEPT.csv", separator="\t", infer_schema=False)
    assert concept.select("concept_id", "vocabulary_id", "concept_code", "standard_concept").rows() == [
        ("2000000001", "lab_site", "K", "S"),
        ("2000000002", "SITE_LAB", "CA", None),
        ("2000000003", "SITE_LAB", "K", None),
        ("2000000004", "Vocabulary", "OMOP generated", None),
        ("2000000005", "Vocabulary", "OMOP generated", None),
    ]
    stcm = pl.read_csv(source / "source_to_concept_map.csv", infer_schema=False)
    assert stcm.select("source_code", "source_concept_id", "target_concept_id", "target_vocabulary_id").rows() == [
        ("CA", "2000000002", "3006906", "LOINC"),
        ("K", "2000000003", "2000000001", "lab_site"),
    ]

    second = tmp_path / "second.duckdb"
    _cli("map", "--mapping", mapping, "--source", source, "--db", second)
    db = connect(str(second), read_only=True)
    rows = db.query(
        "SELECT measurement_source_value, measurement_concept_id, measurement_source_concept_id, COUNT(*) AS n "
        "FROM measurement GROUP BY 1, 2, 3 ORDER BY 1"
    ).rows()
    assert rows == [("CA", 3006906, 2000000002, 3), ("K", 2000000001, 2000000003, 2)]
    assert db.query("SELECT vocabulary_concept_id FROM vocabulary WHERE vocabulary_id = 'SITE_LAB'").item() == (
        2000000005
    )
    # concept.domain_id / concept_class_id / vocabulary_id are foreign keys (DQD isForeignKey, fatal): the bundled
    # subset has no 'Vocabulary' vocabulary or concept class, which the local vocabularies' own concepts name
    for field, table in (("domain_id", "domain"), ("concept_class_id", "concept_class"),
                         ("vocabulary_id", "vocabulary")):  # fmt: skip
        orphans = db.query(f"SELECT COUNT(*) FROM concept c WHERE c.{field} NOT IN (SELECT {field} FROM {table})")
        assert orphans.item() == 0, field
    assert db.query("SELECT concept_class_concept_id FROM concept_class WHERE concept_class_id = 'Vocabulary'").rows() == [
        (0,)
    ]
    assert db.query("SELECT vocabulary_concept_id FROM vocabulary WHERE vocabulary_id = 'Vocabulary'").rows() == [(0,)]

    # applying the same sheet again changes nothing: no new concept, no second map row, the mapping as it is
    before = (mapping.read_text(), (extension / "CONCEPT.csv").read_text())
    output = _cli("codes", "apply", "--review", review, "--mapping", mapping, "--source", source)
    assert (mapping.read_text(), (extension / "CONCEPT.csv").read_text()) == before
    assert pl.read_csv(source / "source_to_concept_map.csv", infer_schema=False).height == 2


def test_wiring_keeps_other_keys_in_flow_and_block_styles(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("site: s  # a site\nvocabulary: {folder: vocab, fhir_systems: {'urn:x': X}}\nsources: {}\n")
    assert wire_vocabulary(flow, source_to_concept_map="stcm.csv", extension="ext") == [
        "vocabulary.source_to_concept_map: stcm.csv",
        "vocabulary.extensions += ext",
    ]
    assert yaml.safe_load(flow.read_text())["vocabulary"] == {
        "folder": "vocab", "fhir_systems": {"urn:x": "X"}, "source_to_concept_map": "stcm.csv", "extensions": ["ext"],
    }  # fmt: skip
    assert flow.read_text().startswith("site: s  # a site\n")
    block = tmp_path / "block.yaml"
    block.write_text(
        "vocabulary:\n  folder: vocab\n  source_to_concept_map: mine.csv  # kept\n  extensions:\n    - first\n"
        "sources: {}\n"
    )
    assert wire_vocabulary(block, source_to_concept_map="stcm.csv", extension="second") == [
        "vocabulary.extensions += second"
    ]
    assert yaml.safe_load(block.read_text())["vocabulary"] == {
        "folder": "vocab", "source_to_concept_map": "mine.csv", "extensions": ["first", "second"],
    }  # fmt: skip
    assert "mine.csv  # kept" in block.read_text()
    assert wire_vocabulary(block, source_to_concept_map="stcm.csv", extension="second") == []


def test_a_local_domain_that_is_not_a_loadable_omop_domain_is_refused_with_its_line(tmp_path: Path) -> None:
    """local_domain decides the table a local concept's records go to: a name that is no OMOP domain fedomop loads
    ('Lab', a typo) would make concepts whose records go nowhere and a DOMAIN foreign key that fails."""
    mapping, source, review = _reviewed(tmp_path)
    sheet = pl.read_csv(review, infer_schema=False)
    sheet.with_columns(
        pl.Series("decision", ["local", "local"]),
        pl.Series("local_name", ["Site calcium", "Site potassium"]),
        pl.Series("local_domain", ["Measurement", "Lab"]),
    ).write_csv(review)
    result = subprocess.run(
        [sys.executable, "-m", "fedomop", "codes", "apply", "--review", str(review), "--mapping", str(mapping),
         "--source", str(source)],
        capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    said = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, said
    assert "local_domain 'Lab' is not an OMOP domain" in said and "Traceback" not in said
    assert f"{review} line 3, field local_domain" in said
    assert "Measurement" in said and not (source / "source_to_concept_map.csv").exists()

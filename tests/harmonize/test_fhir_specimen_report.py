"""Specimen -> specimen and DiagnosticReport.conclusionCode -> an event (routed by domain), on resources of the HL7
R4 specification examples (shared/fhir/hl7-r4-examples/bundles). Expected values are read off those files:
the ghp report's three Specimens (SNOMED 119364003 serum, 445295009 EDTA blood, 122575003 urine, collected
2015-08-16T06:40:17Z, subject Patient/pat2) and report f202 (final, issued 2013-03-11T10:28:00+01:00,
conclusionCode SNOMED 428763004 bacteremia, subject Patient/f201)."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from fedomop.harmonize.run import run_mapping
from tests.conftest import MAPPINGS, SHARED

BUNDLES = SHARED / "fhir" / "hl7-r4-examples" / "bundles"
VOCABULARY = MAPPINGS.parent / "sample_data" / "vocabulary"


def _resources(bundle: str, resource_type: str) -> list[dict[str, object]]:
    entries = json.loads((BUNDLES / bundle).read_text(encoding="utf-8"))["entry"]
    return [e["resource"] for e in entries if e["resource"]["resourceType"] == resource_type]


def test_specimens_and_a_report_conclusion(tmp_path: Path, shared_dir: Path) -> None:
    patients = [
        {"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1950"} for pid in ("pat2", "f201")
    ]
    reports = _resources("diagnosticreport-example-f202-bloodculture.json", "DiagnosticReport")
    reports += _resources("diagnosticreport-example-ghp.json", "DiagnosticReport")  # no conclusionCode
    export = {
        "Patient.ndjson": patients,
        "Specimen.ndjson": _resources("diagnosticreport-example-ghp.json", "Specimen"),
        "DiagnosticReport.ndjson": reports,
    }
    for name, resources in export.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in resources))
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY).balanced
    with duckdb.connect(str(db), read_only=True) as con:
        specimens = con.execute(
            "select specimen_source_id, specimen_source_value, cast(specimen_date as varchar), "
            "cast(specimen_datetime as varchar), specimen_type_concept_id from specimen order by 1"
        ).fetchall()
        conclusion = con.execute(
            "select l.omop_table, l.source_row from fedomop_lineage l where l.source = 'diagnostic_reports'"
        ).fetchall()
        value = con.execute(
            "select observation_source_value, cast(observation_date as varchar) from observation"
        ).fetchall()
        excluded = con.execute("select source_row, reason from fedomop_quarantine").fetchall()
    assert specimens == [
        ("ltt", "445295009", "2015-08-16", "2015-08-16 06:40:17", 32817),
        ("rtt", "119364003", "2015-08-16", "2015-08-16 06:40:17", 32817),
        ("urine", "122575003", "2015-08-16", "2015-08-16 06:40:17", 32817),
    ]
    assert conclusion == [("observation", "f202")]  # SNOMED 428763004 is not in the sample vocabulary: concept 0
    assert value == [("428763004", "2013-03-11")]
    assert excluded == [
        ("ghp", "excluded by rule: DiagnosticReport without conclusionCode: its results are mapped as Observations")
    ]

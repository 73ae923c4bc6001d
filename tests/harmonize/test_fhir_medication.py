"""medicationReference to a Medication resource outside the referring resource (IG: the drug is the Medication's
code): in the same bulk export (``Medication/<id>``) or in the same Bundle (``urn:uuid`` via entry.fullUrl).
Expected values are read off the resources written here."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import yaml

from fedomop.harmonize.run import run_mapping
from tests.conftest import EUNOMIA, MAPPINGS

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950"}
MEDICATION = {"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": RXNORM, "code": "314076"}]}}


def _request(rx_id: str, reference: str, patient: str = "Patient/p1") -> dict[str, object]:
    return {
        "resourceType": "MedicationRequest",
        "id": rx_id,
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": reference},
        "subject": {"reference": patient},
        "authoredOn": "2020-03-04",
    }


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def _drugs(db: Path) -> list[tuple[object, ...]]:
    return _rows(
        db,
        "select l.source_row, d.drug_source_value, d.drug_source_concept_id <> 0, d.drug_concept_id <> 0 "
        "from drug_exposure d join fedomop_lineage l on l.omop_table = 'drug_exposure' "
        "and l.omop_id = d.drug_exposure_id order by 1",
    )


def test_reference_to_a_medication_in_the_same_export(tmp_path: Path, shared_dir: Path) -> None:
    """rx-1 names Medication/m1 (RxNorm 314076, in Medication.ndjson); rx-2 names a Medication the export
    lacks: loaded with concept 0 and no source value. The Medication itself is accounted "excluded by rule"."""
    lines = {
        "Patient.ndjson": [PATIENT],
        "Medication.ndjson": [MEDICATION],
        "MedicationRequest.ndjson": [_request("rx-1", "Medication/m1"), _request("rx-2", "Medication/gone")],
    }
    for name, resources in lines.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in resources))
    db = tmp_path / "out.duckdb"
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=EUNOMIA)
    assert report.balanced
    assert _drugs(db) == [("rx-1", "314076", True, True), ("rx-2", None, False, False)]
    assert _rows(db, "select source, source_row, reason from fedomop_quarantine") == [
        (
            "medications",
            "m1",
            "excluded by rule: a Medication is not an event: drug_exposure reads it through medicationReference",
        )
    ]


def test_reference_to_a_medication_entry_of_the_same_bundle(tmp_path: Path, shared_dir: Path) -> None:
    """A transaction Bundle: the request names urn:uuid:...02, the Medication entry's fullUrl."""
    entries = [
        ("urn:uuid:00000000-0000-0000-0000-000000000001", PATIENT),
        ("urn:uuid:00000000-0000-0000-0000-000000000002", MEDICATION),
        (
            "urn:uuid:00000000-0000-0000-0000-000000000003",
            _request(
                "rx-b",
                "urn:uuid:00000000-0000-0000-0000-000000000002",
                patient="urn:uuid:00000000-0000-0000-0000-000000000001",
            ),
        ),
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": url, "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for url, r in entries
        ],
    }
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "b1.json").write_text(json.dumps(bundle))
    bundled = {"format": "fhir_bundle", "files": "*.json"}
    site = {
        "include": [str(MAPPINGS / "fhir_r4.yaml")],
        "override": {
            "site": "bundles",
            "fhir_inventory": [bundled],
            "sources": {n: bundled for n in ("patients", "medication_requests", "medications")},
        },
    }
    mapping = tmp_path / "site.yaml"
    mapping.write_text(yaml.safe_dump(site))
    db = tmp_path / "out.duckdb"
    assert run_mapping(mapping, tmp_path / "data", db, vocabulary=EUNOMIA).balanced
    assert _drugs(db) == [("rx-b", "314076", True, True)]

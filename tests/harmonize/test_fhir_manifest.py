"""A Bulk Data ``$export`` manifest, when the folder holds one, lists the export's files: each NDJSON source reads
the ``output`` files of its type, not what its glob matches (a stale file is not read, ``error`` files are not
data), and a listed file that is missing is an error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from fedomop.harmonize.ground.errors import SourceError
from fedomop.harmonize.run import run_mapping
from tests.conftest import MAPPINGS

VOCABULARY = MAPPINGS.parent / "sample_data" / "vocabulary"
SNOMED = "http://snomed.info/sct"
BASE = "https://fhir.example.org/bulk/7f3a"


def _condition(cid: str) -> dict[str, object]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": SNOMED, "code": "254637007"}]},
        "onsetDateTime": "2020-01-01",
    }


def _export(folder: Path, outputs: list[tuple[str, str]]) -> None:
    files = {
        "Patient.000.ndjson": [{"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1950"}],
        "Condition.000.ndjson": [_condition("c1")],
        "Condition.001.ndjson": [_condition("c2")],  # listed by the manifest
        "Condition.stale.ndjson": [_condition("old")],  # an earlier export's file, not listed
        "OperationOutcome.000.ndjson": [
            {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
        ],
    }
    for name, resources in files.items():
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in resources))
    manifest = {
        "transactionTime": "2026-12-01T10:00:00Z",
        "request": f"{BASE}/$export",
        "requiresAccessToken": True,
        "output": [{"type": kind, "url": f"{BASE}/{name}"} for kind, name in outputs],
        "error": [{"type": "OperationOutcome", "url": f"{BASE}/OperationOutcome.000.ndjson"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_manifest_decides_which_files_are_read(tmp_path: Path) -> None:
    _export(
        tmp_path,
        [
            ("Patient", "Patient.000.ndjson"),
            ("Condition", "Condition.000.ndjson"),
            ("Condition", "Condition.001.ndjson"),
        ],
    )
    db = tmp_path / "out.duckdb"
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY)
    assert report.balanced
    assert report.sources == {"patients": 1, "conditions": 2}
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("select source_file, source_row from fedomop_lineage where source = 'conditions'").fetchall()
        assert sorted(rows) == [("Condition.000.ndjson", "c1"), ("Condition.001.ndjson", "c2")]
        assert con.execute("select count(*) from fedomop_quarantine").fetchone() == (0,)  # no OperationOutcome


def test_a_listed_file_missing_from_the_folder_is_named(tmp_path: Path) -> None:
    _export(tmp_path, [("Patient", "Patient.000.ndjson"), ("Condition", "Condition.002.ndjson")])
    with pytest.raises(SourceError, match=r"the manifest lists 'Condition\.002\.ndjson' \(Condition\)"):
        run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, tmp_path / "out.duckdb", vocabulary=VOCABULARY)

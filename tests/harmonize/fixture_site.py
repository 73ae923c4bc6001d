"""A small, hand-written CSV + NDJSON site used by the engine tests (fast: the sample vocabulary is tiny).

Every value below is chosen to exercise one behaviour: an ICD-10-CM code with a real "Maps to", a LOINC code in
the diagnosis file (routes to measurement), calcium in mmol/L (converted to mg/dL), an unknown code, and a FHIR
Condition file. ``make_site`` writes the files and the mapping; tests then break one thing at a time.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import SAMPLE_DATA

PATIENTS = [
    ["patient_id", "sex", "birth_date", "death_date"],
    ["P1", "M", "1950-03-04", ""],
    ["P2", "F", "1962-11-30", "2021-05-06"],
    ["P3", "M", "1971-01-15", ""],
]
DIAGNOSES = [
    ["dx_id", "patient_id", "dx_date", "dx_vocab", "dx_code"],
    ["D1", "P1", "2019-02-01", "ICD10CM", "C61"],  # -> 200962 Primary malignant neoplasm of prostate
    ["D2", "P2", "2019-03-01", "ICD10CM", "Z99.9"],  # not in the vocabulary -> concept 0
    ["D3", "P3", "2019-04-01", "LOINC", "2857-1"],  # a Measurement concept -> routed to measurement
    ["D4", "P1", "2020-06-01", "SNOMED", "128462008"],  # 432851 Secondary malignant neoplastic disease
]
LABS = [
    ["lab_id", "patient_id", "lab_date", "loinc", "value", "unit"],
    ["L1", "P1", "2019-02-02", "17861-6", "2.5", "mmol/L"],  # calcium -> 10.02 mg/dL
    ["L2", "P2", "2019-03-02", "17861-6", "9.1", "mg/dL"],
    ["L3", "P3", "2019-04-02", "2857-1", "4.2", "ng/mL"],
]
CONDITIONS_NDJSON = [
    {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/P2"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254837009"}]},
        "onsetDateTime": "2018-07-01T10:00:00+02:00",
    },
    {
        "resourceType": "Condition",
        "id": "c2",
        "subject": {"reference": "Patient/P3"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "363406005"}]},
        "onsetDateTime": "2018-08-01",
    },
]
EHR = {"constant": 32817, "name": "EHR"}

MAPPING: dict[str, Any] = {
    "site": "fixture",
    "cdm_source": {"cdm_source_name": "Fixture site", "cdm_source_abbreviation": "fixture"},
    "vocabulary": {"folder": str(SAMPLE_DATA / "vocabulary"), "fhir_systems": {"http://snomed.info/sct": "SNOMED"}},
    "on_unmapped": "concept_zero",
    "observation_period": {"type_concept": EHR},
    "episodes": {
        "cancer_concepts": [
            {"vocabulary": "SNOMED", "code": "93974005", "name": "Primary malignant neoplasm of prostate"},
            {"vocabulary": "SNOMED", "code": "254837009", "name": "Malignant tumor of breast"},
        ],
        "episode_concept": {"constant": 32528, "name": "Disease First Occurrence"},
        "type_concept": EHR,
    },
    "units": [
        {
            "concept": {"vocabulary": "LOINC", "code": "17861-6", "name": "Calcium [Mass/volume] in Serum or Plasma"},
            "standard": "mg/dL",
            "factors": {"mmol/L": 4.008},
            "range": [0, 30],
        },
    ],
    "sources": {
        "patients": {"format": "csv", "files": "patients.csv"},
        "diagnoses": {"format": "csv", "files": "diagnoses.csv"},
        "labs": {"format": "csv", "files": "labs.csv"},
        "conditions": {
            "format": "fhir_ndjson",
            "files": "Condition*.ndjson",
            "resource_type": "Condition",
            "columns": {
                "id": "id",
                "patient": "subject.reference.resolve_id()",
                "system": "code.coding.system",
                "code": "code.coding.code",
                "onset": "onsetDateTime",
            },
        },
    },
    "tables": {
        "person": [
            {
                "source": "patients",
                "id": "patient_id",
                "start": {"date": "birth_date"},
                "fields": {
                    "gender_source_value": "sex",
                    "gender_concept_id": {
                        "map": "sex",
                        "values": {
                            "M": {"concept_id": 8507, "name": "MALE"},
                            "F": {"concept_id": 8532, "name": "FEMALE"},
                        },
                    },
                },
            }
        ],
        "death": [
            {
                "source": "patients",
                "when": {"column": "death_date", "not_null": True},
                "person": "patient_id",
                "start": {"date": "death_date"},
                "type_concept": EHR,
            }
        ],
        "condition_occurrence": [
            {
                "source": "diagnoses",
                "id": "dx_id",
                "person": "patient_id",
                "concept": {"code": "dx_code", "vocabulary_column": "dx_vocab"},
                "start": {"date": "dx_date"},
                "type_concept": EHR,
            },
            {
                "source": "conditions",
                "id": "id",
                "person": "patient",
                "concept": {"code": "code", "system_column": "system"},
                "start": {"date": "onset"},
                "type_concept": EHR,
            },
        ],
        "measurement": [
            {
                "source": "labs",
                "id": "lab_id",
                "person": "patient_id",
                "concept": {"code": "loinc", "vocabulary": "LOINC"},
                "start": {"date": "lab_date"},
                "value": {"number": "value", "unit": "unit"},
                "type_concept": EHR,
            },
        ],
    },
}


def write_csv(path: Path, rows: list[list[str]], *, encoding: str = "utf-8", delimiter: str = ",") -> None:
    path.write_bytes("\n".join(delimiter.join(r) for r in rows).encode(encoding) + b"\n")


def make_site(root: Path, mapping_changes: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write the fixture extract and its mapping under ``root``; returns (mapping file, source folder)."""
    source = root / "extract"
    source.mkdir(parents=True, exist_ok=True)
    write_csv(source / "patients.csv", PATIENTS)
    write_csv(source / "diagnoses.csv", DIAGNOSES)
    write_csv(source / "labs.csv", LABS)
    (source / "Condition.000.ndjson").write_text("\n".join(json.dumps(r) for r in CONDITIONS_NDJSON) + "\n")
    mapping = copy.deepcopy(MAPPING)
    for key, value in (mapping_changes or {}).items():
        mapping[key] = value
    mapping_file = root / "fixture.yaml"
    mapping_file.write_text(yaml.safe_dump(mapping, sort_keys=False))
    return mapping_file, source

"""Fixtures for governance tests: a site policy written to a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

APPROVED = "a" * 64


def policy_dict(approved: str = APPROVED, **study_overrides: object) -> dict:
    study = {
        "approved_apps": [{"sha256": approved, "note": "reviewed"}],
        "tables": {
            "person": ["person_id", "gender_concept_id", "year_of_birth"],
            "condition_occurrence": ["person_id", "condition_concept_id", "condition_start_date"],
            "measurement": "*",
        },
        "concept_sets": [{"vocabulary": "SNOMED", "code": "94222008"}, {"vocabulary": "LOINC", "code": "2857-1"}],
        "min_cohort_size": 30,
        "small_cell_threshold": 10,
        **study_overrides,
    }
    return {"site": "site_a", "audit_log": "audit.jsonl", "studies": {"bone_metastasis": study}}


def write_policy(directory: Path, data: dict) -> Path:
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture()
def policy_path(tmp_path: Path) -> Path:
    return write_policy(tmp_path, policy_dict())

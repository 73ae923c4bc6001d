"""Nothing valid is refused: the fast structural path and fhir.resources R4B agree on every HL7 R4 example,
and a Bundle entry that no resource-type source can read is accounted, not lost."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from fedomop.harmonize.run import run_mapping
from fedomop.harmonize.sources.fhir.structure import resource_model, structural_validator
from tests.conftest import EUNOMIA, MAPPINGS, SHARED

HL7 = SHARED / "fhir" / "hl7-r4-examples"


def _examples() -> list[tuple[str, dict]]:
    found: list[tuple[str, dict]] = []
    for path in sorted((HL7 / "ndjson").glob("*.ndjson")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                found.append((f"{path.name}:{number}", json.loads(line)))
    for path in sorted((HL7 / "bundles").glob("*.json")):
        for index, entry in enumerate(json.loads(path.read_text()).get("entry") or []):
            resource = entry.get("resource")
            if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
                found.append((f"{path.name}:entry[{index}]", resource))
    return found


def _r4b_accepts(resource: dict) -> bool:
    try:
        resource_model(resource["resourceType"]).model_validate(resource)
    except (ValueError, TypeError, KeyError, AttributeError):  # pydantic.ValidationError is a ValueError
        return False
    return True


def _fast_accepts(resource: dict) -> bool:
    validator = structural_validator(resource["resourceType"])
    try:
        validator.parse_json(json.dumps(resource).encode())  # the reader's hot path
    except ValueError:
        return False
    return not validator.problems(resource)


def test_fast_path_and_r4b_agree_on_every_hl7_example(shared_dir: Path) -> None:
    examples = _examples()
    assert len(examples) > 700  # 14 NDJSON types and 32 Bundles
    disagree = [(where, r4b) for where, r in examples if (r4b := _r4b_accepts(r)) != _fast_accepts(r)]
    assert disagree == []


@pytest.mark.parametrize(
    ("element", "value", "valid"),
    [
        ("photo", [{"data": "R0lGODlh/+9a"}], True),  # base64 with "/" and "+"
        ("photo", [{"data": "abc"}], False),  # bad padding: R4B cannot decode it
        ("name", [{"family": "van\u00a0Dam"}], True),  # no-break space inside a string
        ("name", [{"family": "12\u202fh"}], True),  # narrow no-break space
        ("name", [{"family": "\u00a0"}], False),  # a string needs a non-whitespace character
        ("gender", "male  ", False),  # a code has no trailing whitespace
    ],
)
def test_edge_values_get_the_r4b_answer(element: str, value: object, valid: bool) -> None:
    resource = {"resourceType": "Patient", "id": "p", element: value}
    assert _r4b_accepts(resource) is valid
    assert _fast_accepts(resource) is valid


def test_bundle_entry_without_resource_type_is_accounted(tmp_path: Path, shared_dir: Path) -> None:
    """site_d reads Bundles; an entry whose resource lacks resourceType, and an entry with no resource (a
    transaction DELETE), are quarantined with their reason and counted in the reconciliation."""
    (tmp_path / "bundles").mkdir()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1", "birthDate": "1950"}},
            {"resource": {"id": "nameless", "gender": "male"}},
            {"request": {"method": "DELETE", "url": "Patient/old"}},
        ],
    }
    (tmp_path / "bundles" / "b.json").write_text(json.dumps(bundle))
    db = tmp_path / "out.duckdb"
    report = run_mapping(MAPPINGS / "site_d.yaml", tmp_path, db, vocabulary=EUNOMIA)
    assert report.balanced
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "select source_row, reason from fedomop_quarantine where source like '(bundle%' order by 1"
        ).fetchall()
        recon = con.execute(
            "select source_count, quarantined from fedomop_reconciliation where source like '(bundle%'"
        ).fetchall()
    assert rows == [
        ("bundles/b.json:entry[1]", "bundle entry resource has no resourceType; add it"),
        (
            "bundles/b.json:entry[2]",
            "DELETE request: the entry removes a resource and carries none, so there is nothing to load (not an error)",
        ),
    ]
    assert recon == [(2, 2)]

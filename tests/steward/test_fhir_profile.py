"""``fedomop profile`` on FHIR: resource types, code systems per element, and the codes the vocabulary lacks.

The extract is written here, so every expected number is counted by hand from it: a Bundle with a Patient, two
Conditions (SNOMED 93974005 is in the sample vocabulary, 999999999 is not) and an Observation coded in LOINC
(718-7, known) and in a local system; an NDJSON file with two more Conditions (93974005 again, and 999999999).
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fedomop.cli import app
from tests.conftest import SAMPLE_DATA

runner = CliRunner()
SNOMED, LOCAL = "http://snomed.info/sct", "urn:oid:1.2.250.1.999"


def _condition(code: str) -> dict[str, object]:
    return {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": SNOMED, "code": code}]}}  # fmt: skip


def _extract(folder: Path) -> None:
    folder.mkdir()
    observation = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}, {"system": LOCAL, "code": "HB"}]},
        "valueQuantity": {"value": 13.1, "unit": "g/dL"},
    }
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1"}},
        {"resource": _condition("93974005")}, {"resource": _condition("999999999")}, {"resource": observation},
    ]}  # fmt: skip
    (folder / "bundle.json").write_text(json.dumps(bundle))
    (folder / "Condition.ndjson").write_text(
        "\n".join(json.dumps(_condition(c)) for c in ("93974005", "999999999")) + "\n"
    )
    (folder / "notes.json").write_text('{"not": "a bundle"}')  # a JSON file that is no Bundle is left alone


def _profile(tmp_path: Path, min_cell: int) -> tuple[dict, dict, str]:
    _extract(tmp_path / "fhir")
    out = tmp_path / "profile"
    result = runner.invoke(app, ["profile", "--source", str(tmp_path / "fhir"), "--out", str(out),
                                 "--vocabulary", str(SAMPLE_DATA / "vocabulary"), "--min-cell", str(min_cell)])  # fmt: skip
    assert result.exit_code == 0, result.output
    internal = json.loads((out / "profile.json").read_text())["fhir"]
    shareable = json.loads((out / "profile.shareable.json").read_text())["fhir"]
    return internal, shareable, result.output


def test_resource_types_and_code_systems_of_bundles_and_ndjson(tmp_path: Path) -> None:
    internal, _, output = _profile(tmp_path, min_cell=3)
    assert internal["files"] == {"Condition.ndjson": "fhir_ndjson", "bundle.json": "fhir_bundle"}
    assert internal["resource_types"] == {"Condition": 4, "Observation": 1, "Patient": 1}
    assert "FHIR resources: Condition 4, Observation 1, Patient 1; 3 code systems" in " ".join(output.split())
    systems = {(s["resource_type"], s["element"], s["system"]): s for s in internal["code_systems"]}
    condition = systems[("Condition", "code.coding", SNOMED)]
    assert (condition["vocabulary"], condition["codings"], condition["distinct_codes"]) == ("SNOMED", 4, 2)
    assert (condition["unmapped_codings"], condition["top_unmapped"]) == (2, [["999999999", 2]])
    loinc = systems[("Observation", "code.coding", "http://loinc.org")]
    assert (loinc["codings"], loinc["unmapped_codings"]) == (1, 0)
    local = systems[("Observation", "code.coding", LOCAL)]
    assert (local["vocabulary"], local["top_unmapped"]) == (None, [["HB", 1]])  # no OMOP vocabulary: all unmapped


def test_the_shareable_profile_withholds_small_counts_and_rare_codes(tmp_path: Path) -> None:
    _, shareable, _ = _profile(tmp_path, min_cell=3)
    assert shareable["resource_types"] == {"Condition": 4, "Observation": None, "Patient": None}
    systems = {(s["resource_type"], s["system"]): s for s in shareable["code_systems"]}
    condition = systems[("Condition", SNOMED)]
    assert (condition["codings"], condition["distinct_codes"], condition["unmapped_codings"]) == (4, None, None)
    assert condition["top_unmapped"] == []  # 999999999 seen twice, below 3
    assert systems[("Observation", LOCAL)]["top_unmapped"] == []
    html = (tmp_path / "profile" / "profile.shareable.html").read_text()
    assert "FHIR code systems" in html and "999999999" not in html and "HB" not in html

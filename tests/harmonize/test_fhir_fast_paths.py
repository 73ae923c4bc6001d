"""The FHIR reader's fast paths give exactly what the generic, step-by-step forms give.

* generated ``CompiledPath.evaluate`` == ``evaluate_generic`` (composed closures), on awkward inputs;
* the generated row extractors (checked and ``validated``) == ``evaluate_generic`` per column;
* the one-regex real-date check == the R4B format regex AND the calendar regex;
* the reader still quarantines structurally invalid resources with their field, and keeps lineage.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pydantic_core
import pytest

from fedomop.harmonize.sources.fhir.path import compile_path, row_extractor
from fedomop.harmonize.sources.fhir.reader import read_fhir
from fedomop.harmonize.sources.fhir.structure import (
    CALENDAR_PATTERN,
    element_table,
    present_elements,
    real_date_pattern,
    resource_model,
    specialisation,
    structural_validator,
)
from tests.conftest import SAMPLE_DATA, SYNTHEA_BULK

RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
SNOMED = "http://snomed.info/sct"

EXPRESSIONS = {
    "Patient": [
        "id",
        "gender",
        "birthDate",
        "deceasedDateTime | deceasedBoolean",
        "deceasedBoolean",
        "multipleBirthInteger",
        "name.given",
        "name.family",
        "name.where(use='official').given",
        "name.where(use='official').family | name.family",
        "address.line",
        "address.postalCode",
        "address.extension.extension.valueDecimal",
        "identifier.where(system='urn:x').value",
        "identifier.where(type.coding.code='MR').value",
        f"extension('{RACE}').extension('ombCategory').valueCoding.code",
        f"extension.where(url='{RACE}').extension.where(url='text').valueString",
        "managingOrganization.reference.resolve_id()",
        "managingOrganization.resolve_id()",
        "generalPractitioner.resolve_identifier()",
        "telecom.count()",
        "name.given.first()",
        "name[1].family",
        "photo.exists()",
        "name",
        "address",
    ],
    "Observation": [
        "subject.reference.resolve_id()",
        "encounter.reference.resolve_id()",
        "code.coding.system",
        "code.coding.where(system='http://loinc.org').code",
        "effectiveDateTime | effectivePeriod.start",
        "valueQuantity.value",
        "valueQuantity.code | valueQuantity.unit",
        "valueQuantity.value | valueString",
        "component.valueQuantity.value",
        "category.coding.code.last()",
    ],
}

REFERENCES = [
    "Patient/1",
    "Patient/1/",
    "Patient/a.b-c",
    "http://x.org/fhir/Patient/7/_history/2",
    "Patient/7/_history/2",
    "urn:uuid:6a2f6d0a-1b2c-4d5e-8f90-123456789abc",
    "urn:oid:1.2.3",
    "#contained-1",
    "#",
    "Patient?identifier=urn:x|42",
    "Patient",
    "/Patient",
    "Patient//",
    "",
    "Päti/ënt",
    "Patient/x y",
    "Patient/1\nPatient/2",
    "urn/x",
]
URNS = {"urn:uuid:6a2f6d0a-1b2c-4d5e-8f90-123456789abc": "p-urn", "Patient": "bare", "Patient/1": "never-used"}


def awkward_values():
    """Shapes a non-validated resource may have where a mapping expects something else."""
    return [None, "text", "", 0, 1, 2.5, True, False, [], [None], ["a", None, "b"], {}, {"x": 1}, [{"x": 1}, "y"]]


def awkward_patients() -> list[dict]:
    patients: list[dict] = [
        {},
        {"id": "p", "gender": ["female"], "birthDate": 1999},
        {"id": "p", "deceasedBoolean": False, "deceasedDateTime": None},
        {"name": {"given": "Single", "family": "Object"}},
        {"name": [None, {"given": [None, "Second"]}, {"use": "official", "family": "Off"}]},
        {"name": [{"use": ["official"], "family": "ListUse"}, {"use": "official"}]},
        {"name": [{"use": "official", "given": []}, {"use": "official", "given": ["g"]}]},
        {"name": ["not an object", {"family": "F"}]},
        {"identifier": [{"system": "urn:x", "value": 5}, {"system": "urn:x", "value": "v"}]},
        {"identifier": [{"type": {"coding": [{"code": "SS"}, {"code": "MR"}]}, "value": "mr"}]},
        {"identifier": [{"system": None}, {"system": 1}, {"system": "urn:x"}]},
        {"extension": [{"url": RACE, "extension": [{"url": "ombCategory", "valueCoding": {"code": "2106-3"}}]}]},
        {"extension": [None, "x", {"url": RACE}, {"url": RACE, "extension": {"url": "text", "valueString": "W"}}]},
        {"extension": {"url": RACE, "extension": [{"url": "ombCategory", "valueCoding": [{"code": "a"}]}]}},
        {"address": [{"line": ["1 Main", "Apt 2"], "extension": [{"extension": [{"valueDecimal": 1.5}]}]}]},
        {"multipleBirthInteger": "2", "telecom": [{"value": 1}], "photo": [{}]},
        {"name": [{"family": "A"}, {"family": "B"}]},
    ]
    for value in awkward_values():
        for key in ("gender", "name", "address", "extension", "identifier", "managingOrganization"):
            patients.append({"id": "p", key: value})
        patients.append({"name": [{"given": value, "use": value}]})
        patients.append({"extension": [{"url": RACE, "extension": [{"url": "ombCategory", "valueCoding": value}]}]})
    for reference in [*REFERENCES, *awkward_values()]:
        patients.append({"managingOrganization": {"reference": reference}})
        patients.append({"managingOrganization": reference})
        patients.append({"generalPractitioner": [{"reference": reference}, {"identifier": {"value": "gp"}}]})
    return patients


def awkward_observations() -> list[dict]:
    observations: list[dict] = [
        {"subject": {"reference": ref}, "encounter": {"reference": ref}} for ref in [*REFERENCES, *awkward_values()]
    ]
    observations += [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}, {"code": "x"}]}},
        {
            "code": {
                "coding": [{"code": "x"}, {"system": "http://loinc.org"}, {"system": "http://loinc.org", "code": 7}]
            }
        },
        {"code": {"coding": {"system": "http://loinc.org", "code": "single"}}},
        {"effectivePeriod": {"start": "2020-01-01"}, "valueString": "high"},
        {"effectiveDateTime": "2020", "valueQuantity": {"value": 3, "unit": "mg"}},
        {"valueQuantity": {"value": "3.5", "code": None, "unit": ["mg"]}},
        {"component": [{"valueQuantity": {"value": 1.25}}, {"valueQuantity": {"value": 2}}]},
        {"category": [{"coding": [{"code": "a"}, {"code": "b"}]}, {"coding": [{"code": "c"}]}]},
        "not a resource",
        ["a list"],
        None,
    ]
    for value in awkward_values():
        observations.append({"code": {"coding": [value]}, "valueQuantity": value, "effectivePeriod": value})
        observations.append({"code": value, "category": value, "component": [value]})
    return observations


CASES = {"Patient": awkward_patients(), "Observation": awkward_observations()}


@pytest.mark.parametrize("resource_type", sorted(EXPRESSIONS))
def test_generated_evaluate_equals_the_generic_one(resource_type):
    paths = [compile_path(expression, resource_type) for expression in EXPRESSIONS[resource_type]]
    generated = [path for path in paths if path.generated]
    assert len(generated) >= len(paths) - 5  # count(), last(), index, exists() keep the generic form
    for resource, urn_ids in itertools.product(CASES[resource_type], ({}, URNS, None)):
        for path in paths:
            expected = path.evaluate_generic(resource, urn_ids)
            assert path.evaluate(resource, urn_ids) == expected, (path.expression, resource, urn_ids)
            assert type(path.evaluate(resource, urn_ids)) is type(expected)


@pytest.mark.parametrize("resource_type", sorted(EXPRESSIONS))
def test_checked_row_extractor_equals_the_generic_paths(resource_type):
    paths = [compile_path(expression, resource_type) for expression in EXPRESSIONS[resource_type]]
    rows: list[tuple] = []
    add = row_extractor(paths)(rows.append)
    for resource, urn_ids in itertools.product(CASES[resource_type], ({}, URNS)):
        add(resource, "file.ndjson", "row-1", urn_ids)
        expected = tuple(path.evaluate_generic(resource, urn_ids) for path in paths) + ("file.ndjson", "row-1")
        assert rows[-1] == expected, resource
        assert [type(value) for value in rows[-1]] == [type(value) for value in expected]


def valid_resources(path: Path, resource_type: str) -> list[dict]:
    checker = structural_validator(resource_type)
    resources = []
    for line in path.read_bytes().splitlines():
        if line.strip() and not checker.problems(raw := json.loads(line)):
            resources.append(raw)
    return resources


VALIDATED_SOURCES = [
    (SYNTHEA_BULK / "Patient.000.ndjson", "Patient"),
    (SYNTHEA_BULK / "Encounter.000.ndjson", "Encounter"),
    (SYNTHEA_BULK / "MedicationRequest.000.ndjson", "MedicationRequest"),
    (SAMPLE_DATA / "site_b" / "Observation.ndjson", "Observation"),
    (SAMPLE_DATA / "site_b" / "Patient.ndjson", "Patient"),
]
VALIDATED_EXPRESSIONS = {
    "Patient": EXPRESSIONS["Patient"],
    "Observation": EXPRESSIONS["Observation"],
    "Encounter": [
        "subject.reference.resolve_id()",
        "participant.individual.resolve_identifier()",
        "participant.type.coding.code",
        "class.code",
        "period.start",
        "reasonCode.coding.where(system='http://snomed.info/sct').code",
        "location.location.reference.resolve_id() | serviceProvider.reference.resolve_identifier()",
        "type.coding.code.first()",
        "type",
    ],
    "MedicationRequest": [
        "medicationCodeableConcept.coding.code",
        "dosageInstruction.doseAndRate.doseQuantity.value",
        "dispenseRequest.validityPeriod.end",
        "reasonReference.resolve_id()",
        "requester.resolve_identifier()",
        "dosageInstruction.timing.repeat.frequency",
        "authoredOn",
    ],
}


@pytest.mark.parametrize(("path", "resource_type"), VALIDATED_SOURCES, ids=lambda v: getattr(v, "name", v))
def test_validated_row_extractor_equals_the_generic_paths_on_checked_resources(path, resource_type):
    """The validated form skips shape tests the structural check already made: same rows on every
    resource that passes it (real Synthea resources and the site-B sample)."""
    resources = valid_resources(path, resource_type)
    assert len(resources) > 10
    paths = [compile_path(expression, resource_type) for expression in VALIDATED_EXPRESSIONS[resource_type]]
    rows: list[tuple] = []
    add = row_extractor(paths, validated=True)(rows.append)
    found = [0] * len(paths)
    for resource in resources:
        add(resource, "f", resource["id"], {})
        expected = tuple(p.evaluate_generic(resource, {}) for p in paths) + ("f", resource["id"])
        assert rows[-1] == expected, resource["id"]
        assert [type(value) for value in rows[-1]] == [type(value) for value in expected]
        found = [count + (value is not None) for count, value in zip(found, rows[-1], strict=False)]
    names = VALIDATED_EXPRESSIONS[resource_type]
    assert sum(1 for count in found if count) >= len(paths) // 2, dict(zip(names, found, strict=True))


def test_generated_code_holds_no_literal_text():
    """Literals reach the generated function as constants, so a quote in a where() literal is harmless."""
    path = compile_path("identifier.where(system='urn:\\'x\\'\"); import os').value", "Patient")
    assert path.generated and "import os" not in path.evaluate.source
    resource = {"identifier": [{"system": "urn:'x'\"); import os", "value": "v"}]}
    assert path.evaluate(resource) == "v" == path.evaluate_generic(resource)


# ---------------------------------------------------------------------------------------------------
# dates: one regex for "right format and a real day"


def date_elements():
    table = element_table(resource_model("Observation"))
    patient = element_table(resource_model("Patient"))
    return [patient["birthDate"], table["effectiveDateTime"], table["issued"]]


def date_candidates() -> list[str]:
    years = ["0000", "0001", "0004", "0100", "0400", "1900", "1999", "2000", "2004", "2019", "2024", "2100", "9999"]
    months = [f"{m:02d}" for m in range(14)]
    days = [f"{d:02d}" for d in range(33)]
    times = ["", "T10:00:00Z", "T23:59:60+14:00", "T24:00:00Z", "T10:00:00", "T10:00:00.123-05:00", "Tx"]
    values = ["", "20", "2024-", "2024-1", "2024-02-3", "2024-02-29T", "２０２４"]
    values += years + [f"{y}-{m}" for y in years for m in months]
    values += [f"{y}-{m}-{d}{t}" for y in years for m in months for d in days for t in times]
    return values


@pytest.mark.parametrize("element", date_elements(), ids=lambda e: e.primitive)
def test_real_date_pattern_is_format_and_calendar(element):
    combined = real_date_pattern(element.primitive, element.pattern)
    assert combined is not None, "the R4B date patterns changed: re-derive real_date_pattern"
    for value in date_candidates():
        expected = bool(re.fullmatch(element.pattern, value) and re.fullmatch(CALENDAR_PATTERN, value))
        assert bool(re.fullmatch(combined, value)) == expected, (element.primitive, value)


# ---------------------------------------------------------------------------------------------------
# the reader: still quarantines, keeps lineage, any column set


def patient_line(**changes) -> str:
    resource = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1990-05-01"}
    resource.update(changes)
    return json.dumps({k: v for k, v in resource.items() if v is not None})


def test_structurally_invalid_resources_are_quarantined_with_their_field(tmp_path):
    lines = [
        "\ufeff" + patient_line(id="p0"),
        patient_line(id="p1", birthDate="2021-02-29"),
        patient_line(id="p2", birthDate="2024-02-29", name=[{"given": "Ann"}]),
        patient_line(id="p3", deceasedBoolean=True, deceasedDateTime="2020-01-01"),
        patient_line(id="p4", multipleBirthInteger="2"),
        "",
        patient_line(id="p5", birthDate="2024-02-29", address=[{"line": ["1 Main"], "city": "X"}]),
        patient_line(id="p0"),
        patient_line(id="p6", gender="other", birthDate="1990-13-01"),
        "",
    ]
    path = tmp_path / "Patient.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    columns = {"gender": "gender", "birth": "birthDate", "line": "address.line", "given": "name.given"}
    batch = read_fhir("patients", [path], tmp_path, "Patient", columns, fmt="ndjson")
    assert batch.balanced() and batch.seen == 9
    assert batch.frame.rows() == [
        ("female", "1990-05-01", None, None, "Patient.ndjson", "p0"),
        ("female", "2024-02-29", "1 Main", None, "Patient.ndjson", "p5"),
    ]
    rejects = {row["source_row"]: row for row in batch.rejects.iter_rows(named=True)}
    assert rejects["p1"]["field"] == "birthDate" and "not a real calendar date" in rejects["p1"]["reason"]
    assert rejects["p2"]["field"] == "name[0].given" and "repeats" in rejects["p2"]["reason"]
    assert "deceased[x] has 2 values" in rejects["p3"]["reason"]
    assert rejects["p4"]["field"] == "multipleBirthInteger" and "integer" in rejects["p4"]["reason"]
    assert rejects["Patient.ndjson:6"]["reason"].startswith("blank line inside NDJSON")
    assert rejects["Patient.ndjson:8"]["reason"] == (
        "duplicate id, first seen at Patient.ndjson:1; remove the repeated resource or give it its own id"
    )
    assert rejects["p6"]["field"] == "birthDate" and "must be a FHIR date" in rejects["p6"]["reason"]
    assert len(rejects) == 7


def test_duplicates_name_the_first_file_and_line_across_files(tmp_path):
    (tmp_path / "a.ndjson").write_text(patient_line(id="x") + "\n" + patient_line(id="y") + "\n")
    (tmp_path / "b.ndjson").write_text("\n".join([patient_line(id="z"), patient_line(id="y")]) + "\n")
    files = [tmp_path / "a.ndjson", tmp_path / "b.ndjson"]
    batch = read_fhir("p", files, tmp_path, "Patient", {"g": "gender"}, fmt="ndjson")
    assert batch.frame["_source_row"].to_list() == ["x", "y", "z"]
    assert batch.rejects.rows() == [
        (
            "b.ndjson",
            "b.ndjson:2",
            "id",
            "y",
            "duplicate id, first seen at a.ndjson:2; remove the repeated resource or give it its own id",
        )
    ]


def test_a_source_with_no_columns_keeps_lineage(tmp_path):
    path = tmp_path / "Patient.ndjson"
    path.write_text(patient_line(id="a") + "\n" + patient_line(id="b") + "\n")
    for validation in ("structural", "full"):
        batch = read_fhir("p", [path], tmp_path, "Patient", {}, fmt="ndjson", validation=validation)
        assert batch.frame.columns == ["_source_file", "_source_row"]
        assert batch.frame.rows() == [("Patient.ndjson", "a"), ("Patient.ndjson", "b")]


def test_resource_level_rules_checked_outside_the_validator_decide_the_same(tmp_path):
    """The hot loop tests the resource-level rules (one value per choice group, required primitives,
    which may come as their "_x" extension only) itself; the outcome and reasons stay the full check's."""
    encounter = {"resourceType": "Encounter", "class": {"code": "AMB"}}
    lines = [
        json.dumps({**encounter, "id": "e1", "status": "finished"}),
        json.dumps({**encounter, "id": "e2", "_status": {"extension": [{"url": "u", "valueCode": "x"}]}}),
        json.dumps({**encounter, "id": "e3"}),
        json.dumps({**encounter, "id": "e4", "status": "finished", "extension": [{"url": "u"}]}),
        json.dumps({**encounter, "id": "e5", "status": "finished", "extension": [{"valueCode": "x"}]}),
        json.dumps({**encounter, "id": "e6", "status": "finished", "extension": [{"url": "u", "valueCode": "x"}]}),
        json.dumps(
            {
                **encounter,
                "id": "e7",
                "status": "finished",
                "extension": [{"url": "u", "valueCode": "x", "valueId": "y"}],
            }
        ),
    ]
    path = tmp_path / "Encounter.ndjson"
    path.write_text("\n".join(lines) + "\n")
    batch = read_fhir("e", [path], tmp_path, "Encounter", {"status": "status"}, fmt="ndjson")
    assert batch.frame.rows() == [
        ("finished", "Encounter.ndjson", "e1"),
        (None, "Encounter.ndjson", "e2"),
        ("finished", "Encounter.ndjson", "e4"),
        ("finished", "Encounter.ndjson", "e6"),
    ]
    reasons = dict(zip(batch.rejects["source_row"], batch.rejects["reason"], strict=True))
    assert reasons["e3"].startswith("required element 'status' is missing from Encounter")
    assert reasons["e5"].startswith("required element 'url' is missing from Extension")
    assert "Extension.value[x] has 2 values (valueCode, valueId)" in reasons["e7"]
    checker = structural_validator("Encounter")
    for line in lines:
        resource = json.loads(line)
        full = checker._validator  # the validator with every rule inside (used for explanations)
        try:
            full.validate_python(resource)
            valid = True
        except pydantic_core.ValidationError:
            valid = False
        assert (checker.problems(resource) == []) is valid, line


# ---------------------------------------------------------------------------------------------------
# specialised validators (only the elements seen so far declared; the full one decides the rest)


@pytest.fixture
def fresh_specialisation(monkeypatch):
    """Start from no learned elements, and specialise after 3 resources instead of LEARN_FROM."""
    fhir_module = __import__("fedomop.harmonize.sources.fhir.reader", fromlist=["LEARN_FROM"])
    monkeypatch.setattr(fhir_module, "LEARN_FROM", 3)
    specialisation.cache_clear()
    yield
    specialisation.cache_clear()


def read_without_specialising(monkeypatch, *args, **kwargs):
    fhir_module = __import__("fedomop.harmonize.sources.fhir.reader", fromlist=["LEARN_FROM"])
    with monkeypatch.context() as patch:
        patch.setattr(fhir_module, "LEARN_FROM", 10**12)
        specialisation.cache_clear()
        batch = read_fhir(*args, **kwargs)
    specialisation.cache_clear()
    return batch


def test_a_specialised_validator_accepts_only_what_the_full_one_accepts_with_the_same_result():
    refusals = {}
    for path, resource_type in VALIDATED_SOURCES:
        checker = structural_validator(resource_type)
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        seen: set = set()
        for line in lines[:2]:
            present_elements(checker.model, checker.parse_json(line), seen)
        narrow = checker.specialised(frozenset(seen))
        refused = 0
        for line in lines:
            try:
                resource = narrow(line)
            except pydantic_core.ValidationError:
                refused += 1
                continue
            assert checker.parse_elements(line) == resource
        refusals[path.name] = (refused, len(lines))
    assert all(refused < total for refused, total in refusals.values()), refusals
    assert sum(refused for refused, _total in refusals.values()) > 100, refusals  # unseen elements are refused


def test_the_reader_gives_the_same_batch_with_and_without_specialising(tmp_path, monkeypatch, fresh_specialisation):
    """Resources with elements first seen after the validator was specialised, invalid ones and
    duplicates after it: same frame, same rejects, and the new elements are learned."""
    common = [patient_line(id=f"c{n}") for n in range(5)]
    rare = [
        patient_line(id="r1", maritalStatus={"coding": [{"system": "http://x", "code": "M"}]}),
        patient_line(id="r2", _birthDate={"extension": [{"url": "http://x", "valueString": "approx"}]}),
        patient_line(id="r3", address=[{"line": ["1 Main"], "period": {"start": "2020-01-01"}}]),
        patient_line(id="r4", maritalStatus={"coding": [{"system": "http://x", "code": 5}]}),
        patient_line(id="r5", unknownElement=1),
        patient_line(id="c1", gender="male"),
        patient_line(id="r6", birthDate="2023-02-29"),
    ]
    path = tmp_path / "Patient.ndjson"
    path.write_text("\n".join(common + rare + common[:1]) + "\n")
    columns = {"gender": "gender", "marital": "maritalStatus.coding.code", "line": "address.line"}
    args = ("p", [path], tmp_path, "Patient", columns)
    specialised = read_fhir(*args, fmt="ndjson")
    assert specialisation("Patient").parse is not None
    assert (resource_model("Patient"), "maritalStatus") in specialisation("Patient").seen
    again = read_fhir(*args, fmt="ndjson")  # now with the elements learned from the first read
    plain = read_without_specialising(monkeypatch, *args, fmt="ndjson")
    for batch in (specialised, again):
        assert batch.frame.equals(plain.frame) and batch.rejects.equals(plain.rejects)
        assert batch.seen == plain.seen == 13
    assert specialised.frame["_source_row"].to_list() == ["c0", "c1", "c2", "c3", "c4", "r1", "r2", "r3"]
    assert set(specialised.rejects["source_row"]) == {"r4", "r5", "r6", "Patient.ndjson:11", "Patient.ndjson:13"}


def test_specialising_on_a_real_export_changes_nothing(monkeypatch, fresh_specialisation):
    for path, resource_type in VALIDATED_SOURCES:
        columns = {"id": "id", "first": "meta.lastUpdated | text.status"}
        args = (resource_type, [path], path.parent, resource_type, columns)
        first, second = read_fhir(*args, fmt="ndjson"), read_fhir(*args, fmt="ndjson")
        plain = read_without_specialising(monkeypatch, *args, fmt="ndjson")
        for batch in (first, second):
            assert batch.frame.equals(plain.frame) and batch.rejects.equals(plain.rejects), path.name


def test_small_batches_built_row_wise_equal_the_column_wise_frames(tmp_path, monkeypatch):
    """Typed columns (decimal given as JSON integers and floats, integer, boolean, text, nulls) come out the
    same whichever way the batch is turned into a polars frame."""
    observation = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "x"}]}}
    values = [{"valueQuantity": {"value": 81}}, {"valueQuantity": {"value": 9.1}}, {"valueInteger": -3}]
    values += [{"valueBoolean": True}, {"valueBoolean": False}, {"valueString": "high"}, {}]
    lines = [json.dumps({**observation, "id": f"o{n}", **value}) for n, value in enumerate(values)]
    path = tmp_path / "Observation.ndjson"
    path.write_text("\n".join(lines) + "\n")
    columns = {
        "decimal": "valueQuantity.value",
        "integer": "valueInteger",
        "flag": "valueBoolean",
        "text": "valueString | code.coding.code",
        "mixed": "valueQuantity.value | valueInteger | valueBoolean | valueString",
    }
    fhir_module = __import__("fedomop.harmonize.sources.fhir.reader", fromlist=["SMALL_BATCH"])
    row_wise = read_fhir("o", [path], tmp_path, "Observation", columns, fmt="ndjson")
    monkeypatch.setattr(fhir_module, "_PY_DATA_FRAME", None)  # the public constructor instead of the row one
    public = read_fhir("o", [path], tmp_path, "Observation", columns, fmt="ndjson")
    monkeypatch.setattr(fhir_module, "SMALL_BATCH", 0)
    column_wise = read_fhir("o", [path], tmp_path, "Observation", columns, fmt="ndjson")
    assert row_wise.frame.schema == column_wise.frame.schema == public.frame.schema
    assert row_wise.frame.equals(column_wise.frame) and row_wise.frame.equals(public.frame)
    assert row_wise.frame["decimal"].to_list() == [81.0, 9.1, None, None, None, None, None]
    assert row_wise.frame["mixed"].to_list() == ["81.0", "9.1", "-3", "true", "false", "high", None]


def test_specialised_validators_keep_the_resource_level_rules(tmp_path, monkeypatch, fresh_specialisation):
    """A specialised validator requires required primitives themselves and declares one value per choice
    group where only one was seen, so it needs no rule test; "_x"-only values, second choice values and
    new choice types go to the full validator and its rules."""
    base = {"resourceType": "Observation", "code": {"coding": [{"code": "x"}]}}

    def line(n: int, **elements) -> str:
        return json.dumps({**base, "id": f"o{n}", **elements})

    learned = [line(n, status="final", effectiveDateTime="2020-01-01", valueQuantity={"value": n}) for n in range(4)]
    later = [
        line(10, _status={"extension": [{"url": "u", "valueCode": "x"}]}, effectiveDateTime="2020"),
        line(11, effectiveDateTime="2020"),
        line(12, status="final", effectiveDateTime="2020", effectivePeriod={"start": "2020"}),
        line(13, status="final", valueString="high"),
        line(14, status="final", valueString="high", valueQuantity={"value": 1}),
    ]
    path = tmp_path / "Observation.ndjson"
    path.write_text("\n".join(learned + later) + "\n")
    args = ("o", [path], tmp_path, "Observation", {"value": "valueQuantity.value | valueString"})
    first, second = read_fhir(*args, fmt="ndjson"), read_fhir(*args, fmt="ndjson")  # second: valueString learned
    plain = read_without_specialising(monkeypatch, *args, fmt="ndjson")
    for batch in (first, second):
        assert batch.frame.equals(plain.frame) and batch.rejects.equals(plain.rejects)
    assert first.frame["_source_row"].to_list() == ["o0", "o1", "o2", "o3", "o10", "o13"]
    reasons = dict(zip(first.rejects["source_row"], first.rejects["reason"], strict=True))
    assert reasons["o11"].startswith("required element 'status' is missing from Observation")
    assert "effective[x] has 2 values" in reasons["o12"] and "value[x] has 2 values" in reasons["o14"]


def test_lineage_names_the_file_with_symlinks_resolved(tmp_path):
    """The lineage file name is the real file relative to the real source folder, whether the folder or
    the file is reached through a symlink (the folder's resolution is remembered between reads)."""
    real = tmp_path / "real"
    real.mkdir()
    line = json.dumps({"resourceType": "Patient", "id": "p1", "gender": "female"})
    (real / "Patient.ndjson").write_text(line + "\n")
    (tmp_path / "linked").symlink_to(real, target_is_directory=True)
    (real / "Alias.ndjson").symlink_to(real / "Patient.ndjson")
    for files, base in [
        ([tmp_path / "linked" / "Patient.ndjson"], tmp_path),
        ([real / "Alias.ndjson"], real),
        ([tmp_path / "linked" / "Patient.ndjson"], tmp_path / "linked"),
    ]:
        batch = read_fhir("p", files, base, "Patient", {"g": "gender"}, fmt="ndjson")
        expected = "real/Patient.ndjson" if base == tmp_path else "Patient.ndjson"
        assert batch.frame["_source_file"].to_list() == [expected]

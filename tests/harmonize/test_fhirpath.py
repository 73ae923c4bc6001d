"""Path expressions evaluated on real Synthea R4 resources, and the errors a mapping author sees."""

from __future__ import annotations

import json

import polars as pl
import pytest

from fedomop.harmonize.ground.errors import MappingError
from fedomop.harmonize.sources.fhir.path import compile_path
from tests.conftest import SYNTHEA_BULK

SNOMED = "http://snomed.info/sct"
RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"


def first_resource(resource_type: str, predicate=lambda r: True) -> dict:
    with (SYNTHEA_BULK / f"{resource_type}.000.ndjson").open() as handle:
        for line in handle:
            resource = json.loads(line)
            if predicate(resource):
                return resource
    raise AssertionError(f"no matching {resource_type} in the Synthea export")


@pytest.fixture(scope="module")
def patient() -> dict:
    return first_resource("Patient", lambda r: r["id"] == "129c6ac7-8d06-89de-ad63-0204a93e76c3")


@pytest.fixture(scope="module")
def condition() -> dict:
    return first_resource("Condition", lambda r: r["id"] == "0023b3a7-2ded-840c-ee5b-6b123fdcfb0b")


@pytest.fixture(scope="module")
def medication_request() -> dict:
    return first_resource("MedicationRequest", lambda r: r["id"] == "002eb5b8-2964-effd-3b09-f132017dae04")


@pytest.mark.parametrize(
    ("expression", "expected", "dtype"),
    [
        ("id", "129c6ac7-8d06-89de-ad63-0204a93e76c3", pl.String),
        ("gender", "female", pl.String),
        ("birthDate", "1927-05-21", pl.String),
        ("deceasedDateTime", "1989-05-09T20:35:22-04:00", pl.String),
        ("deceasedBoolean | deceasedDateTime", "1989-05-09T20:35:22-04:00", pl.String),
        ("name.given", "Sumiko254", pl.String),
        ("name[1].family", "Cummerata161", pl.String),
        ("name.where(use='maiden').family", "Cummerata161", pl.String),
        ("identifier.where(type.coding.code='SS').value", "999-94-5397", pl.String),
        (f"extension.where(url='{RACE}').extension.where(url='ombCategory').valueCoding.code", "2106-3", pl.String),
        (f"extension('{RACE}').extension('text').valueString", "White", pl.String),
        (
            "extension('http://synthetichealth.github.io/synthea/disability-adjusted-life-years').valueDecimal",
            3.8227768159088433,
            pl.Float64,
        ),
        ("telecom.count()", 1, pl.Int64),
        ("photo.exists()", False, pl.Boolean),
        ("multipleBirthBoolean", False, pl.Boolean),
        ("multipleBirthInteger", None, pl.Int64),
    ],
)
def test_patient_paths(patient, expression, expected, dtype):
    compiled = compile_path(expression, "Patient")
    assert compiled.evaluate(patient) == expected
    assert compiled.dtype == dtype


def test_condition_codes_dates_and_references(condition):
    assert compile_path(f"code.coding.where(system='{SNOMED}').code", "Condition").evaluate(condition) == "91302008"
    assert compile_path("code.coding.system", "Condition").evaluate(condition) == SNOMED
    assert compile_path("code.coding.first().display", "Condition").evaluate(condition) == "Sepsis (disorder)"
    assert compile_path("code.coding.where(system='http://loinc.org').code", "Condition").evaluate(condition) is None
    assert compile_path("onsetDateTime | onsetPeriod.start", "Condition").evaluate(condition) == (
        "1976-01-19T22:58:16-05:00"
    )
    assert compile_path("subject.reference.resolve_id()", "Condition").evaluate(condition) == (
        "129c6ac7-8d06-89de-ad63-0204a93e76c3"
    )
    assert compile_path("encounter.resolve_id()", "Condition").evaluate(condition) == (
        "f6003197-6507-1168-87be-ceccd5517094"
    )


def test_medication_request_conditional_reference_and_numbers(medication_request):
    mr = medication_request
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"
    path = f"medicationCodeableConcept.coding.where(system='{rxnorm}').code"
    assert compile_path(path, "MedicationRequest").evaluate(mr) == "314076"
    # a conditional reference has no logical id; its identifier value is available separately
    assert compile_path("requester.reference.resolve_id()", "MedicationRequest").evaluate(mr) is None
    assert compile_path("requester.resolve_identifier()", "MedicationRequest").evaluate(mr) == "9999974394"
    period = compile_path("dosageInstruction.timing.repeat.period", "MedicationRequest")
    assert period.evaluate(mr) == 1.0 and period.dtype == pl.Float64
    sequence = compile_path("dosageInstruction.sequence", "MedicationRequest")
    assert sequence.evaluate(mr) == 1 and sequence.dtype == pl.Int64


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/123", "123"),
        ("https://fhir.example.org/r4/Patient/123", "123"),
        ("Patient/123/_history/4", "123"),
        ("#c1", "#c1"),  # contained: never equal to an export resource id
        ("urn:uuid:9f2c2b9e-0d5a-4a3b-8c61-3f3a2b1c0d9e", "p-1"),
        ("urn:uuid:00000000-0000-0000-0000-000000000000", None),
        ("Patient?identifier=http://x|42", None),
    ],
)
def test_resolve_id_forms(reference, expected):
    urn_ids = {"urn:uuid:9f2c2b9e-0d5a-4a3b-8c61-3f3a2b1c0d9e": "p-1"}
    resource = {"resourceType": "Condition", "subject": {"reference": reference}}
    assert compile_path("subject.reference.resolve_id()", "Condition").evaluate(resource, urn_ids) == expected


def test_a_complex_result_is_json_text(condition):
    value = compile_path("code.coding", "Condition").evaluate(condition)
    assert json.loads(value) == condition["code"]["coding"][0]


def test_untyped_paths_work_without_a_resource_type(condition):
    assert compile_path("code.text").evaluate(condition) == "Sepsis (disorder)"
    assert compile_path("no.such.thing").evaluate(condition) is None


@pytest.mark.parametrize(
    ("expression", "message", "position"),
    [
        ("birthdate", "did you mean 'birthDate'", 0),
        ("deceased", "deceasedBoolean | deceasedDateTime", 0),
        ("name.given.foo", "primitive", 11),
        ("name.frist()", "did you mean first()", 5),
        ("name..given", "expected name", 5),
        ("name.where(use=)", "expected a literal", 15),
        ("name.where(use~'x')", "unexpected character '~'", 14),
        ("name.where(use='x'", "expected ')'", 18),
        ("gender.resolve_id()", "applies to a Reference", 7),
        ("name[x]", "expected number", 5),
    ],
)
def test_syntax_and_element_errors_name_the_expression_and_position(expression, message, position):
    with pytest.raises(MappingError) as caught:
        compile_path(expression, "Patient")
    text = str(caught.value)
    assert repr(expression) in text
    assert message in text
    assert f"at position {position}" in text
    assert caught.value.fix


def test_unknown_resource_type_is_a_mapping_error():
    with pytest.raises(MappingError, match="not a FHIR R4B resource type"):
        compile_path("id", "Patinet")


def test_compiled_once():
    assert compile_path("gender", "Patient") is compile_path("gender", "Patient")


AGREEMENT = {
    "Patient": [
        "name.given",
        "name.where(use='official').family",
        "address.extension.extension.valueDecimal",
        f"extension('{RACE}').extension('ombCategory').valueCoding.code",
        "identifier.where(type.coding.code='MR' and system='http://hospital.smarthealthit.org').value",
        "telecom.where(use!='work').value",
    ],
    "Encounter": [
        "participant.individual.resolve_identifier()",
        "participant.type.coding.code",
        "location.location.reference.resolve_id() | serviceProvider.reference.resolve_identifier()",
        "reasonCode.coding.where(system='http://snomed.info/sct').code",
        "type.coding.code.first()",
    ],
    "MedicationRequest": ["dosageInstruction.doseAndRate.doseQuantity.value", "reasonReference.resolve_id()"],
}


@pytest.mark.parametrize("resource_type", sorted(AGREEMENT))
def test_depth_first_evaluation_equals_the_first_item_of_the_collection(resource_type):
    """evaluate() walks depth-first; it must give the first item of the FHIRPath collection every time."""
    compiled = [compile_path(expression, resource_type) for expression in AGREEMENT[resource_type]]
    found = [0] * len(compiled)
    with (SYNTHEA_BULK / f"{resource_type}.000.ndjson").open() as handle:
        for line in handle:
            resource = json.loads(line)
            for index, path in enumerate(compiled):
                items = path.evaluate_all(resource)
                assert path.evaluate(resource) == (items[0] if items else None), (path.expression, resource["id"])
                found[index] += bool(items)
    assert all(found), dict(zip(AGREEMENT[resource_type], found, strict=True))


def test_resolve_identifier_of_a_logical_reference():
    path = compile_path("subject.resolve_identifier()", "Condition")
    assert path.evaluate({"subject": {"identifier": {"system": "urn:x", "value": "42"}}}) == "42"
    assert path.evaluate({"subject": {"reference": "Patient?identifier=urn:x|7"}}) == "7"
    assert path.evaluate({"subject": {"reference": "Patient/1"}}) is None

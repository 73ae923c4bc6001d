"""What a US Core / mCODE-shaped R4 export needs from the standard mapping (mappings/fhir_r4.yaml).

One small bulk export of hand-written R4 resources, mapped once with the standard mapping and Eunomia; each test
checks one rule against values worked out by hand from the resources below (docs/mapping.md, "The standard FHIR
R4 mapping and the HL7 FHIR-to-OMOP IG").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedomop.harmonize.run import run_mapping
from tests.conftest import EUNOMIA, MAPPINGS
from tests.harmonize.fhir_export import query_rows as _rows
from tests.harmonize.fhir_export import write_ndjson

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"
OMB = "urn:oid:2.16.840.1.113883.6.238"


def _omb(kind: str, code: str, display: str) -> dict[str, object]:
    return {
        "url": f"{US_CORE}/us-core-{kind}",
        "extension": [
            {"url": "ombCategory", "valueCoding": {"system": OMB, "code": code, "display": display}},
            {"url": "text", "valueString": display},
        ],
    }


PATIENTS = [
    {
        "resourceType": "Patient",
        "id": "p-us",
        "extension": [
            _omb("race", "2054-5", "Black or African American"),
            _omb("ethnicity", "2135-2", "Hispanic or Latino"),
        ],
        "gender": "female",
        "birthDate": "1960-04-01",
        "deceasedDateTime": "2022-03-04",
    },
    # dead, date unknown: death_date is NOT NULL, so no death row can be made, but the fact is not dropped
    {"resourceType": "Patient", "id": "p-dead", "gender": "male", "birthDate": "1950-01-01", "deceasedBoolean": True},
    {"resourceType": "Patient", "id": "p-alive", "gender": "male", "birthDate": "1955-01-01", "deceasedBoolean": False},
]


def _encounter(enc_id: str, code: str, status: str = "finished") -> dict[str, object]:
    return {
        "resourceType": "Encounter",
        "id": enc_id,
        "status": status,
        "class": {"system": ACT_CODE, "code": code},
        "subject": {"reference": "Patient/p-us"},
        "period": {"start": "2021-01-05T09:00:00-05:00", "end": "2021-01-05T09:30:00-05:00"},
    }


ENCOUNTERS = [
    _encounter("e-vr", "VR"),
    _encounter("e-hh", "HH"),
    _encounter("e-amb", "AMB"),
    _encounter("e-planned", "AMB", status="planned"),
]


def _request(rx_id: str, **extra: object) -> dict[str, object]:
    request: dict[str, object] = {
        "resourceType": "MedicationRequest",
        "id": rx_id,
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p-us"},
        "authoredOn": "2021-01-05",
    }
    return {**request, "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "314076"}]}, **extra}


REQUESTS = [
    _request("rx-order"),
    _request("rx-do-not-perform", doNotPerform=True),
    _request("rx-cancelled", status="cancelled"),
]
# the drug is the Medication of Medication.000.ndjson.gz
REQUESTS.append({k: v for k, v in _request("rx-by-reference").items() if k != "medicationCodeableConcept"})
REQUESTS[-1]["medicationReference"] = {"reference": "Medication/m1"}
STATEMENTS = [
    {
        "resourceType": "MedicationStatement",
        "id": f"ms-{status}",
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "314076"}]},
        "subject": {"reference": "Patient/p-us"},
        "effectiveDateTime": "2021-01-06",
    }
    for status in ("active", "intended")
]


def _observation(obs_id: str, code: str, **value: object) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/p-us"},
        "effectiveDateTime": "2021-01-05",
        **value,
    }


def _creatinine(value: float, comparator: str | None = None) -> dict[str, object]:
    quantity: dict[str, object] = {"value": value, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}
    if comparator:
        quantity["comparator"] = comparator
    return {"valueQuantity": quantity}


OBSERVATIONS = [
    # mCODE TNM clinical stage group: a result of its own (stage IIIB) and its T, N, M members
    _observation(
        "stage-group",
        "21908-9",
        valueCodeableConcept={"coding": [{"system": SNOMED, "code": "1222806003"}]},
        hasMember=[{"reference": "Observation/stage-t"}, {"reference": "Observation/stage-n"}],
    ),
    _observation("stage-t", "21905-5", valueCodeableConcept={"coding": [{"system": SNOMED, "code": "1228938002"}]}),
    # a vital signs panel only groups its members: no value of its own
    _observation("vitals", "85353-1", hasMember=[{"reference": "Observation/creat-lt"}]),
    _observation("creat-lt", "2160-0", **_creatinine(0.5, "<")),
    _observation("creat-ge", "2160-0", **_creatinine(12, ">=")),
    _observation("creat-plain", "2160-0", **_creatinine(1.1)),
    _observation(
        "bp",
        "85354-9",
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                "valueQuantity": {"value": 250, "comparator": ">", "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"},
            }
        ],
    ),
]
MEDICATION = {"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": RXNORM, "code": "314076"}]}}
PRACTITIONER = {"resourceType": "Practitioner", "id": "dr-1", "name": [{"family": "Osler"}], "gender": "male"}
DEVICE_REQUEST = {
    "resourceType": "DeviceRequest",
    "id": "dr-req",
    "status": "active",
    "intent": "order",
    "codeCodeableConcept": {"text": "wheelchair"},
    "subject": {"reference": "Patient/p-us"},
}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("us_core")
    for name, resources in {
        "Patient.000.ndjson": PATIENTS,
        "Encounter.000.ndjson": ENCOUNTERS,
        "MedicationRequest.000.ndjson": REQUESTS,
        "MedicationStatement.000.ndjson": STATEMENTS,
        "Observation.000.ndjson": OBSERVATIONS,
        "DeviceRequest.000.ndjson": [DEVICE_REQUEST],
        "Medication.000.ndjson.gz": [MEDICATION],
        "Practitioner.000.ndjson.gz": [PRACTITIONER],
    }.items():
        write_ndjson(folder, name, resources)
    out_db = folder / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", folder, out_db, vocabulary=EUNOMIA).balanced
    return out_db


def _reasons(db: Path, source: str) -> dict[object, object]:
    return dict(_rows(db, f"select source_row, reason from fedomop_quarantine where source = '{source}'"))


def test_requests_not_to_give_or_withdrawn_and_intended_statements_are_not_exposures(db: Path) -> None:
    """MedicationRequest.doNotPerform (a modifier: an order NOT to give the drug) and status cancelled (withdrawn
    before any administration) are no drug_exposure; nor is a MedicationStatement 'intended' (not taken yet), nor
    an Encounter 'planned' (not started). Each is excluded by rule with its reason."""
    loaded = _rows(
        db,
        "select l.source_row from drug_exposure d join fedomop_lineage l on l.omop_table = 'drug_exposure' "
        "and l.omop_id = d.drug_exposure_id order by 1",
    )
    assert loaded == [("ms-active",), ("rx-by-reference",), ("rx-order",)]
    assert _reasons(db, "medication_requests") == {
        "rx-do-not-perform": "excluded by rule: MedicationRequest.doNotPerform: an order NOT to give the drug",
        "rx-cancelled": "excluded by rule: MedicationRequest.status entered-in-error/draft/cancelled: never a "
        "prescription, or withdrawn before any of it was taken",
    }
    assert _reasons(db, "medication_statements") == {
        "ms-intended": "excluded by rule: MedicationStatement.status entered-in-error/not-taken/intended: the drug "
        "was not taken (intended: not yet)"
    }
    assert _reasons(db, "encounters") == {
        "e-planned": "excluded by rule: Encounter.status entered-in-error/cancelled/planned: the visit did not happen "
        "(planned: not yet)"
    }


def test_a_grouping_observation_with_a_value_of_its_own_loads_it(db: Path) -> None:
    """The stage group (LOINC 21908-9) has hasMember T/N/M *and* its own valueCodeableConcept: it is a result and
    loads (value_source_value = its code), beside its T member. The vital signs panel groups only: excluded."""
    rows = _rows(
        db,
        "select l.source_row, m.measurement_source_value, m.value_source_value from measurement m "
        "join fedomop_lineage l on l.omop_table = 'measurement' and l.omop_id = m.measurement_id "
        "where l.source_row like 'stage-%' order by 1",
    )
    assert rows == [("stage-group", "21908-9", "1222806003"), ("stage-t", "21905-5", "1228938002")]
    assert _reasons(db, "observations") == {
        "vitals": "excluded by rule: Observation grouping others (hasMember) and no value of its own: each member "
        "is its own Observation",
        "bp": "excluded by rule: Observation with components and no value of its own: each component is a "
        "measurement (source observation_components)",
    }


def test_quantity_comparator_becomes_the_operator_concept(db: Path) -> None:
    """valueQuantity.comparator -> measurement.operator_concept_id (OMOP Meas Value Operator: 4171756 '<',
    4171755 '>=', 4172704 '>'), for an Observation's value and a component's; no comparator: NULL (the CDM reads
    an omitted operator as '='). The number itself is value_as_number."""
    rows = _rows(
        db,
        "select l.source_row, m.value_as_number, m.operator_concept_id from measurement m "
        "join fedomop_lineage l on l.omop_table = 'measurement' and l.omop_id = m.measurement_id "
        "where l.source_row like 'creat-%' or l.source_row like 'bp/%' order by 1",
    )
    assert rows == [
        ("bp/component/0", 250.0, 4172704),
        ("creat-ge", 12.0, 4171755),
        ("creat-lt", 0.5, 4171756),
        ("creat-plain", 1.1, None),
    ]


def test_gzipped_medications_and_practitioners_are_read_and_no_other_type_is(db: Path) -> None:
    """Medication.000.ndjson.gz and Practitioner.000.ndjson.gz are read like every other gzipped file (the drug of
    rx-by-reference is m1's RxNorm code; the provider exists), and the device source does not read
    DeviceRequest.000.ndjson: that resource is accounted once, as a type the mapping does not map."""
    drug = _rows(
        db,
        "select d.drug_source_value from drug_exposure d join fedomop_lineage l on l.omop_table = 'drug_exposure' "
        "and l.omop_id = d.drug_exposure_id where l.source_row = 'rx-by-reference'",
    )
    assert drug == [("314076",)]
    assert _rows(db, "select provider_source_value, provider_name from provider") == [("dr-1", "Osler")]
    assert _reasons(db, "medications") == {
        "m1": "excluded by rule: a Medication is not an event: drug_exposure reads it through medicationReference"
    }
    assert _rows(db, "select source, reason from fedomop_quarantine where source_row = 'dr-req'") == [
        ("DeviceRequest (not mapped)", "resource type not mapped")
    ]


def test_a_death_without_a_date_is_quarantined_not_dropped(db: Path) -> None:
    """deceasedDateTime -> death; deceasedBoolean true with no date cannot be a death row (death_date NOT NULL):
    quarantined 'missing date' for the death table, so the death rule's count shows it (2 read, 1 loaded, 1
    quarantined); the person itself loads. deceasedBoolean false is no death."""
    deaths = _rows(
        db, "select p.person_source_value, cast(d.death_date as varchar) from death d join person p using (person_id)"
    )
    assert deaths == [("p-us", "2022-03-04")]
    assert _rows(
        db, "select source_row, field, reason, omop_table from fedomop_quarantine where source = 'patients'"
    ) == [("p-dead", "deceased", "missing date", "death")]
    assert _rows(
        db,
        "select source_count, loaded, quarantined from fedomop_reconciliation "
        "where source = 'patients' and omop_table = 'death'",
    ) == [(2, 1, 1)]
    assert _rows(db, "select count(*) from person") == [(3,)]


def test_virtual_and_home_health_encounters_get_their_visit_concepts(db: Path) -> None:
    """Encounter.class (v3 ActCode) as the IG's ConceptMap EncounterClass maps it: VR -> 722455 Telehealth,
    HH -> 581476 Home Visit; AMB stays 9202 Outpatient Visit."""
    rows = _rows(db, "select visit_source_value, visit_concept_id from visit_occurrence order by 1")
    assert rows == [("e-amb", 9202), ("e-hh", 581476), ("e-vr", 722455)]


def test_us_core_race_and_ethnicity_in_the_standard_mapping(db: Path) -> None:
    """US Core race/ethnicity ombCategory (urn:oid:2.16.840.1.113883.6.238): 2054-5 -> 8516 Black or African
    American, 2135-2 -> 38003563 Hispanic or Latino, the codes kept as source values; a Patient without the
    extensions keeps 0."""
    rows = _rows(
        db,
        "select person_source_value, race_concept_id, race_source_value, ethnicity_concept_id, "
        "ethnicity_source_value from person order by 1",
    )
    assert rows == [
        ("p-alive", 0, None, 0, None),
        ("p-dead", 0, None, 0, None),
        ("p-us", 8516, "2054-5", 38003563, "2135-2"),
    ]

"""The HL7 FHIR-to-OMOP rules fedomop follows (docs/mapping.md, "IG rule -> fedomop behaviour -> test").

Each test writes a small bulk export of valid FHIR R4 and maps it with a shipped mapping; expected values are
worked out by hand from the rule stated in the test's docstring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedomop.harmonize.run import run_mapping
from tests.conftest import EUNOMIA, MAPPINGS, SHARED
from tests.harmonize.fhir_export import query_rows as _rows
from tests.harmonize.fhir_export import write_ndjson as _write

PATIENTS = [
    {"resourceType": "Patient", "id": "year-only", "gender": "female", "birthDate": "1960"},
    {"resourceType": "Patient", "id": "year-month", "gender": "male", "birthDate": "1961-07"},
    {"resourceType": "Patient", "id": "full", "gender": "male", "birthDate": "1970-02-03"},
]
ENCOUNTERS = [
    # ongoing: no period.end; the patient has a later condition (2021-05-02), so the visit lasts until then
    {
        "resourceType": "Encounter",
        "id": "open",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/year-only"},
        "period": {"start": "2021-04-30T23:30:00-05:00"},
    },
    {
        "resourceType": "Encounter",
        "id": "closed",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/year-month"},
        "period": {"start": "2020-01-01T00:30:00+10:00", "end": "2020-01-01T01:00:00+10:00"},
    },
]
CONDITIONS = [
    {
        "resourceType": "Condition",
        "id": "later",
        "subject": {"reference": "Patient/year-only"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "onsetDateTime": "2021-05-02",
    },
    {
        "resourceType": "Condition",
        "id": "month-onset",
        "subject": {"reference": "Patient/year-month"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "onsetDateTime": "2019-03",
    },
    {
        "resourceType": "Condition",
        "id": "year-onset",
        "subject": {"reference": "Patient/full"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
        "onsetDateTime": "2018",
    },
]


@pytest.fixture(scope="module")
def dates_db(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("fhir_dates")
    _write(folder, "Patient.000.ndjson", PATIENTS)
    _write(folder, "Encounter.000.ndjson", ENCOUNTERS)
    _write(folder, "Condition.000.ndjson", CONDITIONS)
    db = folder / "out.duckdb"
    report = run_mapping(MAPPINGS / "synthea_bulk.yaml", folder, db, vocabulary=EUNOMIA)
    assert report.balanced
    return db


def test_partial_birth_dates_give_a_person_with_only_the_parts_given(dates_db: Path) -> None:
    """FHIR ``date`` may be YYYY or YYYY-MM; OMOP requires only year_of_birth, so month/day stay NULL."""
    rows = _rows(
        dates_db,
        "select person_source_value, year_of_birth, month_of_birth, day_of_birth, birth_datetime "
        "from person order by 1",
    )
    assert [r[:4] for r in rows] == [
        ("full", 1970, 2, 3),
        ("year-month", 1961, 7, None),
        ("year-only", 1960, None, None),
    ]
    assert [r[4] is None for r in rows] == [False, True, True]
    assert _rows(dates_db, "select count(*) from fedomop_quarantine where source = 'patients'") == [(0,)]


def test_partial_event_dates_follow_themis(dates_db: Path) -> None:
    """YYYY-MM -> first of the month; YYYY -> 15 June (OHDSI THEMIS #93); the patient's events all load."""
    rows = _rows(
        dates_db,
        "select condition_source_value, cast(condition_start_date as varchar) from condition_occurrence "
        "join person using (person_id) order by person_source_value",
    )
    assert sorted(r[1] for r in rows) == ["2018-06-15", "2019-03-01", "2021-05-02"]


def test_time_zone_offset_keeps_the_local_wall_clock(dates_db: Path) -> None:
    """2021-04-30T23:30:00-05:00 stays on 30 April 23:30 (local time kept, no shift to UTC's 1 May)."""
    rows = _rows(
        dates_db,
        "select visit_source_value, cast(visit_start_date as varchar), cast(visit_start_datetime as varchar), "
        "cast(visit_end_datetime as varchar) from visit_occurrence order by 1",
    )
    assert rows[0] == ("closed", "2020-01-01", "2020-01-01 00:30:00", "2020-01-01 01:00:00")
    assert rows[1][:3] == ("open", "2021-04-30", "2021-04-30 23:30:00")


def test_ongoing_encounter_ends_at_the_persons_last_record(dates_db: Path) -> None:
    """No period.end: visit_end_date (NOT NULL) = the person's last recorded date (2021-05-02, the condition),
    not the start; visit_end_datetime stays NULL to show it was open."""
    rows = _rows(
        dates_db,
        "select cast(visit_end_date as varchar), visit_end_datetime from visit_occurrence "
        "where visit_source_value = 'open'",
    )
    assert rows == [("2021-05-02", None)]


HL7_NDJSON = SHARED / "fhir" / "hl7-r4-examples" / "ndjson"


@pytest.fixture(scope="module")
def hl7_db(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    db = tmp_path_factory.mktemp("hl7") / "hl7.duckdb"
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", HL7_NDJSON, db, vocabulary=EUNOMIA)
    assert report.balanced
    return db


def _status_counts(resource_type: str, element: str, codes: set[str]) -> int:
    """Resources of the HL7 examples whose status element (a code, or a CodeableConcept's first code) is in codes."""
    count = 0
    for line in (HL7_NDJSON / f"{resource_type}.ndjson").read_text().splitlines():
        value = json.loads(line).get(element)
        if isinstance(value, dict):
            value = (value.get("coding") or [{}])[0].get("code")
        count += value in codes
    return count


@pytest.mark.parametrize(
    ("source", "resource_type", "element", "codes"),
    [
        ("conditions", "Condition", "verificationStatus", {"entered-in-error", "refuted", "differential"}),
        ("observations", "Observation", "status", {"entered-in-error", "cancelled"}),
        ("procedures", "Procedure", "status", {"entered-in-error", "not-done", "preparation"}),
        ("immunizations", "Immunization", "status", {"entered-in-error", "not-done"}),
        ("medication_statements", "MedicationStatement", "status", {"entered-in-error", "not-taken", "intended"}),
        ("allergies", "AllergyIntolerance", "verificationStatus", {"entered-in-error", "refuted"}),
    ],
)
def test_status_filters_exclude_by_rule_and_account_for_every_record(
    hl7_db: Path, source: str, resource_type: str, element: str, codes: set[str]
) -> None:
    """IG status rules: entered-in-error, not-done, refuted, differential ... never become events; each such
    record is "excluded by rule" with its reason, and read = loaded + excluded + quarantined."""
    expected_excluded = _status_counts(resource_type, element, codes)
    read = sum(1 for line in (HL7_NDJSON / f"{resource_type}.ndjson").read_text().splitlines() if line.strip())
    excluded = _rows(
        hl7_db,
        f"select count(distinct source_row) from fedomop_quarantine where source = '{source}' "
        "and reason like 'excluded by rule: %'",
    )[0][0]
    quarantined = _rows(
        hl7_db,
        f"select count(distinct source_row) from fedomop_quarantine where source = '{source}' "
        "and reason not like 'excluded by rule: %'",
    )[0][0]
    loaded = _rows(hl7_db, f"select count(distinct source_row) from fedomop_lineage where source = '{source}'")[0][0]
    recon = _rows(
        hl7_db,
        f"select source_count, loaded, quarantined from fedomop_reconciliation "
        f"where source = '{source}' and omop_table = '*'",
    )
    by_status = _rows(
        hl7_db,
        f"select count(distinct source_row) from fedomop_quarantine where source = '{source}' "
        f"and reason like 'excluded by rule: {resource_type}.{element} %'",
    )[0][0]
    assert by_status == expected_excluded
    assert read == loaded + excluded + quarantined
    assert recon == [(read, loaded, excluded + quarantined)]


def test_excluded_records_never_reach_an_event_table(hl7_db: Path) -> None:
    """The not-done Procedure and the refuted/differential Conditions of the examples are nowhere in OMOP."""
    rows = _rows(
        hl7_db,
        "select q.source_row from fedomop_quarantine q join fedomop_lineage l using (source, source_row) "
        "where q.reason like 'excluded by rule: %'",
    )
    assert rows == []


def _measurements(db: Path, row_like: str) -> list[tuple[object, ...]]:
    return _rows(
        db,
        "select l.source_row, m.measurement_source_value, m.value_as_number, m.unit_source_value, "
        "m.unit_concept_id, m.value_source_value, m.range_low, m.range_high from measurement m "
        "join fedomop_lineage l on l.omop_table = 'measurement' and l.omop_id = m.measurement_id "
        f"where l.source_row like '{row_like}' order by 1",
    )


def test_blood_pressure_panel_gives_one_measurement_per_component(hl7_db: Path) -> None:
    """IG: each Observation.component is its own measurement, the panel kept in lineage (<id>/component/<i>).
    The HL7 example: systolic 8480-6 = 107 mm[Hg], diastolic 8462-4 = 60 mm[Hg]; UCUM mm[Hg] is concept 8876."""
    assert _measurements(hl7_db, "blood-pressure/%") == [
        ("blood-pressure/component/0", "8480-6", 107.0, "mm[Hg]", 8876, "107.0", None, None),
        ("blood-pressure/component/1", "8462-4", 60.0, "mm[Hg]", 8876, "60.0", None, None),
    ]
    panel = _rows(hl7_db, "select reason from fedomop_quarantine where source_row = 'blood-pressure'")
    assert panel == [
        (
            "excluded by rule: Observation with components and no value of its own: each component is a "
            "measurement (source observation_components)",
        )
    ]


def test_a_panel_with_a_result_of_its_own_loads_it_beside_its_components(hl7_db: Path) -> None:
    """HL7's glasgow example: Glasgow coma score total 9269-2 = 13 {score}, with three coded components (eye
    9268-4 = 5, verbal 9270-0 = 4, motor 9267-6 = 4). The total is a result, not a container: four rows."""
    rows = _measurements(hl7_db, "glasgow%")
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [
        ("glasgow", "9269-2", 13.0, "{score}", "13.0"),
        ("glasgow/component/0", "9268-4", None, None, "5"),
        ("glasgow/component/1", "9270-0", None, None, "4"),
        ("glasgow/component/2", "9267-6", None, None, "4"),
    ]
    assert _rows(hl7_db, "select reason from fedomop_quarantine where source_row = 'glasgow'") == []


def test_data_absent_component_keeps_its_reason_and_no_number(hl7_db: Path) -> None:
    """blood-pressure-dar: the diastolic component has dataAbsentReason not-performed and no value."""
    rows = _measurements(hl7_db, "blood-pressure-dar/%")
    assert [(r[1], r[2], r[5]) for r in rows] == [("8480-6", 107.0, "107.0"), ("8462-4", None, "not-performed")]


def test_coded_values_and_reference_ranges(hl7_db: Path) -> None:
    """valueCodeableConcept -> value_source_value (the code); referenceRange low/high -> range_low/high.
    satO2 example: 95 % with range 90-99."""
    assert _measurements(hl7_db, "satO2") == [("satO2", "2708-6", 95.0, "%", 8554, "95.0", 90.0, 99.0)]
    # gcs-qa has three ranges (high 8 / 9-12 / low 13): both bounds come from the first one, never low 9 with high 8
    [gcs] = _measurements(hl7_db, "gcs-qa")
    assert (gcs[6], gcs[7]) == (None, 8.0)
    # the Apgar examples' subject is '#newborn', a Patient contained in each Observation: not the export's
    # Patient/newborn (another person, born a year later), so its 5 components are quarantined, never loaded
    assert _measurements(hl7_db, "%-apgar-score/%") == []
    reasons = _rows(
        hl7_db,
        "select distinct reason from fedomop_quarantine where source_row like '1minute-apgar-score/component/%'",
    )
    assert reasons == [("unknown person: a resource contained in the record (#id), not a person of the extract",)]


MED_EXPORT = {
    "Patient.ndjson": [{"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950"}],
    "MedicationRequest.ndjson": [
        {
            "resourceType": "MedicationRequest",
            "id": "rx-contained",
            "status": "active",
            "intent": "order",
            "contained": [
                {
                    "resourceType": "Medication",
                    "id": "med",
                    "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076"}]},
                }
            ],
            "medicationReference": {"reference": "#med"},
            "subject": {"reference": "Patient/p1"},
            "authoredOn": "2020-03-04",
            "dosageInstruction": [
                {
                    "text": "1 tablet daily",
                    "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]},
                }
            ],
            "dispenseRequest": {
                "quantity": {"value": 30, "unit": "tablet"},
                "expectedSupplyDuration": {
                    "value": 30,
                    "unit": "days",
                    "system": "http://unitsofmeasure.org",
                    "code": "d",
                },
                "numberOfRepeatsAllowed": 2,
            },
        },
        {
            "resourceType": "MedicationRequest",
            "id": "rx-proposal",
            "status": "active",
            "intent": "proposal",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076"}]
            },
            "subject": {"reference": "Patient/p1"},
            "authoredOn": "2020-03-05",
        },
    ],
}


def _map_export(folder: Path, files: dict[str, list[dict[str, object]]]) -> Path:
    """Write the NDJSON files, map them with the standard FHIR mapping and Eunomia; the (balanced) database."""
    for name, resources in files.items():
        _write(folder, name, resources)
    db = folder / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", folder, db, vocabulary=EUNOMIA).balanced
    return db


def test_contained_medication_dose_quantity_days_supply_route(tmp_path: Path, shared_dir: Path) -> None:
    """medicationReference "#med" resolves to the contained Medication's RxNorm code; quantity, days supply,
    refills, route and sig are mapped; intent=proposal is excluded (suggested, never ordered)."""
    db = _map_export(tmp_path, MED_EXPORT)
    rows = _rows(
        db,
        "select drug_source_value, drug_source_concept_id <> 0, quantity, days_supply, refills, "
        "route_source_value, sig from drug_exposure",
    )
    assert rows == [("314076", True, 30.0, 30, 2, "26643006", "1 tablet daily")]
    reasons = _rows(db, "select source_row, reason from fedomop_quarantine")
    assert reasons == [
        ("rx-proposal", "excluded by rule: MedicationRequest.intent proposal/plan: suggested, not ordered")
    ]


def test_a_drug_without_a_code_keeps_its_name_or_is_quarantined_with_its_reference(tmp_path: Path) -> None:
    """A medicationReference the export does not hold: with the reference's display, the exposure loads as
    concept 0 with that name as drug_source_value (as a free-text medicationCodeableConcept does); with neither
    code nor name, it is quarantined "missing code", the value being the reference (Medication/m404)."""
    base = {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p1"}, "authoredOn": "2020-03-04"}  # fmt: skip
    requests = [
        {**base, "id": "rx-display", "medicationReference": {"reference": "Medication/m404", "display": "Aspirin"}},
        {**base, "id": "rx-text", "medicationCodeableConcept": {"text": "Little pink pill"}},
        {**base, "id": "rx-nothing", "medicationReference": {"reference": "Medication/m404"}},
    ]
    db = _map_export(tmp_path, {"Patient.ndjson": MED_EXPORT["Patient.ndjson"], "MedicationRequest.ndjson": requests})
    loaded = _rows(
        db,
        "select l.source_row, d.drug_concept_id, d.drug_source_value from drug_exposure d join fedomop_lineage l "
        "on l.omop_table = 'drug_exposure' and l.omop_id = d.drug_exposure_id order by 1",
    )
    assert loaded == [("rx-display", 0, "Aspirin"), ("rx-text", 0, "Little pink pill")]
    assert _rows(db, "select source_row, field, value, reason from fedomop_quarantine") == [
        (
            "rx-nothing",
            "code",
            "m404",
            "missing code: neither the record nor the medications record it refers to (medication) gives one",
        )
    ]


GROUPING = (
    "excluded by rule: Observation grouping others (hasMember) and no value of its own: each member is its own "
    "Observation"
)


def test_grouping_panels_and_waveforms_are_excluded_and_valueless_results_quarantined(hl7_db: Path) -> None:
    """vitals-panel and bgpanel only group other Observations (hasMember): each member is its own result, the
    group is excluded by rule. The ekg components carry valueSampledData (no CDM column): excluded by rule.
    example-genetics-3 has no value[x], no dataAbsentReason and no component (US Core us-core-2 requires one):
    quarantined "missing value". date-lastmp's valueDateTime is a value: it is held back only because its subject,
    Patient/pat2, was itself quarantined (no birthDate, so no year_of_birth), and says so."""
    reasons = dict(
        _rows(
            hl7_db,
            "select source_row, reason from fedomop_quarantine where source_row in "
            "('vitals-panel', 'bgpanel', 'ekg/component/0', 'example-genetics-3', 'date-lastmp')",
        )
    )
    assert reasons == {
        "vitals-panel": GROUPING,
        "bgpanel": GROUPING,
        "ekg/component/0": "excluded by rule: valueSampledData (a waveform): the CDM has no column for sampled data",
        "example-genetics-3": "missing value",
        "date-lastmp": "person quarantined: missing required OMOP field(s): year_of_birth",
    }

"""medicationReference to a Medication resource outside the referring resource (IG: the drug is the Medication's
code): in the same bulk export (``Medication/<id>``) or in the same Bundle (``urn:uuid`` via entry.fullUrl).
Expected values are read off the resources written here."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fedomop.harmonize.run import run_mapping
from tests.conftest import EUNOMIA, MAPPINGS
from tests.harmonize.fhir_export import query_rows as _rows

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


def _drugs(db: Path) -> list[tuple[object, ...]]:
    return _rows(
        db,
        "select l.source_row, d.drug_source_value, d.drug_source_concept_id <> 0, d.drug_concept_id <> 0 "
        "from drug_exposure d join fedomop_lineage l on l.omop_table = 'drug_exposure' "
        "and l.omop_id = d.drug_exposure_id order by 1",
    )


def test_reference_to_a_medication_in_the_same_export(tmp_path: Path, shared_dir: Path) -> None:
    """rx-1 names Medication/m1 (RxNorm 314076, in Medication.ndjson); rx-2 names a Medication the export
    lacks and gives no name for it: quarantined "missing code" with the reference (an exposure to an unnamed drug
    is no data; the fix is to export the Medication). The Medication itself is accounted "excluded by rule"."""
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
    assert _drugs(db) == [("rx-1", "314076", True, True)]
    assert _rows(db, "select source, source_row, value, reason from fedomop_quarantine order by 1") == [
        (
            "medication_requests",
            "rx-2",
            "gone",
            "missing code: neither the record nor the medications record it refers to (medication) gives one",
        ),
        (
            "medications",
            "m1",
            "m1",
            "excluded by rule: a Medication is not an event: drug_exposure reads it through medicationReference",
        ),
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


def _vocabulary_with(tmp_path: Path, rows: list[str], domains: list[str], classes: list[str]) -> Path:
    """The sample vocabulary plus the given standard concepts (tab-separated CONCEPT rows)."""
    folder = tmp_path / "vocabulary"
    folder.mkdir()
    for path in (MAPPINGS.parent / "sample_data" / "vocabulary").glob("*.csv"):
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    for name, extra in (("CONCEPT.csv", rows), ("DOMAIN.csv", domains), ("CONCEPT_CLASS.csv", classes)):
        with (folder / name).open("a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in extra))
    return folder


def test_route_and_coded_value_become_standard_concepts(tmp_path: Path) -> None:
    """IG: dosage route -> route_concept_id, valueCodeableConcept -> value_as_concept_id, both through the
    vocabulary. SNOMED 26643006 is OMOP 4132161 "Oral route" (domain Route); SNOMED 260385009 is OMOP 9189
    "Negative" (domain Meas Value); both are added to the sample vocabulary here. A route code the vocabulary
    lacks gives 0, no route gives NULL."""
    vocabulary = _vocabulary_with(
        tmp_path,
        [
            "4132161\tOral route\tRoute\tSNOMED\tQualifier Value\tS\t26643006\t19700101\t20991231\t",
            "9189\tNegative\tMeas Value\tSNOMED\tQualifier Value\tS\t260385009\t19700101\t20991231\t",
        ],
        ["Route\tRoute\t0", "Meas Value\tMeas Value\t0"],
        ["Qualifier Value\tQualifier Value\t0"],
    )
    snomed = "http://snomed.info/sct"
    drug = {"coding": [{"system": RXNORM, "code": "199224"}]}  # anastrozole 1 MG Oral Tablet (sample vocabulary)

    def request(rx_id: str, route: dict[str, object] | None) -> dict[str, object]:
        rx: dict[str, object] = {**_request(rx_id, "unused"), "medicationCodeableConcept": drug}
        del rx["medicationReference"]
        if route is not None:
            rx["dosageInstruction"] = [{"route": route}]
        return rx

    export = {
        "Patient.ndjson": [PATIENT],
        "MedicationRequest.ndjson": [
            request("oral", {"coding": [{"system": snomed, "code": "26643006"}]}),
            request("unknown-route", {"coding": [{"system": snomed, "code": "999999999"}]}),
            request("no-route", None),
        ],
        "Observation.ndjson": [
            {
                "resourceType": "Observation",
                "id": "coded",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": "2020-03-04",
                "valueCodeableConcept": {"coding": [{"system": snomed, "code": "260385009"}]},
            }
        ],
    }
    for name, resources in export.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in resources))
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=vocabulary).balanced
    routes = _rows(
        db,
        "select l.source_row, d.route_source_value, d.route_concept_id from drug_exposure d "
        "join fedomop_lineage l on l.omop_table = 'drug_exposure' and l.omop_id = d.drug_exposure_id order by 1",
    )
    assert routes == [("no-route", None, None), ("oral", "26643006", 4132161), ("unknown-route", "999999999", 0)]
    assert _rows(db, "select value_as_concept_id, value_source_value from measurement") == [(9189, "260385009")]


def test_lookup_holds_across_person_chunks(tmp_path: Path) -> None:
    """Mapped in 2 person-disjoint chunks, the Medication (no person: read with the first chunk) still resolves
    every request, including those of the second chunk."""
    requests = [_request(f"rx{i}", "Medication/m1", patient=f"Patient/p{i}") for i in range(6)]
    export = {
        "Patient.ndjson": [{**PATIENT, "id": f"p{i}"} for i in range(6)],
        "Medication.ndjson": [{**MEDICATION, "code": {"coding": [{"system": RXNORM, "code": "199224"}]}}],
        "MedicationRequest.ndjson": requests,
    }
    for name, resources in export.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in resources))
    db = tmp_path / "out.duckdb"
    vocabulary = MAPPINGS.parent / "sample_data" / "vocabulary"
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=vocabulary, chunks=2)
    assert report.balanced and report.chunks == 2
    # RxNorm 199224 is "anastrozole 1 MG Oral Tablet", concept 1348267 in the sample vocabulary
    assert _rows(db, "select drug_source_value, drug_concept_id, count(*) from drug_exposure group by all") == [
        ("199224", 1348267, 6)
    ]


def test_a_coded_value_follows_its_row_routed_to_observation(tmp_path: Path) -> None:
    """An Observation whose code is in the Observation domain is routed to the observation table; its
    valueCodeableConcept still becomes value_as_concept_id there (the column exists in both tables). The two
    concepts are test concepts added to the sample vocabulary (ids above 2,000,000,000, as site concepts are)."""
    vocabulary = _vocabulary_with(
        tmp_path,
        [
            "2000000101\tSmoking status (test)\tObservation\tLOINC\tClinical Observation\tS\t72166-2\t19700101\t20991231\t",
            "2000000102\tEx-smoker (test)\tObservation\tSNOMED\tClinical Finding\tS\t8517006\t19700101\t20991231\t",
        ],
        ["Observation\tObservation\t0"],
        [],
    )
    observation = {
        "resourceType": "Observation",
        "id": "smoking",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72166-2"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2020-03-04",
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "8517006"}]},
    }
    for name, resources in {"Patient.ndjson": [PATIENT], "Observation.ndjson": [observation]}.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in resources))
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=vocabulary).balanced
    assert _rows(db, "select observation_concept_id, value_as_concept_id, value_source_value from observation") == [
        (2000000101, 2000000102, "8517006")
    ]
    assert _rows(db, "select count(*) from measurement") == [(0,)]


def test_end_date_without_one_in_the_source_is_start_plus_days_supply_minus_one(tmp_path: Path) -> None:
    """THEMIS (drug_exposure_end_date not given explicitly): start + days_supply - 1, else the start date; a
    given end is kept. Hand-computed: 2020-03-04 + 30 - 1 days = 2020-04-02 (March has 31 days); 2020-02-20 +
    10 - 1 = 2020-02-29 (leap year); a 1-day supply ends on its start; a supply of 0 or none: the start."""
    drug = {"coding": [{"system": RXNORM, "code": "199224"}]}

    def request(rx_id: str, authored: str, supply: float | None, end: str | None = None) -> dict[str, object]:
        rx: dict[str, object] = {**_request(rx_id, "unused"), "medicationCodeableConcept": drug}
        del rx["medicationReference"]
        rx["authoredOn"] = authored
        dispense: dict[str, object] = {}
        if supply is not None:
            dispense["expectedSupplyDuration"] = {"value": supply, "unit": "days", "code": "d"}
        if end is not None:
            dispense["validityPeriod"] = {"start": authored, "end": end}
        if dispense:
            rx["dispenseRequest"] = dispense
        return rx

    requests = [
        request("a-30", "2020-03-04", 30),
        request("b-leap", "2020-02-20", 10),
        request("c-one", "2021-07-01", 1),
        request("d-zero", "2021-07-01", 0),
        request("e-none", "2021-07-01", None),
        request("f-given", "2020-03-04", 30, end="2020-03-10"),
    ]
    (tmp_path / "Patient.ndjson").write_text(json.dumps(PATIENT) + "\n")
    (tmp_path / "MedicationRequest.ndjson").write_text("".join(json.dumps(r) + "\n" for r in requests))
    db = tmp_path / "out.duckdb"
    vocabulary = MAPPINGS.parent / "sample_data" / "vocabulary"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=vocabulary).balanced
    rows = _rows(
        db,
        "select l.source_row, d.days_supply, strftime(d.drug_exposure_start_date, '%Y-%m-%d'), "
        "strftime(d.drug_exposure_end_date, '%Y-%m-%d') from drug_exposure d join fedomop_lineage l "
        "on l.omop_table = 'drug_exposure' and l.omop_id = d.drug_exposure_id order by 1",
    )
    assert rows == [
        ("a-30", 30, "2020-03-04", "2020-04-02"),
        ("b-leap", 10, "2020-02-20", "2020-02-29"),
        ("c-one", 1, "2021-07-01", "2021-07-01"),
        ("d-zero", 0, "2021-07-01", "2021-07-01"),
        ("e-none", None, "2021-07-01", "2021-07-01"),
        ("f-given", 30, "2020-03-04", "2020-03-10"),
    ]


def test_a_string_value_routed_to_observation_fills_value_as_string(tmp_path: Path, shared_dir: Path) -> None:
    """IG: Observation.valueString -> observation.value_as_string. The HL7 example "trachcare" (SNOMED 410211008,
    a test concept in the Observation domain here) is routed from the measurement rule to observation; its
    string lands in value_as_string (57 characters: fits varchar(60)) and still in value_source_value. The
    measurement table, which has no value_as_string, is empty."""
    vocabulary = _vocabulary_with(
        tmp_path,
        [
            "2000000201\tTracheostomy care (test)\tObservation\tSNOMED\tClinical Finding\tS\t410211008\t19700101\t20991231\t"
        ],
        ["Observation\tObservation\t0"],
        [],
    )
    examples = shared_dir / "fhir" / "hl7-r4-examples" / "ndjson" / "Observation.ndjson"
    trachcare = next(line for line in examples.read_text().splitlines() if '"id":"trachcare"' in line)
    data = tmp_path / "data"
    data.mkdir()
    (data / "Patient.ndjson").write_text(json.dumps({**PATIENT, "id": "infant"}) + "\n")
    (data / "Observation.ndjson").write_text(trachcare + "\n")
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", data, db, vocabulary=vocabulary).balanced
    text = "Mother is trained to change her child's tracheostomy tube"
    rows = _rows(
        db,
        "select observation_concept_id, strftime(observation_date, '%Y-%m-%d'), value_as_string, "
        "value_source_value, value_as_number from observation",
    )
    assert len(rows) == 1
    concept, day, as_string, source_value, number = rows[0]
    assert (concept, day, as_string, number) == (2000000201, "2018-03-11", text, None)
    assert source_value is not None and source_value[:20] == text[:20]  # varchar(50): its recorded short form
    assert _rows(db, "select count(*) from measurement") == [(0,)]

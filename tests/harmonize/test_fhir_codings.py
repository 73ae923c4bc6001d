"""A CodeableConcept with several codings resolves through the coding that maps to a standard concept.

US Core / mCODE resources often carry ICD-10-CM first and SNOMED second (or the other way round). The standard
mapping (mappings/fhir_r4.yaml) gives every coded rule ``concept: {codings: ...}``: the first coding, in document
order, that maps to a standard concept gives the concept, the source concept and the source value; when none maps,
the first coding does (concept 0). Hand-written R4 resources, mapped with the Eunomia vocabulary, which has no
ICD10CM concept at all (so every ICD-10-CM code below is absent from it). Concept ids looked up by hand in
shared/omop/eunomia-synthea27nj/CONCEPT.csv and CONCEPT_RELATIONSHIP.csv:

- SNOMED 44054006 -> 201826 Type 2 diabetes mellitus (standard, Condition)
- SNOMED 59621000 -> 320128 Essential hypertension (standard, Condition)
- SNOMED 40055000 -> 257012 Chronic sinusitis (standard, Condition)
- SNOMED 275272006 (4166590, non-standard) Maps to 4132546 Traumatic brain injury (Condition)
- RxNorm 314076 -> 19080128 lisinopril 10 MG Oral Tablet; LOINC 2160-0 -> 3016723 Creatinine; SNOMED 10509002 -> 260139
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedomop.harmonize.ground.errors import MappingError
from fedomop.harmonize.run import run_mapping
from fedomop.harmonize.sources.fhir.path import compile_path
from tests.conftest import EUNOMIA, MAPPINGS
from tests.harmonize.fhir_export import query_rows as _rows
from tests.harmonize.fhir_export import write_ndjson

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
NDC = "http://hl7.org/fhir/sid/ndc"
LOCAL = "http://example.org/fhir/CodeSystem/local-diagnoses"  # in no fhir_systems


def _coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def _condition(cid: str, *codings: dict[str, str]) -> dict[str, object]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "code": {"coding": list(codings), "text": "diagnosis"},
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2021-03-04",
    }


CONDITIONS = [
    _condition("icd-first", _coding(ICD10CM, "E11.9"), _coding(SNOMED, "44054006")),
    _condition("snomed-first", _coding(SNOMED, "44054006"), _coding(ICD10CM, "E11.9")),
    _condition("none-maps", _coding(ICD10CM, "E11.9"), _coding(ICD10CM, "I10")),
    _condition("unknown-system", _coding(LOCAL, "HTN-1"), _coding(SNOMED, "59621000")),
    _condition("maps-to", _coding(ICD10CM, "S06.9X0A"), _coding(SNOMED, "275272006")),
    _condition("single", _coding(SNOMED, "40055000")),
]
OBSERVATION = {
    "resourceType": "Observation",
    "id": "obs",
    "status": "final",
    "code": {"coding": [_coding(LOCAL, "CREA"), _coding(LOINC, "2160-0")]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2021-03-04",
    "valueCodeableConcept": {"coding": [_coding(LOCAL, "POS"), _coding(SNOMED, "10509002")]},
}
STATEMENT = {
    "resourceType": "MedicationStatement",
    "id": "ms",
    "status": "active",
    "medicationCodeableConcept": {"coding": [_coding(NDC, "00000-0000-00"), _coding(RXNORM, "314076")]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2021-03-04",
}
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-04-01"}


def _export(folder: Path) -> Path:
    files = {
        "Patient.000.ndjson": [PATIENT],
        "Condition.000.ndjson": CONDITIONS,
        "Observation.000.ndjson": [OBSERVATION],
        "MedicationStatement.000.ndjson": [STATEMENT],
    }
    for name, resources in files.items():
        write_ndjson(folder, name, resources)
    return folder


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    return _export(tmp_path_factory.mktemp("codings"))


@pytest.fixture(scope="module")
def db(export: Path) -> Path:
    out = export / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", export, out, vocabulary=EUNOMIA).balanced
    return out


CONDITION_ROWS = (
    "select l.source_row, c.condition_concept_id, c.condition_source_concept_id, c.condition_source_value "
    "from condition_occurrence c join fedomop_lineage l "
    "on l.omop_table = 'condition_occurrence' and l.omop_id = c.condition_occurrence_id order by 1"
)
EXPECTED_CONDITIONS = [
    ("icd-first", 201826, 201826, "44054006"),  # ICD-10-CM absent from the vocabulary: the SNOMED coding maps
    ("maps-to", 4132546, 4166590, "275272006"),  # a non-standard SNOMED code through "Maps to"
    ("none-maps", 0, 0, "E11.9"),  # no coding maps: the first coding's code, concept 0
    ("single", 257012, 257012, "40055000"),  # one coding: as always
    ("snomed-first", 201826, 201826, "44054006"),
    ("unknown-system", 320128, 320128, "59621000"),  # a system no fhir_systems entry names maps nothing
]


def test_a_condition_takes_the_coding_that_maps_whatever_its_place(db: Path) -> None:
    """ICD-10-CM (absent from the vocabulary) then SNOMED, or SNOMED first: the SNOMED concept, source value and
    source concept; none mapping: concept 0 with the first coding's code; a coding of an unknown system is
    passed over; one record, one row."""
    assert _rows(db, CONDITION_ROWS) == EXPECTED_CONDITIONS


def test_observation_code_and_coded_value_take_the_coding_that_maps(db: Path) -> None:
    """Observation.code (a local code, then LOINC) and valueCodeableConcept (local, then SNOMED): the LOINC
    measurement concept and the SNOMED value concept. value_source_value stays the first coding's code (the
    ``text`` column, as for a single coding)."""
    rows = _rows(
        db,
        "select measurement_concept_id, measurement_source_concept_id, measurement_source_value, "
        "value_as_concept_id from measurement",
    )
    assert rows == [(3016723, 3016723, "2160-0", 260139)]


def test_a_drug_takes_the_rxnorm_coding_after_an_unknown_ndc(db: Path) -> None:
    rows = _rows(db, "select drug_concept_id, drug_source_concept_id, drug_source_value from drug_exposure")
    assert rows == [(19080128, 19080128, "314076")]


def test_coverage_counts_the_coding_used(db: Path) -> None:
    """Concept coverage reads the loaded rows: the five conditions that map count as mapped, under the
    vocabulary of the coding used; the one that does not is the unknown ICD-10-CM code."""
    report = _rows(
        db,
        "select condition_source_value, condition_concept_id <> 0 from condition_occurrence order by 1",
    )
    assert sum(1 for _code, mapped in report if mapped) == 5
    assert [code for code, mapped in report if not mapped] == ["E11.9"]


def test_quarantine_mode_quarantines_only_records_no_coding_maps(export: Path, tmp_path: Path) -> None:
    """on_unmapped: quarantine: a record is unmapped only when none of its codings maps; it is quarantined with
    its first coding ("ICD10CM E11.9"), the others load."""
    mapping = tmp_path / "site.yaml"
    mapping.write_text(
        f"include: [{MAPPINGS / 'fhir_r4.yaml'}]\noverride:\n  on_unmapped: quarantine\n", encoding="utf-8"
    )
    out = tmp_path / "q.duckdb"
    assert run_mapping(mapping, export, out, vocabulary=EUNOMIA).balanced
    assert [r[0] for r in _rows(out, CONDITION_ROWS)] == [
        "icd-first",
        "maps-to",
        "single",
        "snomed-first",
        "unknown-system",
    ]
    assert _rows(out, "select source_row, value, reason from fedomop_quarantine where source = 'conditions'") == [
        ("none-maps", "ICD10CM E11.9", "unmapped code")
    ]


def test_a_chunked_run_with_workers_chooses_the_same_codings(export: Path, tmp_path: Path) -> None:
    out = tmp_path / "chunked.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", export, out, vocabulary=EUNOMIA, chunks=2, workers=2).balanced
    assert _rows(out, CONDITION_ROWS) == EXPECTED_CONDITIONS


def test_codings_must_select_a_codeable_concept(export: Path, tmp_path: Path) -> None:
    """A codings column that selects a Coding (code.coding) would give the first coding only: refused before
    any data is read, naming the column."""
    mapping = tmp_path / "site.yaml"
    mapping.write_text(
        f"include: [{MAPPINGS / 'fhir_r4.yaml'}]\noverride:\n  sources:\n    conditions:\n      columns:\n"
        "        codings: code.coding\n",
        encoding="utf-8",
    )
    with pytest.raises(MappingError, match="selects a Coding") as error:
        run_mapping(mapping, export, tmp_path / "bad.duckdb", vocabulary=EUNOMIA)
    assert "sources.conditions.columns.codings" in str(error.value.where)


def test_where_with_an_exists_test_selects_a_codeable_concept_with_several_codings() -> None:
    """``code.where(coding[1].exists())`` (FHIRPath: a boolean sub-path is the test): the CodeableConcept as JSON
    when it has a second coding, nothing for one coding, so the usual record carries no JSON text."""
    path = compile_path("code.where(coding[1].exists())", "Condition")
    assert path.evaluate(CONDITIONS[-1]) is None
    assert json.loads(path.evaluate(CONDITIONS[0]))["coding"][1] == _coding(SNOMED, "44054006")
    assert path.evaluate_generic(CONDITIONS[0]) == path.evaluate(CONDITIONS[0])

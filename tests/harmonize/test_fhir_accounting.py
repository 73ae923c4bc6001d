"""Every FHIR record read is accounted for with a reason that says what it is: modifier extensions fedomop does
not understand, files no source reads, Bundle files that cannot be read whole, Bundle entries that are not data,
and Patients refused when read. Expected rows and reasons are written by hand from the FHIR R4 spec
(Extensibility "Modifier Extensions"; Bundle.entry.search.mode, Bundle.entry.request)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

import duckdb
import pytest
from typer.testing import CliRunner

from fedomop.cli import app, main
from fedomop.harmonize.ground.errors import MappingError, SourceError
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.run import run_mapping
from fedomop.harmonize.sources.fhir.path import compile_path
from fedomop.harmonize.sources.fhir.reader import read_fhir
from tests.conftest import MAPPINGS
from tests.harmonize.fhir_export import write_ndjson as _ndjson

VOCABULARY = MAPPINGS.parent / "sample_data" / "vocabulary"
SNOMED = "http://snomed.info/sct"
NOT_DONE = "http://example.org/fhir/StructureDefinition/not-done"


def _patient(pid: str, birth: str = "1950-03-12") -> dict[str, object]:
    return {"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": birth}


def _condition(cid: str, pid: str = "p1") -> dict[str, object]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": SNOMED, "code": "254637007"}]},
        "onsetDateTime": "2020-01-01",
    }


def _quarantine(db: Path) -> list[tuple[str, str, str, str, str]]:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "select source, source_file, source_row, field, reason from fedomop_quarantine order by all"
        ).fetchall()
    return [tuple(str(v) for v in row) for row in rows]  # type: ignore[misc]


def _loaded(db: Path, table: str) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(f"select count(*) from {table}").fetchone()
    assert row is not None
    return int(row[0])


# -- 1. modifierExtension ---------------------------------------------------------------------------------------


def _with_modifiers(folder: Path) -> None:
    at_resource = {**_condition("c2"), "modifierExtension": [{"url": NOT_DONE, "valueBoolean": True}]}
    in_element = _condition("c3")
    in_element["code"] = {
        "coding": [{"system": SNOMED, "code": "254637007"}],
        "extension": [{"url": "http://example.org/plain", "valueString": "fine"}],  # a plain extension: read
    }
    in_element["evidence"] = [{"detail": [{"reference": "Observation/o1"}]}, {"modifierExtension": [{"url": NOT_DONE}]}]
    _ndjson(folder, "Patient.000.ndjson", [_patient("p1")])
    _ndjson(folder, "Condition.000.ndjson", [_condition("c1"), at_resource, in_element])


def test_an_unknown_modifier_extension_quarantines_its_resource_naming_url_and_path(tmp_path: Path) -> None:
    _with_modifiers(tmp_path)
    db = tmp_path / "out.duckdb"
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY)
    assert report.balanced
    # c3's modifierExtension is on Condition.evidence[1], which no column of the source reads: it loads
    assert _loaded(db, "condition_occurrence") == 2
    assert _quarantine(db) == [
        (
            "conditions",
            "Condition.000.ndjson",
            "c2",
            "modifierExtension",
            f"unknown modifierExtension '{NOT_DONE}' at Condition.modifierExtension: it may change what the resource "
            "means, so it is not loaded as if the extension were absent (FHIR R4 Extensibility); have the export "
            "drop or resolve it, or list the url under fhir_understood_modifier_extensions when the mapping "
            "handles it",
        ),
    ]


# An element's modifierExtension changes that element and its descendants only (FHIR R4 BackboneElement
# .modifierExtension; Extensibility): a record is quarantined only when its columns read at or under the element.
NOT_CALLED = "http://example.org/fhir/StructureDefinition/contact-not-to-be-called"
ESTIMATED = "http://example.org/fhir/StructureDefinition/estimated"
LOINC = "http://loinc.org"


@pytest.mark.parametrize(
    ("expression", "paths"),
    [
        ("code.coding.where(system='x').code", (("code", "coding"),)),  # where(): the element's subtree
        ("referenceRange.first().low.value", (("referenceRange", "low", "value"),)),
        ("name[0].given", (("name", "given"),)),  # positions are not kept: every name
        ("component.exists()", ()),  # presence only: no content read
        ("deceasedBoolean | deceasedDateTime.exists()", (("deceasedBoolean",),)),
        ("subject.reference.resolve_id()", (("subject", "reference"),)),
        ("extension('http://x.org/e').valueString", (("extension", "valueString"),)),
    ],
)
def test_a_path_says_which_elements_it_reads(expression: str, paths: tuple[tuple[str, ...], ...]) -> None:
    assert compile_path(expression).read_paths() == paths


def test_a_modifier_extension_on_a_patient_contact_no_column_reads_loads_the_patient(tmp_path: Path) -> None:
    patient = _patient("p1")
    patient["contact"] = [{"name": {"family": "Doe"}, "modifierExtension": [{"url": NOT_CALLED, "valueBoolean": True}]}]
    _ndjson(tmp_path, "Patient.000.ndjson", [patient])
    _ndjson(tmp_path, "Condition.000.ndjson", [_condition("c1"), _condition("c2")])
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY).balanced
    assert (_loaded(db, "person"), _loaded(db, "condition_occurrence")) == (1, 2)
    assert _quarantine(db) == []


def test_a_modifier_extension_on_the_patient_itself_quarantines_the_patient_and_their_events(tmp_path: Path) -> None:
    patient = {**_patient("p1"), "modifierExtension": [{"url": NOT_CALLED, "valueBoolean": True}]}
    _ndjson(tmp_path, "Patient.000.ndjson", [patient, _patient("p2")])
    _ndjson(tmp_path, "Condition.000.ndjson", [_condition("c1"), _condition("c2", "p2")])
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY).balanced
    assert (_loaded(db, "person"), _loaded(db, "condition_occurrence")) == (1, 1)  # p2 and c2
    rows = {row: (source, field, reason) for source, _file, row, field, reason in _quarantine(db)}
    assert rows["p1"][:2] == ("patients", "modifierExtension")
    assert rows["p1"][2].startswith(f"unknown modifierExtension '{NOT_CALLED}' at Patient.modifierExtension:")
    assert rows["c1"][0] == "conditions" and rows["c1"][2].startswith("person quarantined: unknown modifierExtension")


def _observation(oid: str, **elements: object) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2020-02-02",
        "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
        **elements,
    }


def _mmhg(code: str, value: int, **more: object) -> dict[str, object]:
    quantity = {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
    return {"code": {"coding": [{"system": LOINC, "code": code}]}, "valueQuantity": quantity, **more}


def test_a_modifier_extension_on_one_component_quarantines_that_component_only(tmp_path: Path) -> None:
    estimated = {"modifierExtension": [{"url": ESTIMATED, "valueBoolean": True}]}
    panel = _observation("o1", component=[_mmhg("8480-6", 120), _mmhg("8462-4", 80, **estimated)])
    _ndjson(tmp_path, "Patient.000.ndjson", [_patient("p1")])
    _ndjson(tmp_path, "Observation.000.ndjson", [panel])
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY).balanced
    with duckdb.connect(str(db), read_only=True) as con:
        loaded = con.execute("select measurement_source_value, value_as_number from measurement").fetchall()
    assert loaded == [("8480-6", 120.0)]  # component[0] (systolic)
    assert _quarantine(db) == [
        (
            "observation_components",
            "Observation.000.ndjson",
            "o1/component/1",
            "component[1].modifierExtension",
            f"unknown modifierExtension '{ESTIMATED}' at Observation.component[1].modifierExtension: it may change "
            "what Observation.component[1], which this source reads, means, so it is not loaded as if the extension "
            "were absent (FHIR R4 Extensibility); have the export drop or resolve it, or list the url under "
            "fhir_understood_modifier_extensions when the mapping handles it",
        ),
        (  # the panel itself: `panel: component.exists()` reads whether there are components, not what they say
            "observations",
            "Observation.000.ndjson",
            "o1",
            "panel",
            "excluded by rule: Observation with components and no value of its own: each component is a measurement "
            "(source observation_components)",
        ),
    ]


def test_a_modifier_extension_on_a_reference_range_the_source_reads_quarantines_the_observation(
    tmp_path: Path,
) -> None:
    value = {"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    flagged = {"low": {"value": 95}, "modifierExtension": [{"url": ESTIMATED, "valueBoolean": True}]}
    observation = _observation("o1", valueQuantity=value, referenceRange=[flagged])
    observation["code"] = {"coding": [{"system": LOINC, "code": "2708-6"}]}
    plain = {**observation, "id": "o2", "referenceRange": [{"low": {"value": 95}}]}
    _ndjson(tmp_path, "Patient.000.ndjson", [_patient("p1")])
    _ndjson(tmp_path, "Observation.000.ndjson", [observation, plain])
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY).balanced
    with duckdb.connect(str(db), read_only=True) as con:
        loaded = con.execute("select value_as_number, range_low from measurement").fetchall()
    assert loaded == [(97.0, 95.0)]  # o2 only
    [(source, _file, row, field, reason)] = _quarantine(db)
    assert (source, row, field) == ("observations", "o1", "referenceRange[0].modifierExtension")
    assert reason.startswith(
        f"unknown modifierExtension '{ESTIMATED}' at Observation.referenceRange[0].modifierExtension: it may change "
        "what Observation.referenceRange[0], which this source reads, means"
    )


@pytest.mark.parametrize(("validation", "workers"), [("structural", 1), ("structural", 2), ("full", 1)])
def test_an_element_modifier_extension_rejects_only_the_sources_that_read_the_element(
    tmp_path: Path, validation: Literal["structural", "full"], workers: int
) -> None:
    flagged = _condition("c2")
    flagged["evidence"] = [{"detail": [{"reference": "Observation/o1"}], "modifierExtension": [{"url": NOT_DONE}]}]
    _ndjson(tmp_path, "Condition.ndjson", [_condition("c1"), flagged])
    read = {
        "codes": {"code": "code.coding.code", "evidence": "evidence.exists()"},  # exists(): no content read
        "evidence": {"code": "code.coding.code", "evidence": "evidence.detail.reference"},
        "where": {"evidence": "evidence.where(code.exists()).detail.reference"},
    }
    kept = {}
    for name, columns in read.items():
        batch = read_fhir(
            name,
            [tmp_path / "Condition.ndjson"],
            tmp_path,
            "Condition",
            columns,
            fmt="ndjson",
            validation=validation,
            workers=workers,
        )
        assert batch.seen == 2
        kept[name] = batch.frame.get_column("_source_row").to_list()
        rejected = batch.rejects.select("source_row", "field", "value").rows()
        assert rejected == ([] if name == "codes" else [("c2", "evidence[0].modifierExtension", NOT_DONE)])
    assert kept == {"codes": ["c1", "c2"], "evidence": ["c1"], "where": ["c1"]}


def test_a_modifier_extension_in_a_contained_resource_quarantines_the_record(tmp_path: Path) -> None:
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076"}]},
        "modifierExtension": [{"url": ESTIMATED, "valueBoolean": True}],
    }
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2020-01-01",
        "contained": [medication],
        "medicationReference": {"reference": "#m1"},
    }
    _ndjson(tmp_path, "MedicationRequest.ndjson", [request])
    batch = read_fhir(
        "requests",
        [tmp_path / "MedicationRequest.ndjson"],
        tmp_path,
        "MedicationRequest",
        {"authored": "authoredOn"},  # no column reads contained: the request still uses its Medication
        fmt="ndjson",
    )
    assert batch.frame.height == 0
    assert batch.rejects.select("source_row", "field", "value").rows() == [
        ("mr1", "contained[0].modifierExtension", ESTIMATED)
    ]


def test_a_bundle_entry_with_an_unknown_modifier_extension_is_quarantined(tmp_path: Path) -> None:
    (tmp_path / "bundles").mkdir()
    flagged = {**_condition("c2"), "modifierExtension": [{"url": NOT_DONE, "valueBoolean": True}]}
    _bundle(tmp_path / "bundles" / "b.json", "collection", [{"resource": r} for r in (_patient("p1"), flagged)])
    db = tmp_path / "out.duckdb"
    report = run_mapping(MAPPINGS / "site_d.yaml", tmp_path, db, vocabulary=VOCABULARY)
    assert report.balanced
    [(source, _file, row, field, reason)] = _quarantine(db)
    assert (source, row, field) == ("conditions", "c2", "modifierExtension")
    assert reason.startswith(f"unknown modifierExtension '{NOT_DONE}' at Condition.modifierExtension:")


def test_a_mapping_may_list_the_modifier_extensions_it_understands(tmp_path: Path) -> None:
    _with_modifiers(tmp_path)
    mapping = tmp_path / "site.yaml"
    mapping.write_text(f"include: [fhir_r4.yaml]\nfhir_understood_modifier_extensions: ['{NOT_DONE}']\n")
    db = tmp_path / "out.duckdb"
    report = run_mapping(mapping, tmp_path, db, vocabulary=VOCABULARY)
    assert report.balanced
    assert _loaded(db, "condition_occurrence") == 3
    assert _quarantine(db) == []


@pytest.mark.parametrize(
    ("urls", "message"),
    [(["not-done"], "'not-done' is not an extension URL"), ([NOT_DONE, NOT_DONE], f"listed twice: {NOT_DONE}")],
)
def test_understood_modifier_extensions_must_be_absolute_urls_listed_once(
    tmp_path: Path, urls: list[str], message: str
) -> None:
    mapping = tmp_path / "site.yaml"
    mapping.write_text(f"include: [fhir_r4.yaml]\nfhir_understood_modifier_extensions: {json.dumps(urls)}\n")
    with pytest.raises(MappingError, match=message):
        load_mapping(mapping)


# -- 2. files nobody reads --------------------------------------------------------------------------------------


def test_a_renamed_patient_file_is_quarantined_and_named_not_left_as_unknown_persons(tmp_path: Path) -> None:
    _ndjson(tmp_path, "Patient.000.ndjson", [_patient("p1")])
    _ndjson(tmp_path, "patients.ndjson", [_patient("p2"), _patient("p3")])  # renamed: the Patient* glob misses it
    _ndjson(tmp_path, "Condition.000.ndjson", [_condition("c1"), _condition("c2", "p2")])
    db = tmp_path / "out.duckdb"
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY)
    assert report.balanced
    assert report.unread_files == ["patients.ndjson"]
    reason = (
        "no source reads Patient resources from this file: rename the file to match a Patient source's files: "
        "pattern, or widen that pattern"
    )
    assert _quarantine(db) == [
        ("Patient (file no source reads)", "patients.ndjson", "p2", "resourceType", reason),
        ("Patient (file no source reads)", "patients.ndjson", "p3", "resourceType", reason),
        ("conditions", "Condition.000.ndjson", "c2", "patient", "unknown person"),
    ]
    assert report.sources["Patient (file no source reads)"] == 2


def test_the_summary_names_the_file_no_source_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    _ndjson(tmp_path, "Patient.000.ndjson", [_patient("p1")])
    _ndjson(tmp_path, "patients.ndjson", [_patient("p2")])
    args = ["map", "--mapping", str(MAPPINGS / "fhir_r4.yaml"), "--source", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--db", str(tmp_path / "out.duckdb"), "--vocabulary", str(VOCABULARY)])
    assert result.exit_code == 0, result.output
    assert "files no source reads" in result.output and "patients.ndjson" in result.output


def test_a_file_some_source_reads_is_not_counted_again(tmp_path: Path) -> None:
    """An OperationOutcome line inside Condition.000.ndjson is refused by the conditions source (wrong type); the
    inventory does not also quarantine it as 'not mapped'. A file of an unmapped type still is, once per record,
    and a line that is no resource in such a file is counted once, not once per type the file holds."""
    outcome = {"resourceType": "OperationOutcome", "id": "oo1", "issue": [{"severity": "error", "code": "processing"}]}
    _ndjson(tmp_path, "Patient.000.ndjson", [_patient("p1")])
    _ndjson(tmp_path, "Condition.000.ndjson", [_condition("c1"), outcome])
    group = {"resourceType": "Group", "id": "g1", "type": "person", "actual": True}
    (tmp_path / "Mixed.000.ndjson").write_text(
        json.dumps(group) + "\n" + json.dumps({**outcome, "id": "oo2"}) + "\n" + '{"resourceType": "Gro\n'
    )
    db = tmp_path / "out.duckdb"
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY)
    assert report.balanced
    rows = [
        (source, file, row, reason.split(";")[0].split(" (")[0]) for source, file, row, _f, reason in _quarantine(db)
    ]
    assert rows == [
        ("Group (not mapped)", "Mixed.000.ndjson", "Mixed.000.ndjson:3", "invalid JSON"),
        ("Group (not mapped)", "Mixed.000.ndjson", "g1", "resource type not mapped"),
        ("OperationOutcome (not mapped)", "Mixed.000.ndjson", "oo2", "resource type not mapped"),
        (
            "conditions",
            "Condition.000.ndjson",
            "oo1",
            "resourceType 'OperationOutcome' in a source declared as Condition",
        ),
    ]
    assert report.unread_files == ["Mixed.000.ndjson"]


# -- 3. a Bundle file that cannot be read whole -----------------------------------------------------------------


def _bundle(path: Path, kind: str, entries: list[dict[str, object]]) -> None:
    path.write_text(json.dumps({"resourceType": "Bundle", "type": kind, "entry": entries}))


def test_a_truncated_bundle_stops_the_run_once_naming_the_file_and_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    (tmp_path / "bundles").mkdir()
    _bundle(tmp_path / "bundles" / "good.json", "collection", [{"resource": _patient("p1")}])
    text = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _patient("p2")}]})
    (tmp_path / "bundles" / "cut.json").write_text(text[:60])
    with pytest.raises(SourceError, match=r"not valid JSON: .* at line 1 column 61 \(character 60 of 60\)") as caught:
        run_mapping(MAPPINGS / "site_d.yaml", tmp_path, tmp_path / "api.duckdb", vocabulary=VOCABULARY)
    assert caught.value.where == "cut.json"
    args = ["map", "--mapping", str(MAPPINGS / "site_d.yaml"), "--source", str(tmp_path), "--vocabulary"]
    monkeypatch.setattr(sys, "argv", ["fedomop", *args, str(VOCABULARY), "--db", str(tmp_path / "out.duckdb")])
    with pytest.raises(SystemExit) as stopped:
        main()  # the console entry point: typed errors become exit code 2
    assert stopped.value.code == 2
    output = capsys.readouterr().err
    assert output.count("cut.json") == 1 and "copy or export the file again" in output
    assert not (tmp_path / "out.duckdb").exists()


def test_a_bundle_that_is_not_utf8_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "latin.json").write_bytes(
        json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _patient("p1")}]})
        .replace("male", "m\u00e4le")
        .encode("latin-1")
    )
    with pytest.raises(SourceError, match="Bundle file is not UTF-8"):
        run_mapping(MAPPINGS / "site_d.yaml", tmp_path, tmp_path / "out.duckdb", vocabulary=VOCABULARY)


def test_an_invalid_ndjson_line_stays_one_quarantined_record(tmp_path: Path) -> None:
    _ndjson(tmp_path, "Patient.000.ndjson", [_patient("p1")])
    (tmp_path / "Condition.000.ndjson").write_text(json.dumps(_condition("c1")) + "\n" + '{"resourceType": "Cond\n')
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY).balanced
    [(source, _file, row, _field, reason)] = _quarantine(db)
    assert (source, row) == ("conditions", "Condition.000.ndjson:2") and reason.startswith("invalid JSON")


# -- 4. Bundle entries that are not data ------------------------------------------------------------------------


def test_bundle_entries_without_data_say_what_they_are(tmp_path: Path) -> None:
    (tmp_path / "bundles").mkdir()
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "incomplete"}]}
    _bundle(
        tmp_path / "bundles" / "search.json",
        "searchset",
        [
            {"fullUrl": "https://x.org/fhir/Patient/p1", "resource": _patient("p1"), "search": {"mode": "match"}},
            {"resource": outcome, "search": {"mode": "outcome"}},
            {"fullUrl": "https://x.org/fhir/Patient/p9", "resource": None},
            {"fullUrl": "https://x.org/fhir/Patient/p8"},
        ],
    )
    _bundle(
        tmp_path / "bundles" / "tx.json",
        "transaction",
        [
            {"resource": _condition("c1"), "request": {"method": "PUT", "url": "Condition/c1"}},
            {"request": {"method": "DELETE", "url": "Condition/c0"}},
            {"request": {"method": "POST", "url": "Condition"}},
        ],
    )
    db = tmp_path / "out.duckdb"
    report = run_mapping(MAPPINGS / "site_d.yaml", tmp_path, db, vocabulary=VOCABULARY)
    assert report.balanced
    assert _loaded(db, "condition_occurrence") == 1
    name = "(bundle entries without a resource type)"
    empty = (
        "bundle entry has no resource (only a fullUrl, or resource null): the entry is empty; export it again with "
        "its resource"
    )
    assert _quarantine(db) == [
        (
            name,
            "bundles/search.json",
            "bundles/search.json:entry[1]",
            "entry.search.mode",
            "search outcome entry: the server's messages about the search (search.mode outcome), not data",
        ),
        (name, "bundles/search.json", "bundles/search.json:entry[2]", "entry.resource", empty),
        (name, "bundles/search.json", "bundles/search.json:entry[3]", "entry.resource", empty),
        (
            name,
            "bundles/tx.json",
            "bundles/tx.json:entry[1]",
            "entry.request",
            "DELETE request: the entry removes a resource and carries none, so there is nothing to load (not an error)",
        ),
        (
            name,
            "bundles/tx.json",
            "bundles/tx.json:entry[2]",
            "entry.resource",
            "POST request without its resource: the entry is incomplete; export it again with its resource",
        ),
    ]


# -- 5. a Patient refused when read -----------------------------------------------------------------------------


def test_events_of_a_patient_refused_when_read_say_why_not_unknown_person(tmp_path: Path) -> None:
    _ndjson(tmp_path, "Patient.000.ndjson", [_patient("p1"), _patient("p2", birth="19500312")])
    _ndjson(tmp_path, "Condition.000.ndjson", [_condition("c1"), _condition("c2", "p2"), _condition("c3", "p3")])
    db = tmp_path / "out.duckdb"
    report = run_mapping(MAPPINGS / "fhir_r4.yaml", tmp_path, db, vocabulary=VOCABULARY)
    assert report.balanced
    rows = {row: (field, reason) for _source, _file, row, field, reason in _quarantine(db)}
    field, why = rows["p2"]
    assert field == "birthDate"
    assert rows["c2"] == ("patient", f"person quarantined: {why.split(';')[0]} (birthDate)")
    assert rows["c3"] == ("patient", "unknown person")  # p3 is in no file


@pytest.mark.parametrize(("validation", "workers"), [("structural", 1), ("structural", 2), ("full", 1)])
def test_the_modifier_check_holds_on_every_read_path(
    tmp_path: Path, validation: Literal["structural", "full"], workers: int
) -> None:
    flagged = {**_condition("c2"), "modifierExtension": [{"url": NOT_DONE}]}
    _ndjson(tmp_path, "Condition.ndjson", [_condition("c1"), flagged, _condition("c3")])
    batch = read_fhir(
        "conditions",
        [tmp_path / "Condition.ndjson"],
        tmp_path,
        "Condition",
        {"code": "code.coding.code"},
        fmt="ndjson",
        validation=validation,
        workers=workers,
    )
    assert batch.frame.get_column("_source_row").to_list() == ["c1", "c3"]
    assert batch.rejects.select("source_row", "field", "value").rows() == [("c2", "modifierExtension", NOT_DONE)]
    assert batch.seen == 3


# -- 6. history Bundles -----------------------------------------------------------------------------------------
# FHIR R4 http.html#history: a history Bundle lists versions newest first; a DELETE entry records the deletion.


def _version(cid: str, version: str | None, onset: str, **meta: str) -> dict[str, object]:
    condition = {**_condition(cid), "onsetDateTime": onset}
    if version is not None:
        meta = {"versionId": version, **meta}
    if meta:
        condition["meta"] = meta
    return {"fullUrl": f"https://x.org/fhir/Condition/{cid}", "resource": condition, "request": {"method": "PUT"}}


def _delete(cid: str, **response: str) -> dict[str, object]:
    entry: dict[str, object] = {"request": {"method": "DELETE", "url": f"Condition/{cid}"}}
    if response:
        entry["response"] = {"status": "204", **response}
    return entry


def _history_run(tmp_path: Path, entries: list[dict[str, object]]) -> tuple[list[str], dict[str, tuple[str, str]]]:
    (tmp_path / "bundles").mkdir()
    _bundle(tmp_path / "bundles" / "p.json", "collection", [{"resource": _patient("p1")}])
    _bundle(tmp_path / "bundles" / "h.json", "history", entries)
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "site_d.yaml", tmp_path, db, vocabulary=VOCABULARY).balanced
    with duckdb.connect(str(db), read_only=True) as con:
        onsets = con.execute("select condition_start_date::varchar from condition_occurrence order by 1").fetchall()
    rows = {row.removeprefix("bundles/h.json:"): (field, reason) for _s, _f, row, field, reason in _quarantine(db)}
    return [onset for (onset,) in onsets], rows


def test_a_history_bundle_loads_each_resources_newest_entry_and_nothing_of_a_deleted_one(tmp_path: Path) -> None:
    entries = [
        _version("h1", None, "2018-01-01"),  # newest first, no meta: the Bundle's order decides
        _version("h1", None, "2017-01-01"),
        _delete("h2"),
        _version("h2", None, "2017-06-01"),
        _version("h3", None, "2016-01-01"),
    ]
    onsets, rows = _history_run(tmp_path, entries)
    assert onsets == ["2016-01-01", "2018-01-01"]
    assert rows == {
        "entry[1]": (
            "id",
            "an older version (history): Condition/h1's newest version is entry[0], which is loaded; this version "
            "is superseded (not an error)",
        ),
        "entry[2]": (
            "entry.request",
            "deleted in this history: Condition/h2 is deleted here (its newest entry), so none of its versions is "
            "loaded (not an error)",
        ),
        "entry[3]": (
            "id",
            "deleted in this history: entry[2] deletes Condition/h2 after this version, so it is not loaded (not an "
            "error)",
        ),
    }


def test_a_history_bundle_orders_versions_by_version_id_then_last_updated(tmp_path: Path) -> None:
    entries = [
        _version("h1", "1", "2017-01-01"),  # listed oldest first: versionId says which is newest
        _version("h1", "2", "2018-01-01"),
        _version("h2", "1", "2017-06-01"),
        _delete("h2", etag='W/"2"'),  # the DELETE's version is its response.etag
        _version("h3", None, "2015-01-01", lastUpdated="2020-01-01T10:00:00+02:00"),
        _version("h3", None, "2016-01-01", lastUpdated="2020-01-01T09:00:00Z"),  # later in UTC: the newest
        _version("h4", "3", "2019-01-01"),  # deleted, then created again
        _delete("h4", etag='W/"2"'),
    ]
    onsets, rows = _history_run(tmp_path, entries)
    assert onsets == ["2016-01-01", "2018-01-01", "2019-01-01"]
    assert {row: reason.split(":")[0] for row, (_field, reason) in rows.items()} == {
        "entry[0]": "an older version (history)",
        "entry[2]": "deleted in this history",
        "entry[3]": "deleted in this history",
        "entry[4]": "an older version (history)",
        "entry[7]": "an older version (history)",
    }
    assert rows["entry[7]"][1].endswith("this deletion is superseded (not an error)")


def test_other_bundle_types_keep_a_repeated_id_a_duplicate(tmp_path: Path) -> None:
    (tmp_path / "bundles").mkdir()
    entries = [{"resource": _patient("p1")}, _version("h1", "2", "2018-01-01"), _version("h1", "1", "2017-01-01")]
    _bundle(tmp_path / "bundles" / "c.json", "collection", entries)
    db = tmp_path / "out.duckdb"
    assert run_mapping(MAPPINGS / "site_d.yaml", tmp_path, db, vocabulary=VOCABULARY).balanced
    [(_source, _file, row, field, reason)] = _quarantine(db)
    assert (row, field) == ("bundles/c.json:entry[2]", "id") and reason.startswith("duplicate id")

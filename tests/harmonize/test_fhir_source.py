"""The FHIR reader on the real Synthea R4 bulk export, on broken lines, and on Bundles."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from fedomop.harmonize.ground.errors import MappingError, SourceError
from fedomop.harmonize.sources.base import REJECT_SCHEMA
from fedomop.harmonize.sources.fhir import reader as fhir
from fedomop.harmonize.sources.fhir.reader import count_fhir_resources, read_fhir
from tests.conftest import SAMPLE_DATA, SYNTHEA_BULK

SYNTHEA_FILES = sorted(SYNTHEA_BULK.glob("*.ndjson"))
PATIENT_ID = "129c6ac7-8d06-89de-ad63-0204a93e76c3"


def resource_type_of(path: Path) -> str:
    return path.name.split(".")[0]


def synthea_lines(resource_type: str) -> list[str]:
    return (SYNTHEA_BULK / f"{resource_type}.000.ndjson").read_text().splitlines()


def write_ndjson(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read(files, resource_type, columns=None, validation="structural", fmt="ndjson", workers=1):
    files = files if isinstance(files, list) else [files]
    columns = columns or {"id": "id"}
    return read_fhir(
        "src", files, files[0].parent, resource_type, columns, fmt=fmt, validation=validation, workers=workers
    )


# ---------------------------------------------------------------------------------------------------
# the real Synthea bulk export


@pytest.fixture(scope="module")
def synthea_reads() -> dict[str, dict[str, object]]:
    """Each Synthea file read at both validation levels."""
    reads: dict[str, dict[str, object]] = {}
    for path in SYNTHEA_FILES:
        resource_type = resource_type_of(path)
        reads[resource_type] = {level: read(path, resource_type, validation=level) for level in ("structural", "full")}
    return reads


def test_every_synthea_resource_is_accounted_for(synthea_reads):
    assert len(SYNTHEA_FILES) == 13
    counts = count_fhir_resources(SYNTHEA_FILES, "ndjson")
    assert sum(counts.values()) == 7160
    for resource_type, levels in synthea_reads.items():
        for level, batch in levels.items():
            assert batch.seen == batch.frame.height + batch.rejects.height, (resource_type, level)
            assert batch.seen == counts[resource_type], (resource_type, level)
            assert batch.rejects.schema == pl.Schema(REJECT_SCHEMA)


def test_structural_and_full_accept_the_same_synthea_resources(synthea_reads):
    for resource_type, levels in synthea_reads.items():
        structural, full = levels["structural"], levels["full"]
        assert structural.frame["_source_row"].to_list() == full.frame["_source_row"].to_list(), resource_type
        assert structural.rejects["source_row"].to_list() == full.rejects["source_row"].to_list(), resource_type
        # the export is valid R4: nothing is rejected, and lineage points at the right file
        assert structural.rejects.height == 0, structural.rejects.head(3)
        assert set(structural.frame["_source_file"]) == {f"{resource_type}.000.ndjson"}


def test_synthea_condition_columns():
    columns = {
        "person": "subject.reference.resolve_id()",
        "visit": "encounter.reference.resolve_id()",
        "snomed": "code.coding.where(system='http://snomed.info/sct').code",
        "start": "onsetDateTime | onsetPeriod.start",
        "end": "abatementDateTime",
    }
    batch = read(SYNTHEA_BULK / "Condition.000.ndjson", "Condition", columns)
    frame = batch.frame
    assert frame.columns == [*columns, "_source_file", "_source_row"]
    assert frame.height == 555
    row = frame.filter(pl.col("_source_row") == "0023b3a7-2ded-840c-ee5b-6b123fdcfb0b").row(0, named=True)
    assert row["person"] == PATIENT_ID
    assert row["visit"] == "f6003197-6507-1168-87be-ceccd5517094"
    assert row["snomed"] == "91302008"
    assert row["start"] == "1976-01-19T22:58:16-05:00"
    assert frame["person"].null_count() == 0 and frame["snomed"].null_count() == 0
    patients = read(SYNTHEA_BULK / "Patient.000.ndjson", "Patient").frame["id"].to_list()
    assert set(frame["person"]) <= set(patients)


def test_batches_concatenate_to_the_same_frame(monkeypatch):
    path = SYNTHEA_BULK / "Encounter.000.ndjson"
    columns = {"person": "subject.reference.resolve_id()", "start": "period.start", "class": "class.code"}
    whole = read(path, "Encounter", columns)
    monkeypatch.setattr(fhir, "BATCH_SIZE", 100)
    batched = read(path, "Encounter", columns)
    assert batched.frame.equals(whole.frame)
    assert batched.frame.height == 1215


def test_worker_processes_give_the_same_result(tmp_path, monkeypatch):
    lines = synthea_lines("Encounter")[:300]
    lines.insert(150, lines[10])  # a duplicate id in another chunk than its first occurrence
    lines.insert(200, '{"resourceType": "Encounter", "id": "bad", "status": 5}')
    lines.insert(250, "")
    path = write_ndjson(tmp_path / "Encounter.ndjson", lines)
    columns = {"person": "subject.reference.resolve_id()", "start": "period.start"}
    monkeypatch.setattr(fhir, "CHUNK_LINES", 64)
    serial = read(path, "Encounter", columns)
    parallel = read(path, "Encounter", columns, workers=2)
    assert parallel.frame.equals(serial.frame) and parallel.frame.height == 300
    assert sorted(parallel.rejects.rows()) == sorted(serial.rejects.rows())
    assert parallel.seen == serial.seen == 303
    duplicate = parallel.rejects.filter(pl.col("field") == "id").row(0, named=True)
    assert duplicate["source_row"] == "Encounter.ndjson:151"
    assert duplicate["reason"].startswith("duplicate id, first seen at Encounter.ndjson:11")


# ---------------------------------------------------------------------------------------------------
# broken inputs: each defect class gives the right field and reason


@pytest.fixture()
def patient_line() -> dict:
    return json.loads(next(line for line in synthea_lines("Patient") if PATIENT_ID in line[:80]))


def mutate(resource: dict, **changes) -> str:
    copy = json.loads(json.dumps(resource))
    for key, value in changes.items():
        if value is ...:
            copy.pop(key, None)
        else:
            copy[key] = value
    return json.dumps(copy)


OBSERVATION = {
    "resourceType": "Observation",
    "id": "obs-1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
    "subject": {"reference": f"Patient/{PATIENT_ID}"},
    "effectiveDateTime": "2020-01-01T10:00:00+01:00",
    "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
}


def defect_cases(patient: dict) -> list[tuple[str, str, str, str]]:
    """(line, expected source_row, expected field, expected words in the reason)."""
    truncated = json.dumps(patient)[:150]
    renamed = {("birthdate" if k == "birthDate" else k): v for k, v in patient.items()}
    return [
        (truncated, "Patient.ndjson:1", "", "invalid JSON"),
        ("[1, 2, 3]", "Patient.ndjson:2", "", "not a resource object"),
        (mutate(patient, resourceType="Practitioner", id="p3"), "p3", "resourceType", "move it to the Practitioner"),
        (json.dumps(renamed | {"id": "p4"}), "p4", "birthdate", "did you mean 'birthDate'"),
        (mutate(patient, id="p5", birthDate="1990-13-45"), "p5", "birthDate", "FHIR date"),
        (mutate(patient, id="p6", birthDate="2021-02-30"), "p6", "birthDate", "not a real calendar date"),
        (mutate(patient, id="p7", name={"family": "X"}), "p7", "name", "give a JSON array"),
        (mutate(patient, id="p8", gender=["female"]), "p8", "gender", "not an array"),
        (mutate(patient, id=...), "Patient.ndjson:9", "id", "has no id"),
        (mutate(patient, id="p10", resourceType=...), "p10", "resourceType", "has no resourceType"),
        (
            mutate(patient, id="p11", managingOrganization={"reference": "Organization 12"}),
            "p11",
            "managingOrganization.reference",
            "malformed reference",
        ),
        (mutate(patient, id="p12", deceasedBoolean=True), "p12", "", "deceased[x] has 2 values"),
        (mutate(patient, id="p13", active="yes"), "p13", "active", "FHIR boolean"),
        (mutate(patient), "Patient.ndjson:14", "id", f"duplicate id, first seen at Patient.ndjson:{15}"),
    ]


def test_each_defect_class_is_rejected_with_field_and_reason(tmp_path, patient_line):
    cases = defect_cases(patient_line)
    # line 15 is the valid original: the duplicate on line 14 comes *before* it in the file, so
    # write the valid one first by swapping: valid on 14, duplicate on 15.
    lines = [case[0] for case in cases[:-1]] + [json.dumps(patient_line), cases[-1][0]]
    path = write_ndjson(tmp_path / "Patient.ndjson", lines)
    batch = read(path, "Patient")
    assert batch.seen == 15 and batch.frame.height == 1 and batch.rejects.height == 14
    assert batch.frame["_source_row"].to_list() == [PATIENT_ID]
    rejects = batch.rejects.to_dicts()
    expected = cases[:-1] + [(None, "Patient.ndjson:15", "id", "duplicate id, first seen at Patient.ndjson:14")]
    for reject, (_line, row, field, words) in zip(rejects, expected, strict=True):
        assert reject["source_file"] == "Patient.ndjson"
        assert reject["source_row"] == row, reject
        assert reject["field"] == field, reject
        assert words in reject["reason"], reject
        assert len(reject["value"]) <= 200


def test_reject_values_are_readable_and_truncated(tmp_path, patient_line):
    long_bad = mutate(patient_line, id="p1", birthDate="x" * 500)
    path = write_ndjson(tmp_path / "Patient.ndjson", [long_bad, '{"resourceType": "Patient", "id": "p2", "gen'])
    rejects = read(path, "Patient").rejects.to_dicts()
    assert rejects[0]["value"] == "x" * 200 and rejects[0]["field"] == "birthDate"
    assert rejects[1]["value"] == '{"resourceType": "Patient", "id": "p2", "gen'


def test_bad_quantity_value_and_missing_required_element(tmp_path):
    good = json.dumps(OBSERVATION)
    bad_value = json.dumps({**OBSERVATION, "id": "obs-2", "valueQuantity": {"value": "abc", "unit": "mmol/L"}})
    no_code = json.dumps({k: v for k, v in OBSERVATION.items() if k != "code"} | {"id": "obs-3"})
    unknown_nested = json.dumps({**OBSERVATION, "id": "obs-4", "code": {"coding": [{"sytem": "http://loinc.org"}]}})
    path = write_ndjson(tmp_path / "Observation.ndjson", [good, bad_value, no_code, unknown_nested])
    batch = read(path, "Observation", {"value": "valueQuantity.value", "unit": "valueQuantity.unit"})
    assert batch.frame.to_dicts() == [
        {"value": 5.4, "unit": "mmol/L", "_source_file": "Observation.ndjson", "_source_row": "obs-1"}
    ]
    assert batch.frame.schema["value"] == pl.Float64
    rejects = {r["source_row"]: r for r in batch.rejects.to_dicts()}
    assert rejects["obs-2"]["field"] == "valueQuantity.value"
    assert rejects["obs-2"]["value"] == "abc"
    assert "JSON number" in rejects["obs-2"]["reason"]
    assert rejects["obs-3"]["field"] == "code" and "required element 'code'" in rejects["obs-3"]["reason"]
    assert rejects["obs-4"]["field"] == "code.coding[0].sytem"
    assert "did you mean 'system'" in rejects["obs-4"]["reason"]


def test_full_validation_rejects_the_same_structural_defects(tmp_path, patient_line):
    # the defects both levels see; the R4B models neither check reference forms (case 10) nor refuse
    # JSON strings for booleans (case 12: "yes" is coerced to true), so only "structural" rejects those
    shared = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11]
    cases = defect_cases(patient_line)
    lines = [cases[i][0] for i in shared] + [json.dumps(patient_line)]
    path = write_ndjson(tmp_path / "Patient.ndjson", lines)
    structural = read(path, "Patient", validation="structural")
    full = read(path, "Patient", validation="full")
    assert structural.frame["_source_row"].to_list() == full.frame["_source_row"].to_list() == [PATIENT_ID]
    assert structural.rejects["source_row"].to_list() == full.rejects["source_row"].to_list()
    assert structural.rejects["field"].to_list() == full.rejects["field"].to_list()


@pytest.mark.parametrize("validation", ["structural", "full"])
def test_blank_lines_inside_are_reported_and_trailing_ones_ignored(tmp_path, validation):
    lines = synthea_lines("Patient")[:3]
    path = tmp_path / "Patient.ndjson"
    path.write_text(lines[0] + "\n\n" + lines[1] + "\n   \n" + lines[2] + "\n\n  \n")
    batch = read(path, "Patient", validation=validation)
    assert batch.frame.height == 3
    assert batch.rejects["source_row"].to_list() == ["Patient.ndjson:2", "Patient.ndjson:4"]
    assert all("blank line" in reason for reason in batch.rejects["reason"])
    assert batch.seen == 5
    assert count_fhir_resources([path], "ndjson") == {"Patient": 3, "(blank)": 2}


def test_non_utf8_line_is_rejected(tmp_path):
    good = synthea_lines("Patient")[0].encode()
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(good + b"\n" + b'{"resourceType": "Patient", "id": "x", "gender": "f\xe9male"}\n')
    batch = read(path, "Patient")
    assert batch.frame.height == 1
    assert "UTF-8" in batch.rejects["reason"][0]


def test_duplicates_are_detected_across_files(tmp_path):
    line = synthea_lines("Condition")[0]
    first = write_ndjson(tmp_path / "a.ndjson", [line])
    second = write_ndjson(tmp_path / "b.ndjson", [line])
    batch = read([first, second], "Condition")
    assert batch.frame["_source_file"].to_list() == ["a.ndjson"]
    assert batch.rejects.row(0, named=True)["reason"].startswith("duplicate id, first seen at a.ndjson:1")


def test_mapping_problems_fail_before_reading(tmp_path):
    missing = tmp_path / "nothing.ndjson"
    with pytest.raises(MappingError, match="column onset") as caught:
        read(missing, "Condition", {"onset": "onsetDate"})
    assert "onsetDateTime" in str(caught.value)  # the choice element names are listed
    with pytest.raises(MappingError, match="not a FHIR R4B resource type"):
        read(missing, "Conditon")
    with pytest.raises(MappingError, match="unknown FHIR format"):
        read_fhir("src", [missing], tmp_path, "Condition", {}, fmt="csv")  # type: ignore[arg-type]
    with pytest.raises(SourceError, match="not found"):
        read(missing, "Condition")


# ---------------------------------------------------------------------------------------------------
# Bundles


def transaction_bundle(patient: dict, conditions: list[dict]) -> dict:
    """A Synthea-style transaction Bundle: entries named by urn:uuid, references through them."""
    patient_urn = f"urn:uuid:{patient['id']}"
    entries = [{"fullUrl": patient_urn, "resource": {k: v for k, v in patient.items() if k != "id"}}]
    for condition in conditions:
        linked = {**condition, "subject": {"reference": patient_urn}}
        entries.append({"fullUrl": f"urn:uuid:{condition['id']}", "resource": linked})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_bundle_urn_uuid_references_resolve(tmp_path, patient_line):
    conditions = [json.loads(line) for line in synthea_lines("Condition") if PATIENT_ID in line][:3]
    assert len(conditions) == 3
    bundle = transaction_bundle(patient_line, conditions)
    # a collection Bundle whose resource id differs from its fullUrl uuid: resolution goes through fullUrl
    other = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:4c8a1f0e-2b7d-4e55-9a61-0d3c2b1a9f87",
                "resource": {"resourceType": "Patient", "id": "local-7", "gender": "male"},
            },
            {
                "fullUrl": "urn:uuid:5d9b2a1f-3c8e-4f66-8b72-1e4d3c2b0a98",
                "resource": {
                    "resourceType": "Condition",
                    "id": "cond-7",
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254637007"}]},
                    "subject": {"reference": "urn:uuid:4c8a1f0e-2b7d-4e55-9a61-0d3c2b1a9f87"},
                },
            },
        ],
    }
    (tmp_path / "patient1.json").write_text(json.dumps(bundle))
    (tmp_path / "patient2.json").write_text(json.dumps(other))
    files = [tmp_path / "patient1.json", tmp_path / "patient2.json"]
    columns = {"person": "subject.reference.resolve_id()", "code": "code.coding.code"}
    batch = read(files, "Condition", columns, fmt="bundle")
    assert batch.rejects.height == 0
    assert batch.frame["person"].to_list() == [PATIENT_ID] * 3 + ["local-7"]
    assert batch.frame["_source_file"].to_list() == ["patient1.json"] * 3 + ["patient2.json"]
    assert batch.frame["_source_row"].to_list() == [c["id"] for c in conditions] + ["cond-7"]
    # the Patient without an id takes the uuid of its urn:uuid fullUrl
    patients = read(files, "Patient", {"gender": "gender"}, fmt="bundle")
    assert patients.frame["_source_row"].to_list() == [PATIENT_ID, "local-7"]
    assert count_fhir_resources(files, "bundle") == {"Patient": 2, "Condition": 4}
    full = read(files, "Condition", columns, fmt="bundle", validation="full")
    assert full.frame.equals(batch.frame)


def test_broken_bundles_are_accounted_for(tmp_path, patient_line):
    good = transaction_bundle(patient_line, [])
    good["entry"].append({"fullUrl": "urn:uuid:x", "resource": {"resourceType": "Patient", "gender": 5}})
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "truncated.json").write_text(json.dumps(good)[:300])
    (tmp_path / "not_a_bundle.json").write_text(json.dumps(patient_line))
    files = [tmp_path / "good.json", tmp_path / "not_a_bundle.json"]
    batch = read(files, "Patient", {"gender": "gender"}, fmt="bundle")
    assert batch.seen == 3 and batch.frame.height == 1 and batch.rejects.height == 2
    rejects = batch.rejects.to_dicts()
    assert rejects[0]["source_row"] == "x" and rejects[0]["field"] == "gender"
    assert rejects[1]["source_row"] == "not_a_bundle.json" and "not a FHIR Bundle" in rejects[1]["reason"]
    # a truncated Bundle holds an unknown number of records: it stops the read, naming the file and position
    with pytest.raises(SourceError, match=r"not valid JSON: .* at line 1 column \d+ \(character \d+ of 300\)"):
        read([*files, tmp_path / "truncated.json"], "Patient", {"gender": "gender"}, fmt="bundle")


# ---------------------------------------------------------------------------------------------------
# generated sample sites (FHIR bulk at site_b, Bundles at site_d), when the generator has produced them


@pytest.mark.parametrize(("site", "fmt", "pattern"), [("site_b", "ndjson", "*.ndjson"), ("site_d", "bundle", "*.json")])
def test_sample_sites_are_fully_accounted_for(site, fmt, pattern):
    """Every generated resource is read or rejected; the rejects are exactly the seeded invalid dates."""
    files = sorted((SAMPLE_DATA / site).rglob(pattern))
    assert files, f"sample_data/{site} has no FHIR files"
    truth = pl.read_csv(SAMPLE_DATA / site / "ground_truth.csv", infer_schema=False)
    seeded = truth.filter(pl.col("reason") == "invalid_date")
    assert seeded.height > 0
    counts = count_fhir_resources(files, fmt)
    assert "(invalid)" not in counts and "(blank)" not in counts
    rejected: list[tuple[str, str]] = []
    for resource_type, count in counts.items():
        own = [f for f in files if fmt == "bundle" or f.name.startswith(resource_type)]
        batch = read_fhir(site, own, SAMPLE_DATA / site, resource_type, {"id": "id"}, fmt=fmt)
        assert batch.balanced() and batch.seen == count, resource_type
        rejected += list(zip(batch.rejects["source_file"], batch.rejects["source_row"], strict=True))
        assert set(batch.rejects["reason"].str.contains("not a real calendar date")) <= {True}
    assert sorted(rejected) == sorted(zip(seeded["source_file"], seeded["source_row"], strict=True))


NESTED_DEFECTS = [
    ({"period": {"start": "2021-02-30T10:00:00Z"}}, "period.start", "not a real calendar date"),
    ({"period": {"start": "2021-02-03T10:00:00"}}, "period.start", "time zone required"),
    ({"extension": [{"url": "http://x", "valueString": "a", "valueBoolean": True}]}, "extension[0]", "2 values"),
    ({"extension": [{"valueString": "a"}]}, "extension[0].url", "required element 'url'"),
    (
        {"contained": [{"resourceType": "Patient", "id": "c1", "birthdate": "1990"}]},
        "contained[0].birthdate",
        "embedded Patient",
    ),
    ({"contained": [{"resourceType": "Foo", "id": "c1"}]}, "contained[0]", "'Foo' is not a FHIR R4B resource type"),
    ({"status": None}, "status", "null"),
    ({"type": []}, "type", "empty array"),
    ({"status": 5}, "status", "must be a FHIR code"),
    (
        {"participant": [{"individual": {"reference": "Practitioner/a b"}}]},
        "participant[0].individual.reference",
        "malformed reference",
    ),
]


@pytest.mark.parametrize(("change", "field", "words"), NESTED_DEFECTS)
def test_nested_defects_name_the_element_path(change, field, words):
    from fedomop.harmonize.sources.fhir.structure import structural_validator

    encounter = json.loads(synthea_lines("Encounter")[0])
    problems = structural_validator("Encounter").problems({**encounter, **change})
    assert len(problems) == 1, problems
    assert problems[0].field == field
    assert words in problems[0].reason
    assert structural_validator("Encounter").problems(encounter) == []


def test_full_validation_never_turns_a_lenient_value_into_a_silent_null(tmp_path):
    """The R4B models accept "5.4" for a decimal; the Float64 column cannot hold it, so it is rejected."""
    lenient = {**OBSERVATION, "valueQuantity": {"value": "5.4", "unit": "mmol/L"}}
    path = write_ndjson(tmp_path / "Observation.ndjson", [json.dumps(lenient)])
    for level in ("structural", "full"):
        batch = read(path, "Observation", {"value": "valueQuantity.value"}, validation=level)
        assert batch.frame.height == 0 and batch.rejects.height == 1, level
        reject = batch.rejects.row(0, named=True)
        assert reject["source_row"] == "obs-1" and reject["value"] == "5.4"
        assert "number" in reject["reason"]


def test_gzipped_ndjson_and_bundles(tmp_path, patient_line):
    import gzip

    lines = synthea_lines("Patient")
    with gzip.open(tmp_path / "Patient.000.ndjson.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    batch = read(tmp_path / "Patient.000.ndjson.gz", "Patient", {"gender": "gender"})
    assert batch.frame.height == 13 and batch.rejects.height == 0
    assert count_fhir_resources([tmp_path / "Patient.000.ndjson.gz"], "ndjson") == {"Patient": 13}
    with gzip.open(tmp_path / "b.json.gz", "wt", encoding="utf-8") as handle:
        json.dump(transaction_bundle(patient_line, []), handle)
    assert read(tmp_path / "b.json.gz", "Patient", fmt="bundle").frame["_source_row"].to_list() == [PATIENT_ID]

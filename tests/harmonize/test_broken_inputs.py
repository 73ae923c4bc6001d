"""Broken inputs: each gives a clear message naming file, row/resource and field, and loses nothing."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from fedomop.harmonize.ground.errors import MappingError
from fedomop.harmonize.run import RunReport, run_mapping
from tests.harmonize.fixture_site import DIAGNOSES, LABS, MAPPING, PATIENTS, make_site, write_csv


def _rows(rows: list[list[str]], index: int, column: str, value: str) -> list[list[str]]:
    changed = [list(r) for r in rows]
    changed[index][rows[0].index(column)] = value
    return changed


def truncated_json(source: Path) -> None:
    with (source / "Condition.000.ndjson").open("a") as handle:
        handle.write('{"resourceType": "Condition", "id": "c3", "subject": {"refer\n')


def wrong_encoding(source: Path) -> None:
    write_csv(source / "patients.csv", [*PATIENTS, ["P4", "F", "1980-01-01", "Décédée"]], encoding="latin-1")


def bad_date(source: Path) -> None:
    write_csv(source / "diagnoses.csv", _rows(DIAGNOSES, 2, "dx_date", "2019-13-45"))


def duplicate_id(source: Path) -> None:
    write_csv(source / "diagnoses.csv", [*DIAGNOSES, ["D1", "P2", "2019-05-01", "ICD10CM", "C61"]])


def missing_person(source: Path) -> None:
    write_csv(source / "labs.csv", _rows(LABS, 3, "patient_id", "P404"))


def negative_value(source: Path) -> None:
    write_csv(source / "labs.csv", _rows(LABS, 2, "value", "-3.1"))


def unparseable_number(source: Path) -> None:
    write_csv(source / "labs.csv", _rows(LABS, 1, "value", "2.5x"))


def ragged_row(source: Path) -> None:
    write_csv(source / "labs.csv", _rows(LABS, 1, "value", "2,5"))  # unquoted decimal comma: one field too many


def unknown_code(source: Path) -> None:
    write_csv(source / "labs.csv", _rows(LABS, 1, "loinc", "99999-9"))


# (name, break the extract, mapping changes, source, file, row, field, reason fragment)
CASES: list[tuple[str, Callable[[Path], None], dict, str, str, str, str, str]] = [
    (
        "truncated JSON",
        truncated_json,
        {},
        "conditions",
        "Condition.000.ndjson",
        "Condition.000.ndjson:3",
        "",
        "invalid JSON",
    ),
    ("wrong encoding", wrong_encoding, {}, "patients", "patients.csv", "4", "*", "encoding error: byte 0xe9"),
    ("bad date", bad_date, {}, "diagnoses", "diagnoses.csv", "2", "dx_date", "bad date: does not match iso"),
    ("duplicate id", duplicate_id, {}, "diagnoses", "diagnoses.csv", "5", "dx_id", "duplicate id"),
    ("missing person", missing_person, {}, "labs", "labs.csv", "3", "patient_id", "unknown person"),
    (
        "negative value",
        negative_value,
        {},
        "labs",
        "labs.csv",
        "2",
        "value",
        "implausible value: outside the declared range 0.0..30.0 mg/dL",
    ),
    ("unparseable number", unparseable_number, {}, "labs", "labs.csv", "1", "value", "unparseable number"),
    ("ragged row", ragged_row, {}, "labs", "labs.csv", "1", "*", "wrong number of fields: 7 instead of 6"),
    ("unknown code", unknown_code, {"on_unmapped": "quarantine"}, "labs", "labs.csv", "1", "loinc", "unmapped code"),
]


@pytest.mark.parametrize(
    ("name", "damage", "changes", "source_name", "file", "row", "field", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_broken_record_is_quarantined_with_where_and_why(
    tmp_path: Path, name, damage, changes, source_name, file, row, field, reason
) -> None:
    mapping, source = make_site(tmp_path, changes)
    damage(source)
    db = tmp_path / "site.duckdb"
    report = run_mapping(mapping, source, db)
    with duckdb.connect(str(db), read_only=True) as con:
        found = con.execute(
            "select field, value, reason from fedomop_quarantine where source = ? and source_file = ? "
            "and source_row = ?",
            [source_name, file, row],
        ).fetchall()
        totals = con.execute(
            "select sum(source_count), sum(loaded + quarantined), bool_and(balanced) from fedomop_reconciliation "
            "where omop_table = '*'"
        ).fetchone()
    assert found, f"{name}: nothing quarantined for {file} row {row}"
    assert any(f == field and reason in r for f, _, r in found), found
    assert totals[0] == totals[1] and totals[2], totals  # nothing lost
    assert report.balanced and report.records_quarantined >= 1


def _mapping_with(**changes: object) -> dict:
    mapping = copy.deepcopy(MAPPING)
    mapping.update(changes)
    return mapping


def _set(path: list, value: object) -> dict:
    mapping = copy.deepcopy(MAPPING)
    target = mapping
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return mapping


MAPPING_CASES = [
    (
        "unknown key",
        _set(["tables", "person", 0, "fields", "gender_concept_id"], {"constant": 8507, "nmae": "MALE"}),
        "tables.person[0].fields.gender_concept_id.nmae: unknown key 'nmae'",
        "valid keys here: constant, name",
    ),
    ("bad mode", _mapping_with(on_unmapped="drop"), "on_unmapped", "'concept_zero', 'quarantine' or 'fail'"),
    (
        "unknown column",
        _set(["tables", "measurement", 0, "value"], {"number": "result", "unit": "unit"}),
        "tables.measurement[0].value.number: column 'result' does not exist in source 'labs'",
        "header of labs.csv: lab_date, lab_id, loinc, patient_id, unit, value",
    ),
    (
        "unknown table",
        _set(["tables", "conditions"], []),
        "tables.conditions: 'conditions' is not a table",
        "condition_occurrence",
    ),
    (
        "unknown field",
        _set(["tables", "person", 0, "fields", "sex"], "sex"),
        "person has no settable field 'sex'",
        "gender_concept_id",
    ),
    (
        # value_as_string exists in observation only: a measurement rule may set it for the rows routed there,
        # so one that routes nothing (route_by_domain: false) may not
        "field of a routed table, not routed",
        _set(
            ["tables", "measurement", 0],
            {**MAPPING["tables"]["measurement"][0], "route_by_domain": False, "fields": {"value_as_string": "unit"}},
        ),
        "measurement has no settable field 'value_as_string'",
        "range_low",
    ),
    (
        "unnamed concept",
        _set(["tables", "death", 0, "type_concept"], {"constant": 32817}),
        "tables.death[0].type_concept: hard-coded concept id 32817 has no name",
        "name: <concept_name>",
    ),
    (
        "wrong concept name",
        _set(["tables", "death", 0, "type_concept"], {"constant": 32817, "name": "Registry"}),
        "concept 32817 is 'EHR' in the vocabulary, not 'Registry'",
        "correct the concept id",
    ),
    (
        # LOINC misspelt: every lab would map to concept 0 and the run would only show a low coverage line
        "vocabulary id unknown",
        _set(["tables", "measurement", 0, "concept"], {"code": "loinc", "vocabulary": "LONIC"}),
        "tables.measurement[0].concept.vocabulary: vocabulary 'LONIC' is neither in the loaded vocabulary",
        "did you mean 'LOINC'?",
    ),
    (
        "vocabulary id in the wrong case",
        _set(["tables", "measurement", 0, "concept"], {"code": "loinc", "vocabulary": "loinc"}),
        "vocabulary 'loinc' is neither in the loaded vocabulary",
        "'LOINC'",
    ),
    (
        "exclude on a column the file lacks",
        _set(["sources", "labs", "exclude"], [{"column": "valu", "is_null": True, "reason": "no result"}]),
        "sources.labs.exclude[0]: column 'valu' does not exist in source 'labs'",
        "header of labs.csv",
    ),
    (
        # a condition that tests nothing would select every row (an exclude would drop the whole source)
        "filter without a test",
        _set(["sources", "labs", "exclude"], [{"column": "value", "reason": "no result"}]),
        "column 'value' has no test",
        "equals, in, not_null: true or is_null: true",
    ),
    (
        "not_null false",
        _set(["sources", "labs", "exclude"], [{"column": "value", "not_null": False, "reason": "no result"}]),
        "not_null: false tests nothing",
        "is_null: true",
    ),
    (
        "min_coverage of an unknown table",
        _set(["min_coverage"], {"conditions": 0.9}),
        "min_coverage.conditions: min_coverage names 'conditions', which is not an OMOP table",
        "condition_occurrence",
    ),
    (
        "reversed plausible range",
        _set(["units", 0, "range"], [30, 0]),
        "range [30.0, 0.0] is reversed",
        "[low, high]",
    ),
    (
        # LOINC 17861-6 is "Calcium [Mass/volume] in Serum or Plasma" in the sample CONCEPT.csv
        "wrong name of a concept named by code",
        _set(["units", 0, "concept"], {"vocabulary": "LOINC", "code": "17861-6", "name": "Calcium"}),
        "units[0].concept: LOINC 17861-6 is 'Calcium [Mass/volume] in Serum or Plasma' in the vocabulary, not "
        "'Calcium'",
        "correct the code or its name",
    ),
    (
        "include as a single name",
        _set(["include"], "base.yaml"),
        "include: 'base.yaml' is a single name, not a list",
        "include: [base.yaml]",
    ),
    (
        "top-level key misspelt",
        _set(["overide"], {"site": "x"}),
        "unknown key 'overide'",
        "override",
    ),
    (
        "rule key not for table",
        _set(["tables", "person", 0, "value"], {"number": "sex"}),
        "tables.person[0].value: person rules take no 'value'",
        "valid keys for person",
    ),
]


@pytest.mark.parametrize(("name", "mapping", "message", "fix"), MAPPING_CASES, ids=[c[0] for c in MAPPING_CASES])
def test_malformed_mapping_fails_before_reading_data(tmp_path: Path, name, mapping, message, fix) -> None:
    import yaml

    mapping_file, source = make_site(tmp_path)
    mapping_file.write_text(yaml.safe_dump(mapping, sort_keys=False))
    db = tmp_path / "site.duckdb"
    with pytest.raises(MappingError) as error:
        run_mapping(mapping_file, source, db)
    text = str(error.value)
    assert str(mapping_file) in text and message in text and fix in text, text
    assert not db.exists()


def _map_and_quarantined(mapping: Path, source: Path, db: Path, name: str) -> tuple[RunReport, list[tuple[str, ...]]]:
    """Map the site; the run's report and one source's quarantine rows (row, field, value, reason) by row."""
    report = run_mapping(mapping, source, db)
    with duckdb.connect(str(db), read_only=True) as con:
        found = con.execute(
            "select source_row, field, value, reason from fedomop_quarantine where source = ? order by 1", [name]
        ).fetchall()
    return report, found


def test_text_in_a_numeric_omop_field_is_quarantined_not_nulled(tmp_path: Path) -> None:
    """``fields`` are typed by the OMOP column they fill: text in range_low cannot silently become null."""
    mapping = copy.deepcopy(MAPPING)
    mapping["tables"]["measurement"][0]["fields"] = {"range_low": "lab_id"}
    mapping_file, source = make_site(tmp_path, {"tables": mapping["tables"]})
    report, found = _map_and_quarantined(mapping_file, source, tmp_path / "site.duckdb", "labs")
    assert found == [
        ("1", "lab_id", "L1", "unparseable number"),
        ("2", "lab_id", "L2", "unparseable number"),
        ("3", "lab_id", "L3", "unparseable number"),
    ]
    assert report.balanced


def test_note_text_is_decoded_and_bad_base64_is_quarantined(tmp_path: Path) -> None:
    mapping = copy.deepcopy(MAPPING)
    mapping["sources"]["notes"] = {"format": "csv", "files": "notes.csv"}
    mapping["tables"]["note"] = [
        {
            "source": "notes",
            "id": "note_id",
            "person": "patient_id",
            "start": {"date": "note_date"},
            "type_concept": {"constant": 32817, "name": "EHR"},
            "fields": {
                "note_text": {"column": "text", "decode": "base64"},
                "note_class_concept_id": {"constant": 0},
                "encoding_concept_id": {"constant": 0},
                "language_concept_id": {"constant": 0},
            },
        }
    ]
    mapping_file, source = make_site(tmp_path, {"sources": mapping["sources"], "tables": mapping["tables"]})
    write_csv(
        source / "notes.csv",
        [
            ["note_id", "patient_id", "note_date", "text"],
            ["N1", "P1", "2020-01-01", "Q2hpZWYgY29tcGxhaW50"],
            ["N2", "P2", "2020-01-02", "%%%"],
        ],
    )
    db = tmp_path / "site.duckdb"
    report = run_mapping(mapping_file, source, db)
    with duckdb.connect(str(db), read_only=True) as con:
        notes = con.execute("select note_text from note").fetchall()
        bad = con.execute("select source_row, field, reason from fedomop_quarantine where source = 'notes'").fetchall()
    assert notes == [("Chief complaint",)]
    assert bad == [("2", "text", "undecodable base64")]
    assert report.balanced


def test_a_site_vocabulary_before_its_concept_map_runs_and_is_named(tmp_path: Path) -> None:
    """An id far from every known one is the site's own vocabulary (the steward maps it after `codes review`):
    the run goes on, its codes map to 0, and the report names the id and the rule that wrote it."""
    mapping = copy.deepcopy(MAPPING)
    mapping["tables"]["measurement"][0]["concept"] = {"code": "loinc", "vocabulary": "HOSPITAL_LAB"}
    mapping_file, source = make_site(tmp_path, {"tables": mapping["tables"]})
    report = run_mapping(mapping_file, source, tmp_path / "site.duckdb")
    assert report.unknown_vocabularies == ["HOSPITAL_LAB (tables.measurement[0].concept.vocabulary)"]
    assert report.balanced


@pytest.mark.parametrize(("chunks", "workers"), [(None, 1), (2, 1), (2, 2)], ids=["whole", "chunked", "workers"])
def test_records_of_a_person_refused_at_read_say_so(tmp_path: Path, chunks: int | None, workers: int) -> None:
    """P2's row in patients.csv has a fifth field (an unquoted comma): the reader refuses data row 2 ("wrong number
    of fields: 5 instead of 4"), so P2 is no person, and D2 and L2 - P2's diagnosis and lab - are quarantined
    with that reason, not as "unknown person". Whole, in two person-disjoint chunks, and in worker processes (P2's records may fall in
    either chunk; the refused row is read with the first)."""
    mapping, source = make_site(tmp_path)
    write_csv(source / "patients.csv", _rows(PATIENTS, 2, "death_date", "2021-05-06,extra"))
    db = tmp_path / "site.duckdb"
    report = run_mapping(mapping, source, db, chunks=chunks, workers=workers)
    with duckdb.connect(str(db), read_only=True) as con:
        found = con.execute(
            "select source, source_row, reason from fedomop_quarantine where source in ('diagnoses', 'labs') "
            "and field = 'patient_id' order by 1, 2"
        ).fetchall()
    why = "person quarantined: wrong number of fields: 5 instead of 4 (its row, refused when read)"
    assert found == [("diagnoses", "2", why), ("labs", "2", why)]
    assert report.balanced


def test_a_record_that_ends_before_it_starts_is_quarantined(tmp_path: Path) -> None:
    """DQD's plausibleStartBeforeEnd, at load: D2 starts 2019-03-01 and ends 2019-02-27 (quarantined, its end
    shown); D1 ends the day it starts and D3/D4 have no end (loaded)."""
    mapping = copy.deepcopy(MAPPING)
    mapping["tables"]["condition_occurrence"][0]["end"] = {"date": "dx_end"}
    mapping_file, source = make_site(tmp_path, {"tables": mapping["tables"]})
    ends = {"D1": "2019-02-01", "D2": "2019-02-27"}
    rows = [DIAGNOSES[0] + ["dx_end"], *(r + [ends.get(r[0], "")] for r in DIAGNOSES[1:])]
    write_csv(source / "diagnoses.csv", rows)
    report, found = _map_and_quarantined(mapping_file, source, tmp_path / "site.duckdb", "diagnoses")
    assert found == [("2", "dx_end", "2019-02-27", "implausible date: ends before it starts")]
    assert report.balanced


def test_a_result_without_a_unit_gets_a_null_unit_concept_and_an_unknown_unit_gets_0(tmp_path: Path) -> None:
    """CDM v5.4 measurement.unit_concept_id: "If the source data does not include units, set UNIT_CONCEPT_ID to
    NULL. If units are provided but not mapped, set UNIT_CONCEPT_ID to 0." (it was 0 for both). L1's mmol/L is
    converted to the declared standard mg/dL (UCUM 8840)."""
    mapping, source = make_site(tmp_path)
    labs = _rows(_rows(LABS, 3, "unit", ""), 2, "unit", "mg/dL")
    write_csv(source / "labs.csv", [*labs, ["L4", "P3", "2019-05-02", "2857-1", "3.9", "zz/L"]])
    run_mapping(mapping, source, tmp_path / "site.duckdb")
    with duckdb.connect(str(tmp_path / "site.duckdb"), read_only=True) as con:
        units = con.execute(
            "select value_as_number, unit_source_value, unit_concept_id from measurement "
            "where measurement_type_concept_id = 32817 and value_as_number is not null order by value_as_number"
        ).fetchall()
    assert units == [(3.9, "zz/L", 0), (4.2, None, None), (9.1, "mg/dL", 8840), (10.02, "mmol/L", 8840)]

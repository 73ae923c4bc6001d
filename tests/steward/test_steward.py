"""Profile -> draft -> map -> codes review -> apply -> map, on a site none of the mappings know (Eunomia-derived).

Expected values come from Eunomia's own tables (28 persons, 470 conditions, 10,040 measurements, 3 deaths) and
from the published check-digit rules of SNOMED CT (Verhoeff) and LOINC (mod 10), never from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import MappingError
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.steward.codes_guess import guess_code_system, loinc_valid, verhoeff_valid
from tests.conftest import EUNOMIA, MAPPINGS, SAMPLE_DATA, SHARED

runner = CliRunner()


def _cli(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _unmapped(db: Path, table: str, prefix: str) -> tuple[int, int]:
    frame = connect(str(db), read_only=True).query(
        f"SELECT SUM(CASE WHEN {prefix}_concept_id = 0 THEN 1 ELSE 0 END) AS zero, COUNT(*) AS n FROM {table}"
    )
    return int(frame.item(0, "zero") or 0), int(frame.item(0, "n"))


def test_check_digits_follow_the_published_rules() -> None:
    assert verhoeff_valid("73211009")  # SNOMED CT: Diabetes mellitus
    assert not verhoeff_valid("73211008")
    assert loinc_valid("718-7") and loinc_valid("2160-0")  # hemoglobin, creatinine
    assert not loinc_valid("718-6")


@pytest.fixture(scope="module")
def profiled(new_site: dict[str, Path]) -> Path:
    out = new_site["root"] / "profile"
    _cli("profile", "--source", new_site["extract"], "--out", out, "--vocabulary", new_site["vocabulary"])
    return out


def test_profile_describes_the_new_extract(profiled: Path) -> None:
    data = json.loads((profiled / "profile.json").read_text())
    files = {f["path"]: f for f in data["files"]}
    assert files["people.csv"]["rows"] == 28 and files["people.csv"]["delimiter"] == ";"
    columns = {c["name"]: c for c in files["people.csv"]["columns"]}
    assert columns["date_of_birth"]["kind"] == "date" and columns["date_of_birth"]["date_format"] == "%d/%m/%Y"
    died = pl.read_csv(EUNOMIA / "DEATH.csv")
    assert columns["died_on"]["nulls"] == 28 - died.height
    assert columns["died_on"]["date_min"] == str(min(died["death_date"]))
    assert columns["pat_key"]["identifier_like"]
    codes = {c["name"]: c["code_system"] for f in data["files"] for c in f["columns"]}
    assert codes["dx"] == "SNOMED" and codes["test_code"] == "LOINC"
    assert codes["result"] is None and codes["drawn_on"] is None


def test_shareable_profile_hides_small_cells_and_identifiers(profiled: Path) -> None:
    shared = json.loads((profiled / "profile.shareable.json").read_text())
    internal = json.loads((profiled / "profile.json").read_text())
    assert shared["kind"] == "shareable" and internal["kind"] == "internal"
    for file in shared["files"]:
        for column in file["columns"]:
            assert all(count >= shared["min_cell"] for _, count in column["top_values"]), column["name"]
            if column["identifier_like"]:
                assert column["top_values"] == []
    people = {c["name"]: c for f in internal["files"] if f["path"] == "people.csv" for c in f["columns"]}
    assert people["pat_key"]["top_values"]  # the site's own profile keeps them
    # 3 of 28 Eunomia persons died: their count (rows - nulls) and their dates must not leave the site.
    shared_people = {c["name"]: c for f in shared["files"] if f["path"] == "people.csv" for c in f["columns"]}
    assert people["died_on"]["nulls"] == 25 and people["died_on"]["date_min"] is not None
    assert shared_people["died_on"]["nulls"] is None and shared_people["died_on"]["date_min"] is None
    assert shared_people["date_of_birth"]["nulls"] == 0 and shared_people["date_of_birth"]["date_min"] is not None
    person_keys = pl.read_csv(EUNOMIA / "PERSON.csv", infer_schema=False)["person_source_value"].to_list()
    internal_html = (profiled / "profile.html").read_text()
    shareable_html = (profiled / "profile.shareable.html").read_text()
    assert any(key in internal_html for key in person_keys)
    assert not any(key in shareable_html for key in person_keys)
    assert not any(key in (profiled / "profile.shareable.json").read_text() for key in person_keys)


def test_draft_review_apply_map_reaches_full_coverage(new_site: dict[str, Path], profiled: Path) -> None:
    root = new_site["root"]
    mapping = root / "mappings" / "new_site.yaml"
    _cli("draft-mapping", "--profile", profiled / "profile.json", "--out", mapping,
         "--vocabulary", new_site["vocabulary"])  # fmt: skip
    text = mapping.read_text()
    assert "# TODO" in text and "vocabulary: SNOMED" in text and "vocabulary: LOINC" in text

    first = root / "first.duckdb"
    output = _cli("map", "--mapping", mapping, "--source", new_site["extract"], "--db", first)
    assert "reconciliation balanced" in output
    db = connect(str(first), read_only=True)
    assert db.query("SELECT COUNT(*) FROM person").item() == 28
    assert db.query("SELECT COUNT(*) FROM death").item() == 3
    assert db.query("SELECT COUNT(*) FROM condition_occurrence").item() == 470
    zero, total = _unmapped(first, "measurement", "measurement")
    assert total == 10_040 and zero > 0  # Eunomia's measurement_source_value also carries SNOMED codes

    review = root / "review.csv"
    _cli("codes", "review", "--mapping", mapping, "--db", first, "--out", review)
    sheet = pl.read_csv(review, infer_schema=False)
    assert sheet["records"].cast(pl.Int64).sum() == zero
    # SNOMED 171207006 in a LOINC column: the exact-code candidate is Eunomia's SNOMED concept for it.
    row = sheet.filter(pl.col("source_code") == "171207006").row(0, named=True)
    concept = pl.read_csv(EUNOMIA / "CONCEPT.csv", infer_schema=False).filter(
        (pl.col("concept_code") == "171207006") & (pl.col("vocabulary_id") == "SNOMED")
    )
    assert row["candidate_1_id"] == concept["concept_id"][0] and "same code in SNOMED" in row["candidate_1_why"]

    # The steward approves every candidate but keeps one screening code as a site concept.
    local = pl.col("source_code") == "171207006"
    decided = sheet.with_columns(
        pl.when(local).then(pl.lit("local")).otherwise(pl.lit("approve")).alias("decision"),
        pl.when(local).then(pl.lit("Site depression screen")).otherwise(pl.col("local_name")).alias("local_name"),
    )
    decided.write_csv(review)
    # codes apply writes the map where the mapping reads it and points the mapping at it: no hand edit
    _cli("codes", "apply", "--review", review, "--mapping", mapping, "--source", new_site["extract"])
    assert 'source_to_concept_map: "source_to_concept_map.csv"' in mapping.read_text()

    second = root / "second.duckdb"
    assert "reconciliation balanced" in _cli(
        "map", "--mapping", mapping, "--source", new_site["extract"], "--db", second
    )
    zero_after, total_after = _unmapped(second, "measurement", "measurement")
    cond_zero, cond_total = _unmapped(second, "condition_occurrence", "condition")
    assert total_after == 10_040
    coverage = 1 - (zero_after + cond_zero) / (total_after + cond_total)
    assert coverage >= 0.95, coverage
    eunomia = pl.read_csv(EUNOMIA / "MEASUREMENT.csv", infer_schema=False)
    screened = eunomia.filter(pl.col("measurement_source_value") == "171207006").height
    local_rows = connect(str(second), read_only=True).query(
        "SELECT COUNT(*) FROM measurement WHERE measurement_concept_id = 2000000001"
    )
    assert local_rows.item() == screened > 0
    # the document a reviewer reads names where concept 2000000001 comes from: the extension apply wrote
    document = root / "new_site.md"
    _cli("mapping", "doc", "--mapping", mapping, "--out", document)
    extensions = load_mapping(mapping).vocabulary.extensions
    assert extensions and all(f"site concepts `{e}` (vocabulary extension)" in document.read_text() for e in extensions)


def test_apply_local_concepts_take_ids_above_two_billion(tmp_path: Path) -> None:
    review = tmp_path / "review.csv"
    pl.DataFrame({
        "omop_table": ["measurement", "measurement"], "source_vocabulary_id": ["LOCAL", "LOCAL"],
        "source_code": ["K-1", "K-2"], "source_name": ["potassium", "odd"], "records": ["4", "1"],
        "decision": ["local", "skip"], "target_concept_id": ["", ""], "local_name": ["Site potassium", ""],
        "local_domain": ["Measurement", ""],
    }).write_csv(review)  # fmt: skip
    vocabulary = SAMPLE_DATA / "vocabulary"
    _cli("codes", "apply", "--review", review, "--out", tmp_path / "stcm.csv", "--vocabulary", vocabulary,
         "--extension", tmp_path / "ext")  # fmt: skip
    concept = pl.read_csv(tmp_path / "ext" / "CONCEPT.csv", separator="\t", infer_schema=False)
    # the site concept, K-1's source concept in the local LOCAL vocabulary, then one concept per new vocabulary
    assert concept.select("concept_id", "vocabulary_id", "concept_code").rows() == [
        ("2000000001", "site", "K-1"), ("2000000002", "LOCAL", "K-1"),
        ("2000000003", "Vocabulary", "OMOP generated"), ("2000000004", "Vocabulary", "OMOP generated"),
    ]  # fmt: skip
    stcm = pl.read_csv(tmp_path / "stcm.csv", infer_schema=False)
    assert stcm.select("source_code", "source_concept_id", "target_concept_id").rows() == [
        ("K-1", "2000000002", "2000000001")
    ]


def test_apply_refuses_an_unknown_decision(tmp_path: Path) -> None:
    review = tmp_path / "review.csv"
    pl.DataFrame({"source_vocabulary_id": ["X"], "source_code": ["1"], "decision": ["maybe"],
                  "target_concept_id": [""]}).write_csv(review)  # fmt: skip
    result = runner.invoke(
        app,
        [
            "codes",
            "apply",
            "--review",
            str(review),
            "--out",
            str(tmp_path / "s.csv"),
            "--vocabulary",
            str(SAMPLE_DATA / "vocabulary"),
        ],
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, MappingError) and "line 2, field decision" in str(result.exception)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        # ICD10CM C61 (CONCEPT.csv: standard_concept empty): a source code, not a target
        ("35206266", "target_concept_id 35206266 is not a valid standard concept (standard_concept empty)"),
        ("abc", "target_concept_id 'abc' is not a concept id (a number)"),
    ],
)
def test_apply_refuses_a_target_that_is_not_a_standard_concept(tmp_path: Path, target: str, message: str) -> None:
    review = tmp_path / "review.csv"
    pl.DataFrame({"source_vocabulary_id": ["SITE_DX"], "source_code": ["K1"], "decision": ["approve"],
                  "target_concept_id": [target]}).write_csv(review)  # fmt: skip
    out = tmp_path / "s.csv"
    args = ["codes", "apply", "--review", review, "--out", out, "--vocabulary", SAMPLE_DATA / "vocabulary"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0 and result.exception is not None
    assert message in str(result.exception) and "line 2, field target_concept_id" in str(result.exception)
    assert not out.exists()


def test_apply_says_when_an_approved_code_moves_its_records_to_another_table(tmp_path: Path) -> None:
    """A lab code approved to a Condition concept (197804 in the sample CONCEPT.csv) will be routed to
    condition_occurrence by the next run: apply says so (it is right for a miscoded test, a mistake here); a lab
    code approved to a Measurement concept (3000963) stays where it is and is not mentioned."""
    review = tmp_path / "review.csv"
    pl.DataFrame({"omop_table": ["measurement", "measurement"], "source_vocabulary_id": ["SITE_LAB", "SITE_LAB"],
                  "source_code": ["LAB00", "LAB01"], "records": [726, 12], "decision": ["approve", "approve"],
                  "target_concept_id": ["197804", "3000963"]}).write_csv(review)  # fmt: skip
    out = tmp_path / "s.csv"
    args = ["codes", "apply", "--review", review, "--out", out, "--vocabulary", SAMPLE_DATA / "vocabulary"]
    output = " ".join(_cli(*args).split())
    expected = (
        "LAB00 (measurement, 726 records) -> concept 197804, a Condition concept: its records will load into "
        "condition_occurrence"
    )
    assert expected in output, output
    assert "LAB01" not in output and out.exists()


def test_mapping_doc_of_site_a(tmp_path: Path) -> None:
    out = tmp_path / "site_a.md"
    _cli("mapping", "doc", "--mapping", MAPPINGS / "site_a.yaml", "--out", out)
    text = out.read_text()
    assert "## measurement" in text and "code `loinc_code` in LOINC" in text
    assert "| gender_concept_id | `sex` mapped: M → 8507 MALE; F → 8532 FEMALE; otherwise 0 |" in text


def test_vocab_load_extension_refuses_released_ids(tmp_path: Path) -> None:
    db = tmp_path / "v.duckdb"
    _cli("vocab", "load", "--db", db, "--folder", SAMPLE_DATA / "vocabulary")
    extension = tmp_path / "ext"
    extension.mkdir()
    header = "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\tconcept_code"
    header += "\tvalid_start_date\tvalid_end_date\tinvalid_reason\n"
    row = "\tMine\tObservation\tsite\tUndefined\tS\tX\t19700101\t20991231\t\n"
    (extension / "CONCEPT.csv").write_text(header + "8507" + row)
    result = runner.invoke(app, ["vocab", "load", "--db", str(db), "--folder", str(extension), "--extension"])
    assert result.exit_code != 0 and "not a local concept id" in str(result.exception)
    (extension / "CONCEPT.csv").write_text(header + "2000000005" + row)
    _cli("vocab", "load", "--db", db, "--folder", extension, "--extension")
    names = connect(str(db)).query("SELECT concept_name FROM concept WHERE concept_id > 2000000000")
    assert names["concept_name"].to_list() == ["Mine"]
    assert connect(str(db)).query("SELECT COUNT(*) FROM concept WHERE concept_id = 8507").item() == 1


def test_profile_reads_fhir_bulk_ndjson(tmp_path: Path) -> None:
    bulk = SHARED / "fhir" / "synthea-bulk-r4"
    _cli("profile", "--source", bulk, "--out", tmp_path)
    data = json.loads((tmp_path / "profile.json").read_text())
    files = {f["path"]: f for f in data["files"]}
    lines = [line for line in (bulk / "Condition.000.ndjson").read_text().splitlines() if line.strip()]
    condition = files["Condition.000.ndjson"]
    assert condition["format"] == "fhir_ndjson" and condition["rows"] == len(lines)
    columns = {c["name"]: c for c in condition["columns"]}
    assert columns["code.coding.code"]["code_system"] == "SNOMED"  # from code.coding.system http://snomed.info/sct
    assert columns["onsetDateTime"]["kind"] == "date"
    first_onsets = sorted(json.loads(line)["onsetDateTime"][:10] for line in lines)
    assert columns["onsetDateTime"]["date_min"] == first_onsets[0]


@pytest.mark.parametrize(
    ("site", "file", "column", "declared"),
    [  # what the hand-written mappings declare for these columns
        ("site_a", "conditions.csv", "icd10_code", "ICD10CM"),
        ("site_a", "observations.csv", "loinc_code", "LOINC"),
        ("site_a", "procedures.csv", "snomed_code", "SNOMED"),
        ("site_c", "diagnostics.csv", "CODE_CIM9", "ICD9CM"),
    ],
)
def test_code_system_by_shape_alone_matches_the_hand_mappings(site: str, file: str, column: str, declared: str) -> None:
    separator = ";" if site == "site_c" else ","
    values = pl.read_csv(SAMPLE_DATA / site / file, separator=separator, infer_schema=False, encoding="latin-1")
    assert guess_code_system(values[column].unique().drop_nulls().to_list())[0] == declared
    assert guess_code_system(["Full-time employment", "anemia"]) == (None, None)


def test_review_needs_a_mapped_database(tmp_path: Path) -> None:
    result = runner.invoke(app, ["codes", "review", "--mapping", str(MAPPINGS / "site_a.yaml"),
                                 "--db", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "r.csv")])  # fmt: skip
    assert result.exit_code != 0 and "run fedomop map first" in str(result.exception)


def test_draft_mapping_names_a_missing_profile(tmp_path: Path) -> None:
    missing = tmp_path / "nothere.json"
    args = [
        "draft-mapping",
        "--profile",
        missing,
        "--out",
        tmp_path / "m.yaml",
        "--vocabulary",
        SAMPLE_DATA / "vocabulary",
    ]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0 and result.exception is not None
    assert f"{missing}: no such file" in str(result.exception) and not (tmp_path / "m.yaml").exists()


def test_profile_leaves_out_the_sites_concept_map(tmp_path: Path) -> None:
    """`codes apply` writes source_to_concept_map.csv into the extract folder: profiling the folder again must not
    take it for a hospital file (the draft would get a TODO for it)."""
    extract = tmp_path / "extract"
    extract.mkdir()
    (extract / "patients.csv").write_text("mrn,dob\nM1,1950-01-02\nM2,1960-03-04\n")
    header = "source_code,source_concept_id,source_vocabulary_id,source_code_description,target_concept_id,"
    (extract / "source_to_concept_map.csv").write_text(header + "target_vocabulary_id\nK1,0,SITE,x,197804,SNOMED\n")
    output = " ".join(_cli("profile", "--source", extract, "--out", tmp_path / "profile").split())
    assert "source_to_concept_map.csv: a source_to_concept_map (the steward's), not profiled" in output
    profile = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert [f["path"] for f in profile["files"]] == ["patients.csv"]


def test_a_parquet_extract_with_native_dates_drafts_a_person_rule_that_maps(tmp_path: Path) -> None:
    """Parquet keeps dates as dates: the profile must call a Date or timestamp column a date (it profiled the
    text cast, '1908-11-23 00:00:00.000000000', as text, so the draft found no birth date and no person file), and
    an id column named like one (mrn, patient_id, PATNR) is not guessed as a code system (P000-P029 look like
    ICD-10-CM chapter codes)."""
    import datetime as dt

    extract = tmp_path / "extract"
    extract.mkdir()
    births = [dt.datetime(1950, 1, 1) + dt.timedelta(days=100 * i) for i in range(30)]
    pl.DataFrame(
        {
            "mrn": [f"P{i:03d}" for i in range(30)],
            "dob": births,
            "dx_date": [dt.date(2010, 1, 1) + dt.timedelta(days=i) for i in range(30)],
            "sex": ["M", "F"] * 15,
        }
    ).write_parquet(extract / "patients.parquet")
    _cli("profile", "--source", extract, "--out", tmp_path / "profile", "--vocabulary", SAMPLE_DATA / "vocabulary")
    columns = {c["name"]: c for c in json.loads((tmp_path / "profile" / "profile.json").read_text())["files"][0]["columns"]}
    assert [columns[n]["kind"] for n in ("dob", "dx_date")] == ["date", "date"]
    assert (columns["dob"]["date_min"], columns["dob"]["date_max"]) == ("1950-01-01", str(births[-1].date()))
    assert columns["mrn"].get("code_system") is None
    mapping = tmp_path / "draft.yaml"
    _cli("draft-mapping", "--profile", tmp_path / "profile" / "profile.json", "--vocabulary",
         SAMPLE_DATA / "vocabulary", "--out", mapping)  # fmt: skip
    assert "no person file" not in mapping.read_text()
    _cli("map", "--mapping", mapping, "--source", extract, "--db", tmp_path / "site.duckdb")
    years = connect(str(tmp_path / "site.duckdb"), read_only=True).query(
        "SELECT person_source_value, year_of_birth, month_of_birth, day_of_birth FROM person ORDER BY 1"
    ).rows()
    assert years == [(f"P{i:03d}", b.year, b.month, b.day) for i, b in enumerate(births)]


def test_draft_recognises_a_german_patient_file(tmp_path: Path) -> None:
    """PATNR / GEBDAT / GESCHL with M and W (weiblich), ';' and dd.mm.yyyy: a person rule the map runs as drafted."""
    extract = tmp_path / "extract"
    extract.mkdir()
    rows = [f"{1000 + i};{1 + i:02d}.03.19{40 + i};{'MW'[i % 2]}" for i in range(24)]
    (extract / "patienten.csv").write_text("PATNR;GEBDAT;GESCHL\n" + "\n".join(rows) + "\n", encoding="utf-8")
    _cli("profile", "--source", extract, "--out", tmp_path / "profile")
    mapping = tmp_path / "draft.yaml"
    _cli("draft-mapping", "--profile", tmp_path / "profile" / "profile.json", "--vocabulary",
         SAMPLE_DATA / "vocabulary", "--out", mapping)  # fmt: skip
    _cli("map", "--mapping", mapping, "--source", extract, "--db", tmp_path / "site.duckdb")
    persons = connect(str(tmp_path / "site.duckdb"), read_only=True).query(
        "SELECT person_source_value, year_of_birth, day_of_birth, gender_concept_id FROM person ORDER BY 1"
    ).rows()
    assert persons == [(str(1000 + i), 1940 + i, 1 + i, 8507 if i % 2 == 0 else 8532) for i in range(24)]

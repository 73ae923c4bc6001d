"""Importing and exporting a whole OMOP CDM CSV folder (Eunomia), and the vocabulary CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.cdm import load_spec
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import SourceError
from fedomop.harmonize.vocabulary.cdm_io import export_cdm_folder, load_cdm_folder, read_cdm_csv

from ..conftest import EUNOMIA, FEDOMOP_BIN
from .conftest import csv_records


def eunomia_tables() -> dict[str, Path]:
    return {p.stem.lower(): p for p in sorted(EUNOMIA.glob("*.csv"))}


def test_load_cdm_folder_row_counts_equal_the_csvs_for_every_table(tmp_path: Path) -> None:
    db = connect(tmp_path / "eunomia.duckdb")
    counts = load_cdm_folder(db, EUNOMIA)
    files = eunomia_tables()
    assert set(counts) == set(files) and len(files) == 39  # every table of the spec has a file in Eunomia
    for table, path in files.items():
        expected = csv_records(path)
        assert counts[table] == expected, table
        assert db.scalar(f'SELECT COUNT(*) FROM "{table}"') == expected, table
    assert counts["measurement"] == 10040 and counts["person"] == 28
    # Typed by the spec: a datetime column, a float and a date that Eunomia writes with a time of day.
    person = db.query("SELECT birth_datetime FROM person WHERE person_id = 1")
    assert str(person.item()) == "1998-04-09 00:00:00"
    assert db.scalar("SELECT value_as_number FROM measurement WHERE measurement_id = 1") == pytest.approx(48.1)
    assert (
        str(db.scalar("SELECT condition_era_start_date FROM condition_era WHERE condition_era_id = 1")) == "2005-05-07"
    )
    # Importing again replaces.
    assert load_cdm_folder(db, EUNOMIA, tables=["PERSON", "death"]) == {"person": 28, "death": 3}
    assert db.scalar("SELECT COUNT(*) FROM person") == 28


def test_export_then_import_round_trips(tmp_path: Path) -> None:
    source = connect(tmp_path / "a.duckdb")
    load_cdm_folder(source, EUNOMIA, tables=["person", "measurement", "concept", "cdm_source"])
    written = export_cdm_folder(source, tmp_path / "export")
    assert written == {"person": 28, "measurement": 10040, "cdm_source": 1, "concept": 2294}
    assert (tmp_path / "export" / "MEASUREMENT.csv").exists()
    copy = connect(tmp_path / "b.duckdb")
    assert load_cdm_folder(copy, tmp_path / "export") == written
    query = "SELECT * FROM measurement ORDER BY measurement_id"
    assert copy.query(query).equals(source.query(query))


def test_bad_clinical_value_is_a_source_error_with_line_and_field(tmp_path: Path) -> None:
    lines = (EUNOMIA / "PERSON.csv").read_text(encoding="utf-8").splitlines()
    lines[5] = lines[5].replace(",8507,", ",male,", 1).replace(",8532,", ",female,", 1)
    (tmp_path / "PERSON.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(SourceError) as caught:
        load_cdm_folder(connect(tmp_path / "x.duckdb"), tmp_path)
    assert caught.value.where == f"{tmp_path / 'PERSON.csv'} line 6, field gender_concept_id"


def test_reader_casts_to_spec_types() -> None:
    frame = read_cdm_csv(EUNOMIA / "DRUG_EXPOSURE.csv", "drug_exposure")
    assert frame.columns == load_spec().table("drug_exposure").column_names
    assert frame.schema["drug_exposure_id"] == pl.Int32
    assert frame.schema["drug_exposure_start_date"] == pl.Date
    assert frame.schema["drug_exposure_start_datetime"] == pl.Datetime("us")
    assert frame.schema["quantity"] == pl.Float64
    assert frame.height == 883


def test_cli_vocab_load_resolve_and_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    db = str(tmp_path / "cli.duckdb")
    loaded = runner.invoke(app, ["vocab", "load", "--db", db, "--folder", str(EUNOMIA)])
    assert loaded.exit_code == 0, loaded.output
    assert "266,588" in loaded.output
    resolved = runner.invoke(
        app, ["vocab", "resolve", "--db", db, "--vocabulary", "SNOMED", "--code", "275272006", "--code", "nope"]
    )
    assert resolved.exit_code == 0, resolved.output
    assert "Traumatic brain injury" in resolved.output and "4132546" in resolved.output
    imported = runner.invoke(app, ["import-cdm", "--db", db, "--folder", str(EUNOMIA), "--table", "person"])
    assert imported.exit_code == 0, imported.output
    assert connect(db).scalar("SELECT COUNT(*) FROM person") == 28


def test_cli_reports_a_malformed_vocabulary_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "CONCEPT.csv").write_text(
        "concept_id\tconcept_name\tdomain_id\tvocabulary_id\tconcept_class_id\tstandard_concept\tconcept_code\t"
        "valid_start_date\tvalid_end_date\tinvalid_reason\n1\tBroken\tCondition\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [
            str(FEDOMOP_BIN),
            "vocab",
            "load",
            "--db",
            str(tmp_path / "v.duckdb"),
            "--folder",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert done.returncode == 2
    assert "VocabularyError" in done.stderr and "CONCEPT.csv line 2" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.postgres
def test_load_cdm_folder_on_postgres_matches_duckdb(postgres_url: str, tmp_path: Path) -> None:
    pg = connect(postgres_url)
    tables = ["person", "measurement", "drug_exposure", "cdm_source", "note_nlp", "source_to_concept_map"]
    counts = load_cdm_folder(pg, EUNOMIA, tables=tables)
    duck = connect(tmp_path / "d.duckdb")
    assert load_cdm_folder(duck, EUNOMIA, tables=tables) == counts
    for table in ("person", "measurement", "drug_exposure"):
        key = load_spec().table(table).column_names[0]
        query = f"SELECT * FROM {table} ORDER BY {key}"
        assert pg.query(query).equals(duck.query(query), null_equal=True), table
    pg.dispose()


def test_the_quoted_offset_column_of_note_nlp_loads_and_exports(tmp_path: Path) -> None:
    """note_nlp.offset is a reserved word (quoted in the spec's DDL); files and the database call it offset."""
    header = (EUNOMIA / "NOTE_NLP.csv").read_text(encoding="utf-8").strip()
    (tmp_path / "NOTE_NLP.csv").write_text(f"{header}\n1,7,0,tumour size,12,size,0,0,nlp,2020-01-01,,,,\n")
    db = connect(tmp_path / "n.duckdb")
    assert load_cdm_folder(db, tmp_path) == {"note_nlp": 1}
    assert db.query('SELECT "lexical_variant", "offset" AS o FROM note_nlp').rows() == [("size", "12")]
    export_cdm_folder(db, tmp_path / "out")
    assert (tmp_path / "out" / "NOTE_NLP.csv").read_text().splitlines()[0] == header

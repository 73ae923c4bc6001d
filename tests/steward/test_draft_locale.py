"""A German extract drafted and mapped as it is (found by a new-user trial): decimal-comma lab values, a
``sterbedatum`` death column, and a vocabulary without the gender concepts (Eunomia has no 8507/8532).

Every expected value is written here by hand from the extract the test writes, never from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.steward.draft import _DEATH
from tests.conftest import EUNOMIA, SAMPLE_DATA

runner = CliRunner()
PATIENTS = 24  # an id column is identifier-like from 20 filled values


def _cli(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _write_patients(extract: Path, *, died: dict[int, str] | None = None) -> None:
    """patienten.csv: P001.. with dd.mm.yyyy birth dates, M/W, and a sterbedatum filled for ``died``."""
    died = died or {}
    rows = [f"P{i:03d};{1 + i:02d}.03.19{40 + i};{'MW'[i % 2]};{died.get(i, '')}" for i in range(PATIENTS)]
    (extract / "patienten.csv").write_text(
        "patient_id;geburtsdatum;geschlecht;sterbedatum\n" + "\n".join(rows) + "\n", encoding="utf-8"
    )


def _write_labs(extract: Path, values: list[str]) -> None:
    """labor.csv: one glucose value per patient (in order), ';'-delimited, with the values as written."""
    rows = [f"L{i};P{i:03d};04.10.2017;GLU;Glukose;{value};mg/dL" for i, value in enumerate(values)]
    (extract / "labor.csv").write_text(
        "lab_id;patient_id;entnahme_datum;lab_cd;bezeichnung;wert;einheit\n" + "\n".join(rows) + "\n",
        encoding="utf-8",
    )


def _profile_draft_map(tmp_path: Path, vocabulary: Path) -> tuple[dict, str, str]:
    """profile -> draft-mapping -> map through the CLI: (the profile's columns by file:name, the draft, map output)."""
    extract = tmp_path / "extract"
    _cli("profile", "--source", extract, "--out", tmp_path / "profile", "--vocabulary", vocabulary)
    profile = json.loads((tmp_path / "profile" / "profile.json").read_text())
    columns = {f"{f['path']}:{c['name']}": c for f in profile["files"] for c in f["columns"]}
    mapping = tmp_path / "draft.yaml"
    _cli("draft-mapping", "--profile", tmp_path / "profile" / "profile.json", "--vocabulary", vocabulary,
         "--out", mapping)  # fmt: skip
    output = _cli("map", "--mapping", mapping, "--source", extract, "--db", tmp_path / "site.duckdb")
    return columns, mapping.read_text(), output


def _query(tmp_path: Path, sql: str) -> list[tuple]:
    return connect(str(tmp_path / "site.duckdb"), read_only=True).query(sql).rows()


# the values as a German export writes them, and what they are
DECIMAL_COMMA = ["87,47", "90,32", "1,16", "142,03", "1.234,5", "0,76", "100", "12.345,25"] * 3
NUMBERS = [87.47, 90.32, 1.16, 142.03, 1234.5, 0.76, 100.0, 12345.25] * 3


def test_decimal_comma_values_are_profiled_as_numbers_and_drafted_as_the_measurement_value(tmp_path: Path) -> None:
    """`87,47` in a ';' file was profiled as text, the draft wrote no `decimal: ","` and no value, and the map
    loaded 200 measurements without values (exit 0, no TODO)."""
    extract = tmp_path / "extract"
    extract.mkdir()
    _write_patients(extract)
    _write_labs(extract, DECIMAL_COMMA)
    columns, draft, _ = _profile_draft_map(tmp_path, SAMPLE_DATA / "vocabulary")
    wert = columns["labor.csv:wert"]
    assert (wert["kind"], wert["decimal"], wert["decimal_other"]) == ("number", ",", 0)
    assert columns["labor.csv:einheit"]["kind"] == "text"
    assert 'decimal: ","' in draft and "value: {number: wert, unit: einheit}" in draft
    assert "decimal separators" not in draft
    assert "the vocabulary has no concept" not in draft  # the sample vocabulary has 8507 and 8532
    rows = _query(
        tmp_path,
        "SELECT person_source_value, value_as_number, unit_source_value FROM measurement "
        "JOIN person USING (person_id) ORDER BY person_source_value",
    )
    assert rows == [(f"P{i:03d}", pytest.approx(n), "mg/dL") for i, n in enumerate(NUMBERS)]


def test_a_column_mixing_decimal_comma_and_point_gets_a_todo(tmp_path: Path) -> None:
    """Read with one separator, the other's values are unparseable: the draft says so, and still runs."""
    extract = tmp_path / "extract"
    extract.mkdir()
    _write_patients(extract)
    values = ["87,47"] * 20 + ["90.5", "1.25", "7,5", "3"]
    _write_labs(extract, values)
    columns, draft, _ = _profile_draft_map(tmp_path, SAMPLE_DATA / "vocabulary")
    wert = columns["labor.csv:wert"]
    assert (wert["kind"], wert["decimal"], wert["decimal_other"]) == ("number", ",", 2)  # 90.5 and 1.25
    assert 'decimal: ","' in draft
    assert "# TODO: labor.csv: wert mixes decimal separators (2 of 24 values are not written with ',')" in draft
    loaded = _query(tmp_path, "SELECT value_as_number FROM measurement ORDER BY measurement_id")
    assert sorted(v for (v,) in loaded) == pytest.approx(sorted([87.47] * 20 + [7.5, 3.0]))


def test_a_file_whose_columns_use_both_separators_gets_a_todo(tmp_path: Path) -> None:
    extract = tmp_path / "extract"
    extract.mkdir()
    _write_patients(extract)
    _write_labs(extract, DECIMAL_COMMA)
    text = (extract / "labor.csv").read_text().splitlines()
    rows = [text[0] + ";menge"] + [f"{line};{i}.5" for i, line in enumerate(text[1:])]
    (extract / "labor.csv").write_text("\n".join(rows) + "\n")
    columns, draft, _ = _profile_draft_map(tmp_path, SAMPLE_DATA / "vocabulary")
    assert columns["labor.csv:menge"]["decimal"] == "."
    assert "# TODO: labor.csv mixes decimal separators: ',' in wert, '.' in menge" in draft
    assert 'decimal: ","' in draft  # the measurement value decides


def test_sterbedatum_gives_a_death_rule(tmp_path: Path) -> None:
    """A German death-date column gave no death rule (the name pattern knew death/deces/dod only)."""
    extract = tmp_path / "extract"
    extract.mkdir()
    _write_patients(extract, died={3: "03.04.2021", 10: "17.11.2019"})
    _write_labs(extract, DECIMAL_COMMA)
    _, draft, _ = _profile_draft_map(tmp_path, SAMPLE_DATA / "vocabulary")
    assert "when: {column: sterbedatum, not_null: true}" in draft
    deaths = _query(
        tmp_path,
        "SELECT person_source_value, CAST(death_date AS VARCHAR) FROM death JOIN person USING (person_id) ORDER BY 1",
    )
    assert deaths == [("P003", "2021-04-03"), ("P010", "2019-11-17")]


@pytest.mark.parametrize(
    "name",
    ["sterbedatum", "Sterbe_Dat", "todesdatum", "tod_datum", "datum_tod", "TODDAT", "fecha_def", "fecha_defuncion",
     "data_decesso", "date_deces", "date_décès", "fallecimiento", "data_obito", "overlijdensdatum", "exitus_datum",
     "death_date", "dod"],
)  # fmt: skip
def test_death_date_names(name: str) -> None:
    assert _DEATH.search(name)


@pytest.mark.parametrize(
    "name", ["today", "todo_date", "methode", "stod_datum", "entnahme_datum", "geburtsdatum", "decimal", "process_dt"]
)
def test_names_that_are_not_death_dates(name: str) -> None:
    assert not _DEATH.search(name)


def test_a_vocabulary_without_the_gender_concepts_is_a_todo(tmp_path: Path) -> None:
    """Eunomia has no 8507/8532: the draft wrote gender constant 0 without a word."""
    extract = tmp_path / "extract"
    extract.mkdir()
    _write_patients(extract)
    _write_labs(extract, DECIMAL_COMMA)
    _, draft, _ = _profile_draft_map(tmp_path, EUNOMIA)
    assert (
        "# TODO: gender_concept_id: the vocabulary has no concept 8507 (geschlecht M) or 8532 (geschlecht W), "
        "so it stays 0" in draft
    )
    genders = _query(tmp_path, "SELECT DISTINCT gender_concept_id, gender_source_value FROM person ORDER BY 2")
    assert genders == [(0, "M"), (0, "W")]

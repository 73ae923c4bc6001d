"""Visit ends in a drafted mapping: a discharge column by its usual short names, and no end at all.

A visit whose source gives no end takes the CDM's convention for visit_end_date (the start: the field-level
spec, "all other visits"), not the person's last record; a rule that reads an end keeps the ongoing-encounter
rule for an empty one. Expected dates are written by hand from the files below.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
from typer.testing import CliRunner

from fedomop.cli import app
from tests.conftest import SAMPLE_DATA

runner = CliRunner()
# 20 persons (the profile calls a column an identifier only over enough rows), one stay each on 15.03.2020
PATIENTS = "mrn;sex;dob\n" + "".join(f"M{i};{'FM'[i % 2]};0{1 + i % 9}.04.19{50 + i}\n" for i in range(1, 21))
# M1 has two stays years apart: extending the first to the person's last record would end it in 2021
STAYS = [("E1", "M1", "01.02.2019", "04.02.2019", "01.01.2019"), ("E2", "M1", "10.06.2021", "10.06.2021", "01.06.2021")]
STAYS += [(f"E{i + 1}", f"M{i}", "15.03.2020", "18.03.2020", "01.03.2020") for i in range(2, 21)]


def _cli(*args: str | Path) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _draft_and_map(root: Path, second_date: str) -> tuple[str, list[tuple[str, dt.date, dt.date]]]:
    extract = root / "extract"
    extract.mkdir(parents=True)
    (extract / "patients.csv").write_text(PATIENTS)
    body = "".join(f"{e};{m};{a};{d if second_date == 'disch_dt' else b}\n" for e, m, a, d, b in STAYS)
    (extract / "encounters.csv").write_text(f"enc_id;mrn;adm_dt;{second_date}\n" + body)
    vocabulary = SAMPLE_DATA / "vocabulary"
    _cli("profile", "--source", extract, "--out", root / "profile", "--vocabulary", vocabulary)
    mapping = root / "mappings" / "site.yaml"
    _cli("draft-mapping", "--profile", root / "profile" / "profile.json", "--out", mapping, "--vocabulary", vocabulary)
    db = root / "site.duckdb"
    _cli("map", "--mapping", mapping, "--source", extract, "--db", db, "--vocabulary", vocabulary)
    with duckdb.connect(str(db), read_only=True) as con:
        visits = con.execute(
            "select visit_source_value, visit_start_date, visit_end_date from visit_occurrence "
            "where visit_source_value in ('E1', 'E2', 'E3') order by 1"
        ).fetchall()
    return mapping.read_text(), visits


def test_a_short_discharge_column_is_the_visit_end(tmp_path: Path) -> None:
    text, visits = _draft_and_map(tmp_path, "disch_dt")
    assert "end: {date: disch_dt}" in text
    assert visits == [
        ("E1", dt.date(2019, 2, 1), dt.date(2019, 2, 4)),
        ("E2", dt.date(2021, 6, 10), dt.date(2021, 6, 10)),
        ("E3", dt.date(2020, 3, 15), dt.date(2020, 3, 18)),
    ]


def test_without_an_end_column_a_visit_ends_on_its_start_day_and_the_draft_says_so(tmp_path: Path) -> None:
    text, visits = _draft_and_map(tmp_path, "booked_dt")
    assert "TODO: no end date column recognised" in text and "booked_dt" in text and "\n      end:" not in text
    assert visits == [
        ("E1", dt.date(2019, 2, 1), dt.date(2019, 2, 1)),
        ("E2", dt.date(2021, 6, 10), dt.date(2021, 6, 10)),
        ("E3", dt.date(2020, 3, 15), dt.date(2020, 3, 15)),
    ]

"""The harmonize engine on the hand-written fixture site: routing, units, episodes, lineage, reruns, atomicity."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest

from fedomop.harmonize.ground.errors import MappingError
from fedomop.harmonize.run import run_mapping
from tests.harmonize.fixture_site import make_site

CDM_TABLES = (
    "person",
    "death",
    "condition_occurrence",
    "measurement",
    "observation_period",
    "episode",
    "episode_event",
)


def table(db: Path, sql: str) -> pl.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return pl.from_arrow(con.sql(sql).to_arrow_table())  # type: ignore[return-value]


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("fixture")
    mapping, source = make_site(root)
    db = root / "site.duckdb"
    return db, run_mapping(mapping, source, db)


def test_codes_resolve_through_maps_to_and_route_by_domain(mapped) -> None:
    db, _ = mapped
    conditions = table(
        db,
        "select condition_source_value, condition_concept_id, condition_source_concept_id "
        "from condition_occurrence order by condition_occurrence_id",
    )
    assert conditions.rows() == [
        ("C61", 200962, 35206266),  # ICD-10-CM C61 "Maps to" Primary malignant neoplasm of prostate
        ("Z99.9", 0, 0),  # unknown code: concept 0, source value kept
        ("128462008", 432851, 432851),
        ("254837009", 4112853, 4112853),  # from the FHIR Condition file
        ("363406005", 4180790, 4180790),
    ]
    # the LOINC code written in the diagnosis file is a Measurement concept: it lands in measurement
    routed = table(
        db,
        "select measurement_concept_id, measurement_source_value from measurement m "
        "join fedomop_lineage l on l.omop_table = 'measurement' and l.omop_id = m.measurement_id "
        "where l.source = 'diagnoses'",
    )
    assert routed.rows() == [(3013603, "2857-1")]


def test_units_are_converted_to_the_declared_standard(mapped) -> None:
    db, _ = mapped
    calcium = table(
        db,
        "select value_as_number, unit_concept_id, unit_source_value, value_source_value "
        "from measurement where measurement_concept_id = 3006906 order by measurement_date",
    )
    assert calcium.rows() == [(10.02, 8840, "mmol/L", "2.5"), (9.1, 8840, "mg/dL", "9.1")]
    psa = table(
        db,
        "select unit_concept_id from measurement where measurement_source_value = '2857-1' "
        "and value_as_number is not null",
    )
    assert psa.item() == 8842  # ng/mL has no conversion rule: its UCUM concept is looked up


def test_dates_person_death_and_observation_period(mapped) -> None:
    db, _ = mapped
    person = table(
        db,
        "select person_source_value, gender_concept_id, year_of_birth, month_of_birth, day_of_birth "
        "from person order by person_id",
    )
    assert person.rows() == [("P1", 8507, 1950, 3, 4), ("P2", 8532, 1962, 11, 30), ("P3", 8507, 1971, 1, 15)]
    assert table(db, "select person_id, cast(death_date as varchar) from death").rows() == [(2, "2021-05-06")]
    fhir_onset = table(
        db,
        "select cast(condition_start_datetime as varchar) from condition_occurrence "
        "where condition_source_value = '254837009'",
    )
    assert fhir_onset.item() == "2018-07-01 10:00:00"  # wall-clock time as recorded, offset dropped
    periods = table(
        db,
        "select person_id, cast(observation_period_start_date as varchar), "
        "cast(observation_period_end_date as varchar) from observation_period order by person_id",
    )
    assert periods.rows() == [
        (1, "2019-02-01", "2020-06-01"),
        (2, "2018-07-01", "2019-03-02"),
        (3, "2018-08-01", "2019-04-02"),
    ]


def test_cancer_diagnoses_get_disease_first_occurrence_episodes(mapped) -> None:
    db, _ = mapped
    episodes = table(
        db,
        "select person_id, episode_concept_id, episode_object_concept_id, "
        "cast(episode_start_date as varchar) from episode order by episode_id",
    )
    assert episodes.rows() == [(1, 32528, 200962, "2019-02-01"), (2, 32528, 4112853, "2018-07-01")]
    events = table(
        db,
        "select e.episode_id, c.condition_concept_id, e.episode_event_field_concept_id "
        "from episode_event e join condition_occurrence c on c.condition_occurrence_id = e.event_id "
        "order by 1",
    )
    assert events.rows() == [(1, 200962, 1147127), (2, 4112853, 1147127)]


def test_every_row_has_lineage_and_every_record_is_accounted(mapped) -> None:
    db, report = mapped
    for name in ("person", "condition_occurrence", "measurement", "death", "observation_period", "episode"):
        orphans = table(
            db,
            f"select count(*) from {name} t where not exists (select 1 from fedomop_lineage l "
            f"where l.omop_table = '{name}')",
        )
        assert orphans.item() == 0, name
        counts = table(
            db,
            f"select (select count(*) from {name}) - (select count(*) from fedomop_lineage "
            f"where omop_table = '{name}')",
        )
        assert counts.item() == 0, name
    totals = table(
        db,
        "select source, source_count, loaded, quarantined, balanced from fedomop_reconciliation "
        "where omop_table = '*' order by source",
    )
    assert totals.rows() == [
        ("conditions", 2, 2, 0, True),
        ("diagnoses", 4, 4, 0, True),
        ("labs", 3, 3, 0, True),
        ("patients", 3, 3, 0, True),
    ]
    assert report.balanced and report.records_read == 12


def _cdm_contents(db: Path) -> dict[str, list[tuple]]:
    contents = {t: table(db, f"select * from {t} order by all").rows() for t in CDM_TABLES}
    contents["lineage"] = table(db, "select * exclude (run_id) from fedomop_lineage order by all").rows()
    return contents


def test_rerun_gives_identical_tables(tmp_path: Path) -> None:
    mapping, source = make_site(tmp_path)
    db = tmp_path / "site.duckdb"
    first = run_mapping(mapping, source, db)
    before = _cdm_contents(db)
    second = run_mapping(mapping, source, db)
    assert first.run_id != second.run_id
    assert _cdm_contents(db) == before
    assert table(db, "select count(distinct run_id) from fedomop_run").item() == 1  # replaced, not appended


def test_a_failing_run_leaves_the_previous_database_intact(tmp_path: Path) -> None:
    mapping, source = make_site(tmp_path)
    db = tmp_path / "site.duckdb"
    run_mapping(mapping, source, db)
    before = _cdm_contents(db)
    strict, _ = make_site(tmp_path / "strict", {"on_unmapped": "fail"})
    with pytest.raises(MappingError, match="unmapped code"):  # found midway, after the new database was half built
        run_mapping(strict, source, db)
    assert _cdm_contents(db) == before
    # no aside file left: the database and the site's vocabulary store (complete, reused by the next run)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("site")) == [
        "site.duckdb",
        "site.duckdb.vocabulary",
    ]


def test_on_unmapped_fail_stops_with_the_code_and_its_row(tmp_path: Path) -> None:
    mapping, source = make_site(tmp_path, {"on_unmapped": "fail"})
    with pytest.raises(MappingError) as error:
        run_mapping(mapping, source, tmp_path / "site.duckdb")
    assert "unmapped code ICD10CM 'Z99.9'" in str(error.value)
    assert "diagnoses.csv row 2, field dx_code" in str(error.value)
    assert not (tmp_path / "site.duckdb").exists()


def test_lineage_is_stored_as_integers_and_read_back_as_text(mapped) -> None:
    """docs/mapping.md's contract: a CSV data row is stored as an integer, a FHIR resource id as text, never
    both, in runs (a text row is a run of one); the fedomop_lineage view gives back one row per OMOP row (D1 is
    data row 1 of diagnoses.csv, c1 a resource id)."""
    db, _ = mapped
    stored = table(
        db,
        "select f.source_file, l.source_row_no, l.source_row_text, l.row_count from fedomop_lineage_row l "
        "join fedomop_lineage_file f using (file_no)",
    )
    assert stored["row_count"].sum() == table(db, "select count(*) from fedomop_lineage").item()
    assert stored["row_count"].min() >= 1
    assert stored.filter(pl.col("source_row_no").is_null() == pl.col("source_row_text").is_null()).is_empty()
    from_csv = stored.filter(pl.col("source_file").str.ends_with(".csv"))
    assert from_csv.height and from_csv["source_row_text"].null_count() == from_csv.height
    from_fhir = stored.filter(pl.col("source_file").str.ends_with(".ndjson"))
    assert from_fhir.height and from_fhir["source_row_no"].null_count() == from_fhir.height
    assert set(from_fhir["row_count"]) == {1}
    c61 = table(
        db,
        "select l.source_file, l.source_row from condition_occurrence c join fedomop_lineage l "
        "on l.omop_table = 'condition_occurrence' and l.omop_id = c.condition_occurrence_id "
        "where c.condition_source_value in ('C61', '254837009') order by 1",
    )
    assert c61.rows() == [("Condition.000.ndjson", "c1"), ("diagnoses.csv", "1")]
    files = table(db, "select count(*), count(distinct (source, source_file)) from fedomop_lineage_file").row(0)
    assert files[0] == files[1]  # each (source, file) numbered once

"""``fedomop map`` end to end through the real console script, and the PostgreSQL target."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import MappingError
from fedomop.harmonize.run import NothingLoadedError, run_mapping
from tests.conftest import REPO
from tests.harmonize.fixture_site import make_site

FEDOMOP = str(Path(sys.executable).parent / "fedomop")


def test_cli_maps_a_sample_site_and_prints_the_summary(tmp_path: Path) -> None:
    """The real console script on sample site D (FHIR transaction Bundles)."""
    from tests.conftest import MAPPINGS, SAMPLE_DATA

    db = tmp_path / "out" / "site_d.duckdb"
    done = subprocess.run(
        [
            FEDOMOP,
            "map",
            "--mapping",
            str(MAPPINGS / "site_d.yaml"),
            "--source",
            str(SAMPLE_DATA / "site_d"),
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for text in (
        "measurement",
        "3,117",
        "reconciliation per source",
        "observations",
        "3,125",
        "unknown person",
        "reconciliation balanced",
    ):
        assert text in done.stdout, text
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*) from person").fetchone()[0] == 280
        assert con.execute("select count(*) from concept").fetchone()[0] > 50  # the vocabulary came along
        # 8 records, and the 2 unreadable Observations (impossible dates) also reported by observation_components,
        # the second source that reads Observation resources
        assert con.execute("select count(*) from fedomop_quarantine").fetchone()[0] == 10
        assert con.execute("select count(distinct source_row) from fedomop_quarantine").fetchone()[0] == 8


def test_cli_reports_a_malformed_mapping_without_traceback(tmp_path: Path) -> None:
    mapping, source = make_site(tmp_path)
    mapping.write_text(mapping.read_text().replace("on_unmapped: concept_zero", "on_unmapped: ignore"))
    done = subprocess.run(
        [FEDOMOP, "map", "--mapping", str(mapping), "--source", str(source), "--db", str(tmp_path / "x.duckdb")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    assert "MappingError" in done.stderr and "on_unmapped" in done.stderr and "'quarantine'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.postgres
def test_postgresql_target_is_loaded_and_replaced_atomically(tmp_path: Path, postgres_url: str) -> None:
    mapping, source = make_site(tmp_path)
    first = run_mapping(mapping, source, postgres_url)
    second = run_mapping(mapping, source, postgres_url)
    db = connect(postgres_url)
    try:
        assert db.scalar("select count(*) from person") == 3
        assert db.scalar("select count(*) from measurement where measurement_concept_id = 3006906") == 2
        assert db.scalar("select count(distinct run_id) from fedomop_lineage") == 1
        assert db.scalar("select max(run_id) from fedomop_run") == second.run_id != first.run_id
        stages = db.scalar("select count(*) from information_schema.schemata where schema_name like 'fedomop_stage%'")
        assert stages == 0
        # the official DDL's 70 indexes, built after the load in the swapped-in schema (32 of them clustered)
        assert db.scalar("select count(*) from pg_indexes where schemaname = 'public' and indexname like 'idx%'") == 70
        assert db.scalar("select count(*) from pg_index where indisclustered") == 32
        strict, _ = make_site(tmp_path / "strict", {"on_unmapped": "fail"})
        with pytest.raises(MappingError, match="unmapped code"):  # fails midway, in the staging schema
            run_mapping(strict, source, postgres_url)
        assert db.scalar("select count(*) from condition_occurrence") == 5  # previous load intact
    finally:
        db.dispose()


@pytest.mark.postgres
def test_sample_site_c_on_postgresql_matches_duckdb(tmp_path: Path, postgres_url: str) -> None:
    """Site C (latin-1 text, day-first dates, SI units) gives the same tables on PostgreSQL as on DuckDB."""
    from tests.conftest import MAPPINGS, SAMPLE_DATA

    mapping, source = MAPPINGS / "site_c.yaml", SAMPLE_DATA / "site_c"
    on_pg = run_mapping(mapping, source, postgres_url)
    on_duckdb = run_mapping(mapping, source, tmp_path / "site_c.duckdb")
    assert on_pg.loaded == on_duckdb.loaded and on_pg.balanced
    db = connect(postgres_url)
    try:
        calcium = db.scalar(
            "select round(cast(avg(value_as_number) as numeric), 4) from measurement "
            "where measurement_concept_id = 3006906"
        )
        names = db.scalar("select count(*) from location where address_1 like '%é%'")
    finally:
        db.dispose()
    with duckdb.connect(str(tmp_path / "site_c.duckdb"), read_only=True) as con:
        expected = con.execute(
            "select round(avg(value_as_number), 4) from measurement where measurement_concept_id = 3006906"
        ).fetchone()[0]
        expected_names = con.execute("select count(*) from location where address_1 like '%é%'").fetchone()[0]
    assert float(calcium) == pytest.approx(expected) and 8 < float(calcium) < 11  # mg/dL, not mmol/L
    assert names == expected_names > 0  # latin-1 accents arrive intact


def _map_fhir_export(source: Path, db: Path) -> subprocess.CompletedProcess[str]:
    """`fedomop map` of a FHIR export with the standard mapping and the Eunomia vocabulary (FEDOMOP_SHARED)."""
    from tests.conftest import EUNOMIA, MAPPINGS

    return subprocess.run(
        [FEDOMOP, "map", "--mapping", str(MAPPINGS / "fhir_r4.yaml"), "--source", str(source),
         "--db", str(db), "--no-indexes", "--vocabulary", str(EUNOMIA)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_run_that_loads_nothing_exits_1(tmp_path: Path) -> None:
    """A Bundle saved under a Patient NDJSON name: balanced (the line is quarantined), yet nothing loaded - a failure."""
    source = tmp_path / "export"
    source.mkdir()
    (source / "Patient.ndjson").write_text('{"resourceType": "Bundle", "type": "collection", "entry": []}\n')
    done = _map_fhir_export(source, tmp_path / "x.duckdb")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing was loaded" in " ".join(done.stdout.split()) and "Traceback" not in done.stderr


def test_a_run_that_loads_nothing_keeps_the_previous_database(tmp_path: Path) -> None:
    """The site database a federation reads is not swapped for an empty one: a good run of the Synthea bulk
    export (13 Patient lines in Patient.000.ndjson), then the same --db from that export without its Patient
    file (every other record then has an unknown person): exit 1, the summary says the database was not
    replaced, and the 13 persons and the first run stay."""
    from tests.conftest import SYNTHEA_BULK

    db = tmp_path / "site.duckdb"
    good = _map_fhir_export(SYNTHEA_BULK, db)
    assert good.returncode == 0, good.stdout + good.stderr
    with duckdb.connect(str(db), read_only=True) as con:
        first_run = con.sql("SELECT run_id FROM fedomop_run").fetchall()
    broken = tmp_path / "export"
    shutil.copytree(SYNTHEA_BULK, broken)
    (broken / "Patient.000.ndjson").unlink()
    done = _map_fhir_export(broken, db)
    out = " ".join(done.stdout.split())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing was loaded" in out and "previous database was kept" in out and "Traceback" not in done.stderr
    assert "not replaced" in out  # (rich may wrap the long path)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT count(*) FROM person").fetchall() == [(13,)]
        assert con.sql("SELECT run_id FROM fedomop_run").fetchall() == first_run
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the refused run's file is gone


def test_run_mapping_raises_before_the_swap_when_nothing_is_loaded(tmp_path: Path) -> None:
    """The library gives a notebook the same guarantee: a typed error carrying the run's report, no database."""
    from tests.conftest import EUNOMIA, MAPPINGS

    source = tmp_path / "export"
    source.mkdir()
    (source / "Patient.ndjson").write_text('{"resourceType": "Bundle", "type": "collection", "entry": []}\n')
    with pytest.raises(NothingLoadedError) as caught:
        run_mapping(MAPPINGS / "fhir_r4.yaml", source, tmp_path / "x.duckdb", vocabulary=EUNOMIA, indexes=False)
    report = caught.value.report
    assert report is not None and report.records_read == report.records_quarantined > 0
    assert not report.loaded.get("person")
    assert not (tmp_path / "x.duckdb").exists()


def test_the_summary_separates_records_excluded_by_rule_from_errors(tmp_path: Path) -> None:
    """One Condition entered-in-error (an IG status rule) is counted in the quarantine and named as excluded."""
    source = tmp_path / "export"
    source.mkdir()
    (source / "Patient.ndjson").write_text(
        '{"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-02-03"}\n'
    )
    (source / "Condition.ndjson").write_text(
        '{"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},'
        ' "verificationStatus": {"coding": [{"code": "entered-in-error"}]},'
        ' "code": {"coding": [{"system": "http://snomed.info/sct", "code": "254837009"}]},'
        ' "onsetDateTime": "2020-01-02"}\n'
    )
    done = _map_fhir_export(source, tmp_path / "x.duckdb")
    assert done.returncode == 0, done.stdout + done.stderr
    text = " ".join(done.stdout.split())
    assert "1 records were excluded by a mapping rule" in text, text
    assert "read = loaded + excluded + quarantined" in text
    # the Condition source: 1 read, 0 loaded, 1 excluded, 0 quarantined (an exclusion is not an error)
    row = next(line for line in done.stdout.splitlines() if line.strip("│ ").startswith("conditions"))
    assert [cell.strip() for cell in row.strip("│ ").split("│")][:5] == ["conditions", "1", "0", "1", "0"], row

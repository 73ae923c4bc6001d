"""Chunked (person-disjoint, bounded-memory) runs give the same OMOP content as one whole run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import sqlalchemy as sa

from fedomop.harmonize.ground.errors import DatabaseError, MappingError, ReconciliationError
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.run import chunked as site_run
from fedomop.harmonize.run import run_mapping
from fedomop.harmonize.run.build import SiteBuild
from fedomop.harmonize.run.chunking import ChunkPlan, StagedSite, person_columns, plan_chunks
from fedomop.harmonize.run.files import resolve_files
from tests.conftest import EUNOMIA, MAPPINGS, SAMPLE_DATA, SYNTHEA_BULK

VOCABULARY_TABLES = {
    "concept",
    "concept_relationship",
    "concept_ancestor",
    "vocabulary",
    "domain",
    "concept_class",
    "relationship",
    "concept_synonym",
    "drug_strength",
    "source_to_concept_map",
    "cdm_source",
}


def _content_query(con: duckdb.DuckDBPyConnection, db: str, table: str) -> str:
    """A table's rows with engine-assigned ids replaced by what they stand for (ids differ between chunkings)."""
    columns = [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND table_name = ? ORDER BY column_index",
            [db, table],
        ).fetchall()
    ]
    kept = [f'x."{c}"' for c in columns if c.endswith("concept_id") or not c.endswith("_id")]
    if "person_id" in columns:
        kept.append("p.person_source_value")
        return f"SELECT {', '.join(kept)} FROM {db}.{table} x LEFT JOIN {db}.person p USING (person_id)"
    return f"SELECT {', '.join(kept)} FROM {db}.{table} x"


def _differences(whole: Path, chunked: Path) -> dict[str, tuple[int, int]]:
    """Per table, rows only in the whole run and rows only in the chunked run (multisets, ids aside)."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{whole}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{chunked}' AS b (READ_ONLY)")
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'a'").fetchall()]
    found: dict[str, tuple[int, int]] = {}
    for table in sorted(set(tables) - VOCABULARY_TABLES - {"fedomop_run", "fedomop_lineage", "fedomop_vocabulary"}):
        if table == "fedomop_quarantine" or table == "fedomop_reconciliation":
            a, b = (f"SELECT * EXCLUDE (run_id) FROM {db}.{table}" for db in ("a", "b"))
        elif table == "fedomop_lineage_row":  # stored as runs, which chunks cut differently: compare the rows
            a, b = (f"SELECT omop_table, source, source_file, source_row FROM {db}.fedomop_lineage" for db in "ab")
        else:
            a, b = _content_query(con, "a", table), _content_query(con, "b", table)
        only_a = con.execute(f"SELECT count(*) FROM ({a} EXCEPT ALL {b})").fetchone()[0]  # type: ignore[index]
        only_b = con.execute(f"SELECT count(*) FROM ({b} EXCEPT ALL {a})").fetchone()[0]  # type: ignore[index]
        if only_a or only_b:
            found[table] = (only_a, only_b)
    return found


@pytest.mark.parametrize("site", ["site_a", "site_b", "site_c"])  # UTF-8 CSV, FHIR NDJSON, latin-1 CSV
def test_chunked_run_loads_what_a_whole_run_loads(site: str, tmp_path: Path) -> None:
    whole = run_mapping(MAPPINGS / f"{site}.yaml", SAMPLE_DATA / site, tmp_path / "whole.duckdb")
    chunked = run_mapping(MAPPINGS / f"{site}.yaml", SAMPLE_DATA / site, tmp_path / "chunked.duckdb", chunks=3)
    assert (whole.chunks, chunked.chunks) == (1, 3)
    assert chunked.balanced
    assert chunked.loaded == whole.loaded
    assert chunked.quarantine_reasons == whole.quarantine_reasons
    assert chunked.sources == whole.sources
    assert _differences(tmp_path / "whole.duckdb", tmp_path / "chunked.duckdb") == {}


def test_fhir_rows_are_split_block_by_block_as_they_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small reader batches and blocks: a FHIR source reaches its chunks in many files, never whole in memory,
    and the run still loads exactly what a whole run loads."""
    from fedomop.harmonize.run import chunking
    from fedomop.harmonize.sources.fhir import reader as fhir

    whole = run_mapping(MAPPINGS / "site_b.yaml", SAMPLE_DATA / "site_b", tmp_path / "whole.duckdb")
    monkeypatch.setattr(fhir, "BATCH_SIZE", 700)
    monkeypatch.setattr(chunking, "FHIR_BLOCK_ROWS", 2_000)
    blocks: dict[str, list[int]] = {}
    write = chunking._ChunkWriter._write

    def counting_write(writer: chunking._ChunkWriter) -> None:
        blocks.setdefault(writer.folder.parent.name, []).append(writer._pending_rows)
        write(writer)

    monkeypatch.setattr(chunking._ChunkWriter, "_write", counting_write)
    chunked = run_mapping(MAPPINGS / "site_b.yaml", SAMPLE_DATA / "site_b", tmp_path / "chunked.duckdb", chunks=3)
    assert chunked.chunks == 3 and chunked.balanced
    assert chunked.loaded == whole.loaded and chunked.quarantine_reasons == whole.quarantine_reasons
    biggest = max(blocks.values(), key=len)
    assert len(biggest) > 3 and max(biggest) < 2_000 + 700  # many blocks, none much over the block size
    assert _differences(tmp_path / "whole.duckdb", tmp_path / "chunked.duckdb") == {}


def test_chunks_number_ids_without_gaps_or_collisions(tmp_path: Path) -> None:
    db = tmp_path / "chunked.duckdb"
    report = run_mapping(MAPPINGS / "site_a.yaml", SAMPLE_DATA / "site_a", db, chunks=4)
    con = duckdb.connect(str(db), read_only=True)
    for table, column in [
        ("person", "person_id"),
        ("visit_occurrence", "visit_occurrence_id"),
        ("measurement", "measurement_id"),
        ("observation_period", "observation_period_id"),
        ("episode", "episode_id"),
    ]:
        low, high, distinct, rows = con.execute(  # type: ignore[misc]
            f"SELECT min({column}), max({column}), count(DISTINCT {column}), count(*) FROM {table}"
        ).fetchone()
        assert (low, high, distinct) == (1, rows, rows), table
        assert rows == report.loaded[table]
    orphans = con.execute(
        "SELECT count(*) FROM measurement m LEFT JOIN visit_occurrence v USING (visit_occurrence_id) "
        "WHERE m.visit_occurrence_id IS NOT NULL AND v.person_id IS DISTINCT FROM m.person_id"
    ).fetchone()[0]  # type: ignore[index]
    assert orphans == 0  # every event's visit exists and belongs to the same person
    events = con.execute(
        "SELECT count(*) FROM episode_event e JOIN condition_occurrence c ON c.condition_occurrence_id = e.event_id "
        "JOIN episode p USING (episode_id) WHERE p.person_id = c.person_id"
    ).fetchone()[0]  # type: ignore[index]
    assert events == report.loaded["episode_event"]
    lineage = con.execute("SELECT count(*), count(DISTINCT (omop_table, omop_id)) FROM fedomop_lineage").fetchone()
    assert lineage == (report.rows_loaded, report.rows_loaded)


@pytest.mark.slow
def test_shared_sources_are_read_once_and_their_keys_reach_every_chunk(tmp_path: Path) -> None:
    mapping = MAPPINGS / "synthea_bulk.yaml"
    _, shared, _ = person_columns(load_mapping(mapping))
    # Medication resources name no person: read whole once, looked up from every chunk's drug requests
    assert set(shared) == {"locations", "organizations", "practitioners", "medications"}
    whole = run_mapping(mapping, SYNTHEA_BULK, tmp_path / "whole.duckdb", vocabulary=EUNOMIA)
    chunked = run_mapping(mapping, SYNTHEA_BULK, tmp_path / "chunked.duckdb", vocabulary=EUNOMIA, chunks=3)
    assert chunked.loaded == whole.loaded and chunked.balanced
    con = duckdb.connect(str(tmp_path / "chunked.duckdb"), read_only=True)
    linked = con.execute(
        "SELECT count(*) FROM visit_occurrence v JOIN provider USING (provider_id) JOIN care_site c "
        "ON c.care_site_id = v.care_site_id"
    ).fetchone()[0]  # type: ignore[index]
    assert linked == whole.loaded["visit_occurrence"]
    assert _differences(tmp_path / "whole.duckdb", tmp_path / "chunked.duckdb") == {}


def test_broken_files_are_quarantined_once_in_a_chunked_run(tmp_path: Path) -> None:
    """A ragged CSV and a cp1252 file cannot be streamed: they are read whole, split, and their rejects kept."""
    site = tmp_path / "site_a"
    shutil.copytree(SAMPLE_DATA / "site_a", site)
    with (site / "conditions.csv").open("a", encoding="utf-8") as handle:
        handle.write("A9999999,too,many,fields,in,this,row,for,the,header\n")
    medications = site / "medications.csv"
    medications.write_bytes(medications.read_bytes() + "A0000001,A0000001-V01,caf\xe9,1,2020-01-01\n".encode("cp1252"))
    # rows polars would stream as they are: a short row (null-filled), a blank line (a record of nulls), a NUL
    procedures = site / "procedures.csv"
    procedures.write_text(procedures.read_text(encoding="utf-8") + "A0000001,A0000001-V01\n", encoding="utf-8")
    encounters = (site / "encounters.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (site / "encounters.csv").write_text("".join([*encounters[:5], "\n", *encounters[5:]]), encoding="utf-8")
    observations = (site / "observations.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    observations[3] = observations[3].replace(",", ",\x00", 1)
    (site / "observations.csv").write_text("".join(observations), encoding="utf-8")
    whole = run_mapping(MAPPINGS / "site_a.yaml", site, tmp_path / "whole.duckdb")
    chunked = run_mapping(MAPPINGS / "site_a.yaml", site, tmp_path / "chunked.duckdb", chunks=2)
    assert chunked.balanced and chunked.sources == whole.sources
    assert chunked.quarantine_reasons == whole.quarantine_reasons
    assert chunked.sources["encounters"] == len(encounters) - 1  # the blank line is not a record
    reasons = chunked.quarantine_reasons
    assert sum(n for r, n in reasons.items() if r.startswith("wrong number of fields")) == 2  # long + short
    assert any(r.startswith("control character U+0000") for r in reasons)
    assert any(r.startswith("encoding error") for r in reasons)
    assert _differences(tmp_path / "whole.duckdb", tmp_path / "chunked.duckdb") == {}


def _site_a_variant(path: Path, old: str, new: str) -> Path:
    """site_a.yaml with one text replaced, written elsewhere (its relative paths made absolute)."""
    text = (MAPPINGS / "site_a.yaml").read_text(encoding="utf-8")
    assert old in text
    path.write_text(
        text.replace(old, new, 1)
        .replace("../sample_data/vocabulary", str(SAMPLE_DATA / "vocabulary"))
        .replace("include: [common/oncology.yaml]", f"include: [{MAPPINGS / 'common' / 'oncology.yaml'}]"),
        encoding="utf-8",
    )
    return path


def test_plan_follows_the_size_budget_and_refuses_unsplittable_mappings(tmp_path: Path) -> None:
    mapping = load_mapping(MAPPINGS / "site_a.yaml")
    files = resolve_files(mapping, SAMPLE_DATA / "site_a")
    assert plan_chunks(mapping, files).chunks == 1  # a few MB: one chunk
    assert plan_chunks(mapping, files, chunk_mb=1).chunks > 1
    assert plan_chunks(mapping, files, chunks=5) == ChunkPlan(5, person_columns(mapping)[0], (), "")
    odd = _site_a_variant(  # the death rule names the person in another column than the person rule
        tmp_path / "odd.yaml",
        "      when: {column: death_date, not_null: true}\n      person: patient_id",
        "      when: {column: death_date, not_null: true}\n      person: zip",
    )
    odd_mapping = load_mapping(odd)
    plan = plan_chunks(odd_mapping, resolve_files(odd_mapping, SAMPLE_DATA / "site_a"), chunks=4)
    assert plan.chunks == 1 and "patients" in plan.reason and "zip" in plan.reason
    with pytest.raises(MappingError, match="cannot map in 4 chunks: source 'patients' names its person"):
        run_mapping(odd, SAMPLE_DATA / "site_a", tmp_path / "odd.duckdb", chunks=4)
    report = run_mapping(odd, SAMPLE_DATA / "site_a", tmp_path / "odd.duckdb", chunk_mb=1)  # big: mapped whole
    assert report.chunks == 1 and "zip" in report.unsplit_reason and report.balanced


def test_a_person_split_source_keying_shared_rows_by_another_column_is_mapped_whole(tmp_path: Path) -> None:
    """Providers built from encounters by NPI: other persons' events point at them, so chunks would lose links."""
    mapping = _site_a_variant(
        tmp_path / "npi.yaml", "tables:\n", "tables:\n  provider:\n    - source: encounters\n      id: encounter_type\n"
    )
    npi = load_mapping(mapping)
    plan = plan_chunks(npi, resolve_files(npi, SAMPLE_DATA / "site_a"), chunks=3)
    assert plan.chunks == 1
    assert plan.reason.startswith("source 'encounters' is split by person (patient_id) but also builds provider")


def test_latin1_file_with_a_ragged_row_is_quarantined_not_a_crash(tmp_path: Path) -> None:
    site = tmp_path / "site_c"
    shutil.copytree(SAMPLE_DATA / "site_c", site)
    with (site / "actes.csv").open("a", encoding="latin-1") as handle:
        handle.write("0000000001;S000000102;BIOP_SEIN;Biopsie mal coupée;08/10/2016;en trop\n")
    whole = run_mapping(MAPPINGS / "site_c.yaml", site, tmp_path / "whole.duckdb")
    chunked = run_mapping(MAPPINGS / "site_c.yaml", site, tmp_path / "chunked.duckdb", chunks=2)
    assert whole.balanced and chunked.balanced
    assert whole.quarantine_reasons.get("wrong number of fields") == 1
    assert chunked.quarantine_reasons == whole.quarantine_reasons
    assert _differences(tmp_path / "whole.duckdb", tmp_path / "chunked.duckdb") == {}


def test_a_chunk_that_loses_records_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records lost between the split and the mapping (here: a split file removed) fail reconciliation."""
    original = StagedSite.stage

    def stage_then_lose_a_file(self: StagedSite, name: str) -> None:
        original(self, name)
        if name == "observations":
            shutil.rmtree(self.scratch / name / "0" / "_chunk=1")

    monkeypatch.setattr(StagedSite, "stage", stage_then_lose_a_file)
    target = tmp_path / "site.duckdb"
    with pytest.raises(ReconciliationError, match="source 'observations': the split wrote"):
        run_mapping(MAPPINGS / "site_a.yaml", SAMPLE_DATA / "site_a", target, chunks=3)
    assert not target.exists()  # nothing swapped in


def test_a_build_error_is_reported_even_if_the_background_load_failed_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = {"n": 0}
    load_tables = site_run.load_tables

    def second_load_fails(*args: object, **kwargs: object) -> dict[str, int]:
        loads["n"] += 1
        if loads["n"] == 2:
            raise DatabaseError("disk full", where="test", fix="none")
        return load_tables(*args, **kwargs)  # type: ignore[arg-type]

    builds = {"n": 0}
    build_events = SiteBuild.build_events

    def third_build_fails(self: SiteBuild) -> None:
        builds["n"] += 1
        if builds["n"] == 3:
            raise MappingError("bad rule", where="test", fix="none")
        build_events(self)

    monkeypatch.setattr(site_run, "load_tables", second_load_fails)
    monkeypatch.setattr(SiteBuild, "build_events", third_build_fails)
    with pytest.raises(MappingError, match="bad rule") as raised:
        run_mapping(MAPPINGS / "site_a.yaml", SAMPLE_DATA / "site_a", tmp_path / "site.duckdb", chunks=4, workers=1)
    notes = raised.value.__notes__
    assert any("loading in the background also failed" in n and "disk full" in n for n in notes), notes


def test_map_cli_chunks_a_site(tmp_path: Path) -> None:
    db = tmp_path / "site.duckdb"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("fedomop")),
            "map",
            "--mapping",
            str(MAPPINGS / "site_c.yaml"),
            "--source",
            str(SAMPLE_DATA / "site_c"),
            "--db",
            str(db),
            "--chunks",
            "2",
            "--scratch",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "mapped in 2 person-disjoint chunks" in done.stdout
    assert "reconciliation balanced" in done.stdout
    # the split sources were removed; the site's vocabulary store stays beside its database
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site.duckdb", "site.duckdb.vocabulary"]


def test_chunked_run_into_postgres(postgres_url: str, tmp_path: Path) -> None:
    report = run_mapping(MAPPINGS / "site_d.yaml", SAMPLE_DATA / "site_d", postgres_url, chunks=3)
    whole = run_mapping(MAPPINGS / "site_d.yaml", SAMPLE_DATA / "site_d", tmp_path / "whole.duckdb")
    assert report.balanced and report.loaded == whole.loaded
    engine = sa.create_engine(postgres_url)
    with engine.connect() as connection:
        persons = connection.execute(sa.text("SELECT count(*), max(person_id) FROM person")).one()
        lineage = connection.execute(sa.text("SELECT count(*) FROM fedomop_lineage")).scalar_one()
    engine.dispose()
    assert tuple(persons) == (whole.loaded["person"], whole.loaded["person"])
    assert lineage == report.rows_loaded


def test_split_files_hold_only_the_columns_the_mapping_names(tmp_path: Path) -> None:
    """Site A's patients file carries first and last names and its observations a free-text description; no
    rule of site_a.yaml reads them, so they are not copied into the scratch split (and the run is unchanged:
    test_chunked_run_loads_what_a_whole_run_loads)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    original = StagedSite.stage
    seen: dict[str, set[str]] = {}

    def stage_and_look(self: StagedSite, name: str) -> None:
        original(self, name)
        files = sorted((self.scratch / name).glob("*/_chunk=*/*.parquet"))
        seen[name] = set(pl.read_parquet_schema(files[0]))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StagedSite, "stage", stage_and_look)
        report = run_mapping(
            MAPPINGS / "site_a.yaml", SAMPLE_DATA / "site_a", tmp_path / "a.duckdb", chunks=2, scratch=scratch
        )
    assert report.balanced
    header = (SAMPLE_DATA / "site_a" / "patients.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert {"first_name", "last_name"} <= set(header)
    assert seen["patients"] == {
        "patient_id",
        "sex",
        "birth_date",
        "race",
        "ethnicity",
        "address",
        "city",
        "zip",
        "death_date",
        "_source_file",
        "_source_row",
    }
    assert "description" not in seen["observations"]
    assert {"patient_id", "encounter_id", "loinc_code", "value", "unit", "observed_on"} <= seen["observations"]


def test_padded_values_are_trimmed_and_unpadded_files_load_as_before(tmp_path: Path) -> None:
    """The split trims values only in files whose row check saw a field that may be padded. A copy of site A
    whose observations have spaces, a tab and a NO-BREAK SPACE around values (docs/mapping.md: values are
    trimmed) must load exactly what the original loads, in chunks as in one piece."""
    padded = tmp_path / "site_a"
    shutil.copytree(SAMPLE_DATA / "site_a", padded)
    lines = (padded / "observations.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    edits = {1: (0, " {}"), 2: (2, "{}  "), 3: (4, "\t{}"), 4: (5, "\u00a0{}"), 5: (6, "{}\u2003")}
    for row, (field, form) in edits.items():
        fields = lines[row].rstrip("\n").split(",")
        fields[field] = form.format(fields[field])
        lines[row] = ",".join(fields) + "\n"
    (padded / "observations.csv").write_text("".join(lines), encoding="utf-8")
    runs = {
        name: run_mapping(MAPPINGS / "site_a.yaml", source, tmp_path / f"{name}.duckdb", chunks=chunks)
        for name, source, chunks in (
            ("original", SAMPLE_DATA / "site_a", 2),
            ("padded_chunked", padded, 2),
            ("padded_whole", padded, 1),
        )
    }
    assert runs["padded_chunked"].loaded == runs["original"].loaded
    assert _differences(tmp_path / "original.duckdb", tmp_path / "padded_chunked.duckdb") == {}
    assert _differences(tmp_path / "padded_whole.duckdb", tmp_path / "padded_chunked.duckdb") == {}

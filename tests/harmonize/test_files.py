"""A run's files: matched once, kept inside --source, absent sources counted as 0 and named."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from fedomop.harmonize.ground.errors import MappingError, SourceError
from fedomop.harmonize.run import run_mapping
from tests.harmonize.fixture_site import MAPPING, make_site

FEDOMOP = str(Path(sys.executable).parent / "fedomop")
SECRET = "root:x:0:0:do-not-echo-this-line"


def _sources(changes: dict[str, dict[str, object]]) -> dict[str, object]:
    sources = copy.deepcopy(MAPPING["sources"])
    for name, change in changes.items():
        sources[name] = {**sources[name], **change}
    return sources


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("/etc/passwd", "is an absolute path"),
        ("../outside/labs.csv", "steps out of the source folder"),
        ("sub/../../outside/labs.csv", "steps out of the source folder"),
    ],
)
def test_a_pattern_outside_the_source_folder_is_refused_before_reading(
    tmp_path: Path, pattern: str, message: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "labs.csv").write_text(f"{SECRET}\n")
    mapping, source = make_site(tmp_path / "site", {"sources": _sources({"labs": {"files": pattern}})})
    with pytest.raises(MappingError, match=message) as error:
        run_mapping(mapping, source, tmp_path / "site.duckdb")
    assert "sources.labs.files" in str(error.value) and SECRET not in str(error.value)
    assert not (tmp_path / "site.duckdb").exists()


def test_a_symlink_to_a_file_outside_the_source_folder_is_refused(tmp_path: Path) -> None:
    mapping, source = make_site(tmp_path / "site")
    secret = tmp_path / "secret.csv"
    secret.write_text(f"{SECRET}\n")
    (source / "labs.csv").unlink()
    os.symlink(secret, source / "labs.csv")
    with pytest.raises(MappingError, match="links to a file outside the source folder") as error:
        run_mapping(mapping, source, tmp_path / "site.duckdb")
    assert SECRET not in str(error.value)


def test_source_to_concept_map_outside_the_source_folder_is_refused(tmp_path: Path) -> None:
    vocabulary = {**MAPPING["vocabulary"], "source_to_concept_map": "../../etc/passwd"}
    mapping, source = make_site(tmp_path / "site", {"vocabulary": vocabulary})
    with pytest.raises(MappingError, match="steps out of the source folder") as error:
        run_mapping(mapping, source, tmp_path / "site.duckdb")
    assert "vocabulary.source_to_concept_map" in str(error.value)


def test_an_absent_source_counts_zero_records_and_is_named(tmp_path: Path) -> None:
    """A Bulk Data export has files only for the types it holds: no Condition file is 0 conditions, not an error."""
    mapping, source = make_site(tmp_path / "site")
    (source / "Condition.000.ndjson").unlink()
    db = tmp_path / "site.duckdb"
    report = run_mapping(mapping, source, db)
    assert report.balanced and report.absent_sources == ["conditions"]
    assert "conditions" not in report.sources
    with duckdb.connect(str(db), read_only=True) as con:
        # the fixture's two CSV diagnoses still load; none came from the (absent) FHIR conditions
        assert (
            con.execute("select count(*) from fedomop_lineage where source_file like 'Condition%'").fetchone()[0] == 0
        )
    done = subprocess.run(
        [FEDOMOP, "map", "--mapping", str(mapping), "--source", str(source), "--db", str(tmp_path / "cli.duckdb")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "sources with no file" in done.stdout and "conditions" in done.stdout


def test_a_required_source_without_files_is_an_error(tmp_path: Path) -> None:
    mapping, source = make_site(tmp_path / "site", {"sources": _sources({"conditions": {"required": True}})})
    (source / "Condition.000.ndjson").unlink()
    with pytest.raises(SourceError, match="no file matches 'Condition\\*.ndjson' and the source is required"):
        run_mapping(mapping, source, tmp_path / "site.duckdb")


def test_a_missing_named_file_is_an_error_with_the_closest_names(tmp_path: Path) -> None:
    """`files: lab.csv` (a file name, no glob) where the folder has labs.csv: a typo, not an empty source - the
    run stops (exit 2) naming the source, the file and the near miss, and writes no database."""
    mapping, source = make_site(tmp_path / "site", {"sources": _sources({"labs": {"files": "lab.csv"}})})
    with pytest.raises(SourceError, match="no file named 'lab.csv' \\(the folder has 'labs.csv'") as error:
        run_mapping(mapping, source, tmp_path / "site.duckdb")
    assert "sources.labs.files" in str(error.value) and "required: false" in str(error.value)
    done = subprocess.run(
        [FEDOMOP, "map", "--mapping", str(mapping), "--source", str(source), "--db", str(tmp_path / "cli.duckdb")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "no file named 'lab.csv'" in " ".join(done.stderr.split()), done.stderr
    assert not (tmp_path / "site.duckdb").exists() and not (tmp_path / "cli.duckdb").exists()


def test_a_named_file_declared_optional_may_be_missing(tmp_path: Path) -> None:
    """`required: false` keeps a named file optional: absent, 0 records, named in the summary."""
    changes = {"labs": {"files": "labs.csv", "required": False}}
    mapping, source = make_site(tmp_path / "site", {"sources": _sources(changes)})
    (source / "labs.csv").unlink()
    report = run_mapping(mapping, source, tmp_path / "site.duckdb")
    assert report.balanced and report.absent_sources == ["labs"] and "labs" not in report.sources


def test_a_folder_where_no_source_finds_a_file_is_an_error(tmp_path: Path) -> None:
    mapping, _ = make_site(tmp_path / "site")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no file in the source folder matches any source"):
        run_mapping(mapping, empty, tmp_path / "site.duckdb")


def test_every_file_of_a_source_has_its_header_checked(tmp_path: Path) -> None:
    """A second lab file without the unit column would load values without units: refused before the run."""
    mapping, source = make_site(tmp_path / "site", {"sources": _sources({"labs": {"files": "labs*.csv"}})})
    (source / "labs_2.csv").write_text("lab_id,patient_id,lab_date,loinc,value\nL9,P1,2020-01-01,17861-6,9.1\n")
    with pytest.raises(MappingError, match="column 'unit' does not exist in source 'labs' \\(header of labs_2.csv\\)"):
        run_mapping(mapping, source, tmp_path / "site.duckdb")

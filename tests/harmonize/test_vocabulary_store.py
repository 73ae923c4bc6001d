"""The vocabulary is loaded once per site and reused by every run; a changed release is loaded again (issue 18).

A DuckDB site keeps its release in a store beside the database (``<db>.vocabulary``); each run's database starts
as a copy of it. ``fedomop_vocabulary.load_id`` names the load a database's vocabulary came from, so an equal
load id in two runs proves the second did not reload; ``fedomop_run.vocabulary_version`` records the release.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb

from fedomop.harmonize.run.run import run_mapping
from fedomop.harmonize.vocabulary.store import store_path, vocabulary_version
from tests.conftest import SAMPLE_DATA
from tests.harmonize.fixture_site import MAPPING, make_site


def _vocabulary_of(db: Path) -> tuple[str, str, int, str]:
    """(load_id, version loaded, concepts in the database, version the run recorded)."""
    with duckdb.connect(str(db), read_only=True) as con:
        load_id, version = con.execute("SELECT load_id, version FROM fedomop_vocabulary").fetchone()  # type: ignore[misc]
        concepts = con.execute("SELECT COUNT(*) FROM concept").fetchone()[0]  # type: ignore[index]
        recorded = con.execute("SELECT vocabulary_version FROM fedomop_run").fetchone()[0]  # type: ignore[index]
    return load_id, version, concepts, recorded


def test_second_run_reuses_the_vocabulary_and_a_changed_release_is_reloaded(tmp_path: Path) -> None:
    vocabulary = tmp_path / "vocabulary"
    shutil.copytree(SAMPLE_DATA / "vocabulary", vocabulary)
    mapping, source = make_site(tmp_path, {"vocabulary": {**MAPPING["vocabulary"], "folder": str(vocabulary)}})
    db = tmp_path / "site.duckdb"

    run_mapping(mapping, source, db, indexes=False)
    first = _vocabulary_of(db)
    assert first[1] == first[3] == vocabulary_version(vocabulary)
    store = store_path(db)
    assert store.name == "site.duckdb.vocabulary" and store.exists()
    stored_at = store.stat().st_mtime_ns

    run_mapping(mapping, source, db, indexes=False)
    second = _vocabulary_of(db)
    assert second == first  # same load: copied from the store, not parsed again
    assert store.stat().st_mtime_ns == stored_at

    concept_file = vocabulary / "CONCEPT.csv"
    text = concept_file.read_text(encoding="utf-8")
    concept_file.write_text(text + "2000000001\tA local test concept\tCondition\tSNOMED\tClinical Finding\t\t"
                            "local-1\t19700101\t20991231\t\n", encoding="utf-8")  # fmt: skip
    os.utime(concept_file, ns=(stored_at + 10**9, stored_at + 10**9))  # a new file time even on coarse clocks
    run_mapping(mapping, source, db, indexes=False)
    third = _vocabulary_of(db)
    assert third[0] != first[0]  # loaded again
    assert third[1] == third[3] == vocabulary_version(vocabulary) != first[1]
    assert third[2] == first[2] + 1  # the release's new concept is there
    assert not list(tmp_path.glob("*.tmp-*"))  # nothing left aside

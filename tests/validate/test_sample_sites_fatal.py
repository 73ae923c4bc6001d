"""Clean sample sites pass every fatal check, and the vocabulary subset holds every concept the engine writes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.run import run_mapping
from fedomop.harmonize.tables.cdm_source import CDM_VERSION_CONCEPT_ID
from fedomop.harmonize.tables.episode_event import CONDITION_OCCURRENCE_ID_FIELD
from fedomop.harmonize.validate.checks import run_checks
from tests.conftest import MAPPINGS, SAMPLE_DATA
from tests.validate.conftest import TODAY

VOCABULARY = SAMPLE_DATA / "vocabulary"
SITES = ("site_a", "site_b", "site_c", "site_d")
# Concept ids the vocabulary tables themselves store: each must resolve in CONCEPT.
META_COLUMNS = {
    "VOCABULARY": "vocabulary_concept_id",
    "DOMAIN": "domain_concept_id",
    "CONCEPT_CLASS": "concept_class_concept_id",
    "RELATIONSHIP": "relationship_concept_id",
}


def _rows(name: str) -> list[dict[str, str]]:
    with (VOCABULARY / f"{name}.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def _concept_ids() -> set[int]:
    return {int(r["concept_id"]) for r in _rows("CONCEPT")}


def _mapping_concept_ids(node: object, key: str = "") -> set[int]:
    """Every concept id a mapping file hard-codes: `concept_id: N` values and `*_concept: {constant: N}`."""
    found: set[int] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "concept_id" and isinstance(v, int):
                found.add(v)
            elif k == "constant" and key.endswith("concept") and isinstance(v, int):
                found.add(v)
            else:
                found |= _mapping_concept_ids(v, str(k))
    elif isinstance(node, list):
        for item in node:
            found |= _mapping_concept_ids(item, key)
    return found


def _mapping_files() -> list[Path]:
    return [MAPPINGS / f"{site}.yaml" for site in SITES] + sorted((MAPPINGS / "common").glob("*.yaml"))


def test_vocabulary_tables_point_only_at_concepts_in_the_subset() -> None:
    ids = _concept_ids()
    for table, column in META_COLUMNS.items():
        orphans = {r[column] for r in _rows(table) if int(r[column]) not in ids}
        assert orphans == set(), f"{table}.{column} values not in CONCEPT: {orphans}"
    # The domain concepts are in the subset, so DOMAIN keeps their real ids (not the 0 fallback).
    assert {r["domain_id"]: int(r["domain_concept_id"]) for r in _rows("DOMAIN")}["Condition"] == 19


def test_every_concept_the_engine_and_sample_mappings_write_is_in_the_subset() -> None:
    ids = _concept_ids()
    hard_coded = {0, CDM_VERSION_CONCEPT_ID, CONDITION_OCCURRENCE_ID_FIELD}
    from_mappings: set[int] = set()
    for path in _mapping_files():
        from_mappings |= _mapping_concept_ids(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert {32528, 32817, 8507} <= from_mappings  # the walker finds episode, type and value-map concepts
    assert (hard_coded | from_mappings) - ids == set()
    stcm_sources: set[int] = set()
    for site in SITES:
        stcm = SAMPLE_DATA / site / "source_to_concept_map.csv"
        if stcm.exists():
            with stcm.open(encoding="utf-8", newline="") as handle:
                stcm_sources |= {int(r["source_concept_id"]) for r in csv.DictReader(handle)}
    assert stcm_sources and stcm_sources - ids == set()


@pytest.mark.slow
@pytest.mark.parametrize("site", SITES)
def test_clean_sample_site_passes_every_fatal_check(site: str, tmp_path: Path) -> None:
    db_path = tmp_path / f"{site}.duckdb"
    run_mapping(MAPPINGS / f"{site}.yaml", SAMPLE_DATA / site, db_path)
    db = connect(db_path, read_only=True)
    try:
        results = {r.check_id: r for r in run_checks(db, today=TODAY).results}
    finally:
        db.dispose()
    fatal = [r for r in results.values() if r.severity == "fatal"]
    failed = [f"{r.check_id} ({r.num_violated_rows} rows)" for r in fatal if r.status in ("fail", "error")]
    assert failed == []
    assert sum(r.status == "pass" for r in fatal) > 500
    # The references that used to dangle (unmapped 0s, episode and CDM meta-concepts, vocabulary tables) are
    # checked on real rows, not skipped.
    for check_id in (
        "isForeignKey.condition_occurrence.condition_source_concept_id",
        "isForeignKey.person.race_concept_id",
        "isForeignKey.episode.episode_concept_id",
        "isForeignKey.episode_event.episode_event_field_concept_id",
        "isForeignKey.cdm_source.cdm_version_concept_id",
        "isForeignKey.domain.domain_concept_id",
        "isForeignKey.vocabulary.vocabulary_concept_id",
    ):
        assert results[check_id].status == "pass", check_id

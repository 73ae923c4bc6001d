"""Source code -> standard concept on real Eunomia codes, site source_to_concept_map, multi-target maps."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.ground.errors import VocabularyError
from fedomop.harmonize.vocabulary import (
    descendants,
    load_source_to_concept_map,
    load_vocabulary,
    resolve_codes,
    standard_concept_by_code,
)

from ..conftest import EUNOMIA
from .conftest import read_eunomia, write_athena

STCM_HEADER = (
    "source_code,source_concept_id,source_vocabulary_id,source_code_description,target_concept_id,"
    "target_vocabulary_id,valid_start_date,valid_end_date,invalid_reason"
)


def resolve_one(db: Database, vocabulary: str, code: str) -> list[dict]:
    return resolve_codes(db, pl.DataFrame({"vocabulary_id": [vocabulary], "source_code": [code]})).to_dicts()


def test_non_standard_snomed_code_maps_to_its_standard_concept(eunomia_db: Database) -> None:
    # 275272006 "Brain damage - traumatic" (4166590, upgraded) Maps to 127295002 "Traumatic brain injury".
    [row] = resolve_one(eunomia_db, "SNOMED", "275272006")
    assert row == {
        "vocabulary_id": "SNOMED",
        "source_code": "275272006",
        "source_concept_id": 4166590,
        "concept_id": 4132546,
        "domain_id": "Condition",
        "concept_name": "Traumatic brain injury",
        "mapped_via": "maps_to",
    }


def test_standard_codes_map_to_themselves(eunomia_db: Database) -> None:
    [otitis] = resolve_one(eunomia_db, "SNOMED", "65363002")
    assert (otitis["source_concept_id"], otitis["concept_id"], otitis["domain_id"]) == (372328, 372328, "Condition")
    [weight] = resolve_one(eunomia_db, "LOINC", "29463-7")
    assert (weight["concept_id"], weight["domain_id"], weight["concept_name"]) == (
        3025315,
        "Measurement",
        "Body weight",
    )
    # A non-standard UCUM unit: "y" (8528) Maps to "a" (9448, year).
    [year] = resolve_one(eunomia_db, "UCUM", "y")
    assert (year["source_concept_id"], year["concept_id"], year["domain_id"]) == (8528, 9448, "Unit")


def test_unknown_and_unmappable_codes_give_zero(eunomia_db: Database) -> None:
    [unknown] = resolve_one(eunomia_db, "SNOMED", "000000")
    assert (unknown["source_concept_id"], unknown["concept_id"], unknown["domain_id"], unknown["mapped_via"]) == (
        0,
        0,
        None,
        None,
    )
    # 316744009 is in CONCEPT (40521057, deprecated) but has no "Maps to": known source, no standard target.
    [deprecated] = resolve_one(eunomia_db, "SNOMED", "316744009")
    assert (deprecated["source_concept_id"], deprecated["concept_id"], deprecated["mapped_via"]) == (40521057, 0, None)
    # Matching is exact: the vocabulary matters and codes are not trimmed or case-folded.
    assert resolve_one(eunomia_db, "LOINC", "65363002")[0]["concept_id"] == 0
    assert resolve_one(eunomia_db, "SNOMED", " 65363002")[0]["concept_id"] == 0


def test_many_codes_keep_order_and_pass_other_columns_through(eunomia_db: Database) -> None:
    codes = pl.DataFrame(
        {
            "vocabulary_id": ["LOINC", "SNOMED", None, "SNOMED", "LOINC"],
            "source_code": ["29463-7", "275272006", "x", "nope", "29463-7"],
            "row_id": [10, 11, 12, 13, 14],
        }
    )
    out = resolve_codes(eunomia_db, codes)
    assert out.get_column("row_id").to_list() == [10, 11, 12, 13, 14]
    assert out.get_column("concept_id").to_list() == [3025315, 4132546, 0, 0, 3025315]
    assert out.schema["concept_id"] == pl.Int64 and out.schema["domain_id"] == pl.String
    assert resolve_codes(eunomia_db, codes.clear()).columns == out.columns


def test_resolution_of_all_eunomia_condition_codes_matches_the_cdm(eunomia_db: Database) -> None:
    """Eunomia's own ETL mapped condition_source_value (SNOMED) to condition_concept_id: we agree on every row."""
    conditions = pl.read_csv(EUNOMIA / "CONDITION_OCCURRENCE.csv", infer_schema=False).select(
        pl.lit("SNOMED").alias("vocabulary_id"),
        pl.col("condition_source_value").alias("source_code"),
        pl.col("condition_concept_id").cast(pl.Int64).alias("expected"),
    )
    out = resolve_codes(eunomia_db, conditions)
    assert out.height == conditions.height == 470
    assert (out.get_column("concept_id") == out.get_column("expected")).all()
    assert set(out.get_column("domain_id").to_list()) == {"Condition"}


def vocabulary_with_local_codes(folder: Path) -> Path:
    """Eunomia concepts plus a site-local vocabulary (ids >= 2,000,000,000, as OMOP reserves for local use):
    a combination code with two real targets, and a code whose only "Maps to" is deprecated."""
    concept = read_eunomia("CONCEPT")
    local = [
        {"concept_id": "2000000001", "concept_name": "Otitis media with brain injury", "concept_code": "OM+TBI"},
        {"concept_id": "2000000002", "concept_name": "Retired local code", "concept_code": "OLD1"},
    ]
    base = {c: "" for c in concept.columns} | {
        "domain_id": "Condition",
        "vocabulary_id": "SITE_DX",
        "concept_class_id": "Clinical Finding",
        "valid_start_date": "2020-01-01",
        "valid_end_date": "2099-12-31",
    }
    write_athena(pl.concat([concept, pl.DataFrame([base | row for row in local])]), folder / "CONCEPT.csv")
    relationships = read_eunomia("CONCEPT_RELATIONSHIP")
    added = [
        ("2000000001", "372328", "Maps to", ""),
        ("2000000001", "4132546", "Maps to", ""),
        ("2000000002", "372328", "Maps to", "D"),
    ]
    extra = pl.DataFrame(
        [
            dict(zip(("concept_id_1", "concept_id_2", "relationship_id", "invalid_reason"), r, strict=True))
            | {"valid_start_date": "2020-01-01", "valid_end_date": "2099-12-31"}
            for r in added
        ]
    ).select(relationships.columns)
    write_athena(pl.concat([relationships, extra]), folder / "CONCEPT_RELATIONSHIP.csv")
    return folder


@pytest.fixture()
def local_db(tmp_path: Path) -> Database:
    db = connect(tmp_path / "local.duckdb")
    load_vocabulary(db, vocabulary_with_local_codes(tmp_path))
    return db


def test_code_with_several_maps_to_targets_yields_one_row_per_target(local_db: Database) -> None:
    codes = pl.DataFrame(
        {"vocabulary_id": ["SNOMED", "SITE_DX", "LOINC"], "source_code": ["65363002", "OM+TBI", "29463-7"]}
    )
    out = resolve_codes(local_db, codes)
    assert out.select("source_code", "source_concept_id", "concept_id", "domain_id").rows() == [
        ("65363002", 372328, 372328, "Condition"),
        ("OM+TBI", 2000000001, 372328, "Condition"),
        ("OM+TBI", 2000000001, 4132546, "Condition"),
        ("29463-7", 3025315, 3025315, "Measurement"),
    ]


def test_invalid_relationships_are_ignored(local_db: Database) -> None:
    [row] = resolve_one(local_db, "SITE_DX", "OLD1")
    assert (row["source_concept_id"], row["concept_id"], row["mapped_via"]) == (2000000002, 0, None)


def write_stcm(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([STCM_HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def test_site_source_to_concept_map_wins_over_the_vocabulary(local_db: Database, tmp_path: Path) -> None:
    stcm = write_stcm(
        tmp_path / "stcm.csv",
        [
            # a local code that is in no vocabulary
            "K-77,0,HOSP_DX,Local otitis code,372328,SNOMED,2020-01-01,2099-12-31,",
            # override the vocabulary's own mapping of a standard SNOMED code
            "65363002,0,SNOMED,Site says TBI,4132546,SNOMED,2020-01-01,2099-12-31,",
            # a retired site row is ignored
            "29463-7,0,LOINC,retired,372328,SNOMED,2020-01-01,2021-12-31,D",
        ],
    )
    assert load_source_to_concept_map(local_db, stcm) == 3
    codes = pl.DataFrame(
        {"vocabulary_id": ["HOSP_DX", "SNOMED", "LOINC"], "source_code": ["K-77", "65363002", "29463-7"]}
    )
    out = resolve_codes(local_db, codes).select("source_code", "source_concept_id", "concept_id", "mapped_via")
    assert out.rows() == [
        ("K-77", 0, 372328, "source_to_concept_map"),
        ("65363002", 372328, 4132546, "source_to_concept_map"),
        ("29463-7", 3025315, 3025315, "maps_to"),
    ]
    # Site mappings survive a vocabulary reload; a second file is appended.
    load_vocabulary(local_db, EUNOMIA)
    write_stcm(tmp_path / "more.csv", ["K-78,0,HOSP_DX,,4132546,SNOMED,20200101,20991231,"])
    assert load_source_to_concept_map(local_db, tmp_path / "more.csv") == 1
    assert local_db.scalar("SELECT COUNT(*) FROM source_to_concept_map") == 4
    assert resolve_one(local_db, "HOSP_DX", "K-77")[0]["concept_id"] == 372328


def test_source_to_concept_map_with_unknown_target_is_refused_whole(local_db: Database, tmp_path: Path) -> None:
    stcm = write_stcm(
        tmp_path / "stcm.csv",
        ["A,0,HOSP_DX,,372328,SNOMED,2020-01-01,2099-12-31,", "B,0,HOSP_DX,,999999999,SNOMED,2020-01-01,2099-12-31,"],
    )
    with pytest.raises(VocabularyError, match="target_concept_id 999999999 is not in the CONCEPT table") as caught:
        load_source_to_concept_map(local_db, stcm)
    assert "stcm.csv line 3, field target_concept_id" in (caught.value.where or "")
    assert local_db.scalar("SELECT COUNT(*) FROM source_to_concept_map") == 0


def test_standard_concept_by_code(eunomia_db: Database) -> None:
    assert standard_concept_by_code(eunomia_db, "SNOMED", "65363002") == 372328
    assert standard_concept_by_code(eunomia_db, "LOINC", "29463-7") == 3025315
    with pytest.raises(VocabularyError, match="not a valid standard concept"):
        standard_concept_by_code(eunomia_db, "SNOMED", "275272006")
    with pytest.raises(VocabularyError, match="no concept SNOMED '123'"):
        standard_concept_by_code(eunomia_db, "SNOMED", "123")


def test_descendants_follow_concept_ancestor(tmp_path: Path) -> None:
    """CONCEPT_ANCESTOR built from Eunomia's real "Is a" relationships (one level) between concepts it has."""
    concept = read_eunomia("CONCEPT")
    ids = set(concept.get_column("concept_id").to_list())
    is_a = read_eunomia("CONCEPT_RELATIONSHIP").filter(
        (pl.col("relationship_id") == "Is a") & pl.col("concept_id_1").is_in(ids) & pl.col("concept_id_2").is_in(ids)
    )
    ancestor = is_a.select(
        pl.col("concept_id_2").alias("ancestor_concept_id"),
        pl.col("concept_id_1").alias("descendant_concept_id"),
        pl.lit("1").alias("min_levels_of_separation"),
        pl.lit("1").alias("max_levels_of_separation"),
    )
    write_athena(concept, tmp_path / "CONCEPT.csv")
    write_athena(ancestor, tmp_path / "CONCEPT_ANCESTOR.csv")
    db = connect(tmp_path / "v.duckdb")
    assert load_vocabulary(db, tmp_path)["concept_ancestor"] == ancestor.height > 0
    parent = int(ancestor.group_by("ancestor_concept_id").len().sort("len", descending=True).item(0, 0))
    children = {int(c) for c in ancestor.filter(pl.col("ancestor_concept_id") == str(parent))["descendant_concept_id"]}
    assert descendants(db, [parent]) == sorted(children | {parent})
    assert descendants(db, [372328, 372328]) == sorted(
        {372328} | {int(c) for c in ancestor.filter(pl.col("ancestor_concept_id") == "372328")["descendant_concept_id"]}
    )
    assert descendants(db, []) == []


@pytest.mark.postgres
def test_postgres_resolution_equals_duckdb(postgres_url: str, eunomia_db: Database, tmp_path: Path) -> None:
    pg = connect(postgres_url)
    counts = load_vocabulary(pg, EUNOMIA)
    assert counts["concept_relationship"] == 266588
    conditions = pl.read_csv(EUNOMIA / "CONDITION_OCCURRENCE.csv", infer_schema=False)
    codes = pl.concat(
        [
            conditions.select(
                pl.lit("SNOMED").alias("vocabulary_id"), pl.col("condition_source_value").alias("source_code")
            ),
            pl.DataFrame(
                {
                    "vocabulary_id": ["SNOMED", "UCUM", "LOINC", "SNOMED", "SNOMED"],
                    "source_code": ["275272006", "y", "29463-7", "316744009", "nope"],
                }
            ),
        ]
    )
    from_pg = resolve_codes(pg, codes)
    assert from_pg.equals(resolve_codes(eunomia_db, codes))
    assert from_pg.tail(5).get_column("concept_id").to_list() == [4132546, 9448, 3025315, 0, 0]
    assert standard_concept_by_code(pg, "SNOMED", "65363002") == 372328
    with pytest.raises(VocabularyError, match="no concept SNOMED '123'"):
        standard_concept_by_code(pg, "SNOMED", "123")
    assert resolve_codes(pg, pl.DataFrame({"vocabulary_id": ["X"], "source_code": ["y"]})).rows() == [
        ("X", "y", 0, 0, None, None, None)
    ]
    pg.dispose()


def test_standard_concept_without_relationship_rows_stands_for_itself(tmp_path: Path) -> None:
    write_athena(read_eunomia("CONCEPT"), tmp_path / "CONCEPT.csv")  # no CONCEPT_RELATIONSHIP at all
    db = connect(tmp_path / "v.duckdb")
    assert load_vocabulary(db, tmp_path)["concept_relationship"] == 0
    codes = pl.DataFrame({"vocabulary_id": ["SNOMED", "SNOMED"], "source_code": ["65363002", "275272006"]})
    out = resolve_codes(db, codes).select("source_concept_id", "concept_id", "mapped_via").rows()
    # the standard code maps to itself; the non-standard one has nothing left to map through
    assert out == [(372328, 372328, "maps_to"), (4166590, 0, None)]


def test_site_map_to_concept_zero_says_no_standard_concept(local_db: Database, tmp_path: Path) -> None:
    # The site decides a code has no standard concept, overriding the vocabulary's own "Maps to".
    load_source_to_concept_map(
        local_db, write_stcm(tmp_path / "stcm.csv", ["275272006,0,SNOMED,not used here,0,None,2020-01-01,2099-12-31,"])
    )
    [row] = resolve_one(local_db, "SNOMED", "275272006")
    assert (row["source_concept_id"], row["concept_id"], row["domain_id"], row["mapped_via"]) == (
        4166590,
        0,
        None,
        "source_to_concept_map",
    )

"""Loading real vocabularies: Eunomia's comma-separated export and the same rows in Athena's tab format."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from fedomop.harmonize.cdm import create_cdm
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.ground.errors import VocabularyError
from fedomop.harmonize.vocabulary import VOCABULARY_TABLES, cdm_io, load_vocabulary
from fedomop.harmonize.vocabulary.cdm_io import iter_cdm_csv, read_cdm_csv

from ..conftest import EUNOMIA, SAMPLE_DATA
from .conftest import csv_records, read_eunomia, write_athena


def table_rows(db: Database, table: str) -> int:
    return int(db.scalar(f"SELECT COUNT(*) FROM {table}"))


def test_eunomia_vocabulary_row_counts_equal_the_csv_lines(tmp_path: Path) -> None:
    db = connect(tmp_path / "v.duckdb")
    counts = load_vocabulary(db, EUNOMIA)
    assert set(counts) == set(VOCABULARY_TABLES)
    assert counts["concept"] == 2294
    assert counts["concept_relationship"] == 266588
    for table in VOCABULARY_TABLES:
        expected = csv_records(EUNOMIA / f"{table.upper()}.csv")
        assert counts[table] == expected, table
        assert table_rows(db, table) == expected, table


def test_loaded_values_are_typed_and_keep_text_exactly(eunomia_db: Database) -> None:
    row = eunomia_db.query("SELECT * FROM concept WHERE concept_id = 4015052").row(0, named=True)
    assert (
        row["concept_name"]
        == "Hemogram, automated, with RBC, WBC, Hgb, Hct, Indices, Platelet count, and manual WBC differential"
    )
    assert str(row["valid_start_date"]) == "2002-01-31"
    assert row["standard_concept"] == "S" and row["invalid_reason"] is None
    # A quoted empty standard_concept ("") is "no value", as in every OMOP export.
    assert eunomia_db.scalar("SELECT standard_concept FROM concept WHERE concept_id = 40316773") is None
    # "None" is a real vocabulary_id in this shard, not a null.
    assert eunomia_db.scalar("SELECT vocabulary_id FROM vocabulary") == "None"


def test_reloading_replaces_instead_of_appending(tmp_path: Path) -> None:
    db = connect(tmp_path / "v.duckdb")
    load_vocabulary(db, EUNOMIA)
    load_vocabulary(db, EUNOMIA)
    assert table_rows(db, "concept") == 2294
    assert table_rows(db, "concept_relationship") == 266588


def test_athena_tab_format_loads_identically(athena_folder: Path, eunomia_db: Database, tmp_path: Path) -> None:
    db = connect(tmp_path / "athena.duckdb")
    counts = load_vocabulary(db, athena_folder)
    assert counts["concept"] == 2294
    assert counts["concept_ancestor"] == 0  # no file: fine, and the table is empty
    order = "ORDER BY concept_id"
    assert db.query(f"SELECT * FROM concept {order}").equals(eunomia_db.query(f"SELECT * FROM concept {order}"))
    subset = (
        "SELECT r.* FROM concept_relationship r WHERE r.concept_id_1 IN (SELECT concept_id FROM concept) "
        "ORDER BY concept_id_1, concept_id_2, relationship_id"
    )
    from_athena = db.query(subset)
    assert from_athena.height == counts["concept_relationship"] > 1000
    assert from_athena.equals(eunomia_db.query(subset))


def test_athena_quotes_are_ordinary_characters(tmp_path: Path) -> None:
    concept = read_eunomia("CONCEPT").head(3)
    local = {c: "" for c in concept.columns} | {
        "concept_id": "2000000001",
        "concept_name": 'Tumour "stage" 2, left "breast',
        "domain_id": "Observation",
        "vocabulary_id": "SITE",
        "concept_class_id": "Observation",
        "concept_code": 'T"2',
        "valid_start_date": "2020-01-01",
        "valid_end_date": "2099-12-31",
    }
    write_athena(pl.concat([concept, pl.DataFrame([local])]), tmp_path / "CONCEPT.csv")
    db = connect(tmp_path / "v.duckdb")
    assert load_vocabulary(db, tmp_path)["concept"] == 4
    name, code = db.query("SELECT concept_name, concept_code FROM concept WHERE concept_id = 2000000001").row(0)
    assert name == 'Tumour "stage" 2, left "breast'
    assert code == 'T"2'


def athena_concepts(folder: Path, extra_line: str) -> Path:
    write_athena(read_eunomia("CONCEPT").head(20), folder / "CONCEPT.csv")
    with (folder / "CONCEPT.csv").open("a", encoding="utf-8") as handle:
        handle.write(extra_line + "\n")
    return folder


@pytest.mark.parametrize(
    ("line", "message", "where"),
    [
        ("2000000001\tShort line\tCondition\tSITE", "has 4 fields, the header has 10", "CONCEPT.csv line 22"),
        (
            "2000000001\tBad date\tCondition\tSITE\tX\t\tC1\t20201301\t20991231\t",
            "'20201301' is not a date",
            "CONCEPT.csv line 22, field valid_start_date",
        ),
        (
            "20000x0001\tBad id\tCondition\tSITE\tX\t\tC1\t20200101\t20991231\t",
            "'20000x0001' is not an integer",
            "CONCEPT.csv line 22, field concept_id",
        ),
        (
            "2000000001\t\tCondition\tSITE\tX\t\tC1\t20200101\t20991231\t",
            "required field 'concept_name' is empty",
            "CONCEPT.csv line 22, field concept_name",
        ),
        (
            "2000000001\tToo many\tCondition\tSITE\tX\t\tC1\t20200101\t20991231\t\textra",
            "has 11 fields, the header has 10",
            "CONCEPT.csv line 22",
        ),
    ],
)
def test_malformed_file_names_file_line_and_field(tmp_path: Path, line: str, message: str, where: str) -> None:
    folder = athena_concepts(tmp_path, line)
    with pytest.raises(VocabularyError) as caught:
        load_vocabulary(connect(tmp_path / "v.duckdb"), folder)
    assert message in caught.value.message
    assert where in (caught.value.where or "")
    assert caught.value.fix


def test_duplicate_concept_id_is_reported(tmp_path: Path) -> None:
    first = read_eunomia("CONCEPT").head(5)
    write_athena(pl.concat([first, first.head(1)]), tmp_path / "CONCEPT.csv")
    with pytest.raises(VocabularyError, match="appears more than once") as caught:
        load_vocabulary(connect(tmp_path / "v.duckdb"), tmp_path)
    assert "line 7, field concept_id" in (caught.value.where or "")


def test_a_failed_load_leaves_the_previous_vocabulary_intact(tmp_path: Path) -> None:
    db = connect(tmp_path / "v.duckdb")
    load_vocabulary(db, EUNOMIA)
    bad = tmp_path / "bad"
    bad.mkdir()
    write_athena(read_eunomia("CONCEPT").head(20), bad / "CONCEPT.csv")  # valid, staged first ...
    relationships = (
        read_eunomia("CONCEPT_RELATIONSHIP").head(5).with_columns(pl.lit("2021-02-30").alias("valid_end_date"))
    )
    write_athena(relationships, bad / "CONCEPT_RELATIONSHIP.csv")  # ... then this one fails
    with pytest.raises(VocabularyError, match="'20210230' is not a date"):
        load_vocabulary(db, bad)
    assert table_rows(db, "concept") == 2294
    assert table_rows(db, "concept_relationship") == 266588
    assert not [t for t in db.table_names() if t.startswith("fedomop_stage")]


def test_missing_required_column_and_missing_concept_file(tmp_path: Path) -> None:
    (tmp_path / "CONCEPT.csv").write_text("concept_id\tconcept_name\n1\tx\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match="required column 'domain_id'"):
        load_vocabulary(connect(tmp_path / "v.duckdb"), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VocabularyError, match="no CONCEPT.csv"):
        load_vocabulary(connect(tmp_path / "v.duckdb"), empty)


def test_athena_files_are_read_in_blocks_with_exact_line_numbers(
    athena_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = athena_folder / "CONCEPT_RELATIONSHIP.csv"
    blocks = list(iter_cdm_csv(path, "concept_relationship", block_bytes=64 * 1024))
    assert len(blocks) > 5
    assert pl.concat(blocks).equals(read_cdm_csv(path, "concept_relationship"))
    # A bad value far into the file, in a later block, is reported on its own line.
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[4321] = lines[4321].replace("\t2099", "\t2O99", 1)
    broken = tmp_path / "CONCEPT_RELATIONSHIP.csv"
    broken.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(VocabularyError) as caught:
        list(iter_cdm_csv(broken, "concept_relationship", error=VocabularyError, block_bytes=64 * 1024))
    assert caught.value.where == f"{broken} line 4322, field valid_end_date"
    # A primary key repeated across blocks is caught before anything is replaced.
    monkeypatch.setattr(cdm_io, "_BLOCK_BYTES", 4096)
    concept = read_eunomia("CONCEPT")
    write_athena(pl.concat([concept, concept.slice(3, 1)]), tmp_path / "CONCEPT.csv")
    broken.unlink()
    with pytest.raises(VocabularyError, match=f"concept_id {concept.item(3, 'concept_id')} appears more than once"):
        load_vocabulary(connect(tmp_path / "v.duckdb"), tmp_path)


def test_nameless_cpt4_concepts_get_a_cpt4_specific_fix(tmp_path: Path) -> None:
    # The line Athena writes for a CPT4 concept before cpt4.jar has added its name (concept 700360, code 87635).
    folder = athena_concepts(tmp_path, "700360\t\tProcedure\tCPT4\tCPT4\tS\t87635\t19700101\t20991231\t")
    with pytest.raises(VocabularyError, match="CPT4 concept") as caught:
        load_vocabulary(connect(tmp_path / "v.duckdb"), folder)
    assert caught.value.where == f"{folder / 'CONCEPT.csv'} line 22, field concept_name"
    assert "cpt4.jar" in (caught.value.fix or "")


def test_foreign_keys_are_respected_or_reported(tmp_path: Path) -> None:
    """On a database created with foreign keys, tables are emptied and filled in dependency order."""
    sample = SAMPLE_DATA / "vocabulary"
    read = {
        name: pl.read_csv(sample / f"{name}.csv", separator="\t", quote_char=None, infer_schema=False)
        for name in ("CONCEPT", "DOMAIN", "VOCABULARY", "CONCEPT_CLASS")
    }
    # The concepts whose domain, vocabulary and class rows are all present: a set the foreign keys accept.
    read["CONCEPT"] = read["CONCEPT"].filter(
        pl.col("domain_id").is_in(read["DOMAIN"]["domain_id"].implode())
        & pl.col("vocabulary_id").is_in(read["VOCABULARY"]["vocabulary_id"].implode())
        & pl.col("concept_class_id").is_in(read["CONCEPT_CLASS"]["concept_class_id"].implode())
    )
    consistent = tmp_path / "consistent"
    consistent.mkdir()
    for name, frame in read.items():
        write_athena(frame.fill_null(""), consistent / f"{name}.csv")
    db = connect(tmp_path / "fk.duckdb")
    create_cdm(db.engine, constraints="all")
    # Referenced tables are filled first, so a consistent vocabulary loads into an empty database ...
    assert load_vocabulary(db, consistent)["concept"] == read["CONCEPT"].height > 20
    # ... but DuckDB cannot delete referenced rows in the transaction that deleted their referrers, and
    # Eunomia's shard has no DOMAIN rows for concept.domain_id: both are refused whole, with the way out.
    for folder in (consistent, EUNOMIA):
        with pytest.raises(VocabularyError, match="nothing was changed") as caught:
            load_vocabulary(db, folder)
        assert "--constraints all" in (caught.value.fix or "")
        assert table_rows(db, "concept") == read["CONCEPT"].height

"""Load OMOP vocabularies (Athena download or an OHDSI CSV export) and a site's source_to_concept_map.

A vocabulary release is loaded as a whole: every vocabulary table is replaced
in one transaction (tables without a file become empty), so a site never mixes
two releases. A site's ``source_to_concept_map`` is its own data, so it is
*appended* and survives vocabulary reloads.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from fedomop.harmonize.cdm.schema import create_cdm
from fedomop.harmonize.cdm.spec import load_spec
from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import VocabularyError
from fedomop.harmonize.vocabulary.cdm_io import (
    cdm_csv_files,
    clear_table_sql,
    read_cdm_csv,
    replace_tables,
    staging_table,
)

SITE_MAPPING_TABLE = "source_to_concept_map"
# The tables of an Athena download: the spec's vocabulary tables less the site-owned mapping table.
VOCABULARY_TABLES: tuple[str, ...] = tuple(
    t.name for t in load_spec().tables_in("VOCAB") if t.name != SITE_MAPPING_TABLE
)


def load_vocabulary_files(db: Database, files: dict[str, Path]) -> dict[str, int]:
    """Replace the named vocabulary tables with the rows of their files, in one transaction."""
    unknown = sorted(set(files) - set(VOCABULARY_TABLES))
    if unknown:
        raise VocabularyError(f"{unknown[0]!r} is not a vocabulary table", fix=f"use {', '.join(VOCABULARY_TABLES)}")
    if not files:
        return {}
    return replace_tables(db, {t: files[t] for t in VOCABULARY_TABLES if t in files}, error=VocabularyError)


def load_vocabulary(db: Database, folder: Path) -> dict[str, int]:
    """Load a vocabulary folder (CONCEPT.csv, CONCEPT_RELATIONSHIP.csv, ...; tab- or comma-separated).

    Replaces all vocabulary tables at once; tables whose file is absent are emptied. Returns rows per table.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VocabularyError("not a folder", where=str(folder), fix="point at the unzipped Athena download")
    files = {t: p for t, p in cdm_csv_files(folder).items() if t in VOCABULARY_TABLES}
    if "concept" not in files:
        raise VocabularyError(
            "no CONCEPT.csv in the vocabulary folder",
            where=str(folder),
            fix="unzip the Athena download here (CONCEPT.csv, CONCEPT_RELATIONSHIP.csv, ...)",
        )
    create_cdm(db.engine, tables=[*VOCABULARY_TABLES, SITE_MAPPING_TABLE])
    return replace_tables(db, {t: files.get(t) for t in VOCABULARY_TABLES}, error=VocabularyError)


LOCAL_CONCEPT_FLOOR = 2_000_000_000  # OMOP reserves concept ids above this for a site's own concepts
EXTENSION_TABLES = ("concept", "concept_relationship", "concept_synonym", "vocabulary")


def load_vocabulary_extension(db: Database, folder: Path) -> dict[str, int]:
    """Append a site vocabulary extension (CONCEPT.csv, optional CONCEPT_RELATIONSHIP/SYNONYM/VOCABULARY) to the
    loaded one.

    Extensions compose with a bundled or Athena vocabulary instead of copying it: every concept id must be above
    2,000,000,000 and new, so an extension can never shadow a released concept. All files go in one transaction.
    """
    folder = Path(folder)
    files = {t: p for t, p in cdm_csv_files(folder).items() if t in EXTENSION_TABLES} if folder.is_dir() else {}
    if "concept" not in files:
        raise VocabularyError(
            "no CONCEPT.csv in the vocabulary extension", where=str(folder), fix="fedomop codes apply writes one"
        )
    create_cdm(db.engine, tables=[*VOCABULARY_TABLES, SITE_MAPPING_TABLE])
    counts: dict[str, int] = {}
    with ExitStack() as stack:
        staged = {t: stack.enter_context(staging_table(db, t)) for t in files}
        for table, path in files.items():
            counts[table] = db.load_arrow(staged[table], read_cdm_csv(path, table, error=VocabularyError))
        low = db.query(f'SELECT MIN(concept_id) FROM "{staged["concept"]}"').item()
        if low is not None and int(low) <= LOCAL_CONCEPT_FLOOR:
            raise VocabularyError(
                f"concept_id {low} is not a local concept id", where=str(files["concept"]),
                fix="local concepts take ids above 2,000,000,000 (OMOP convention)",
            )  # fmt: skip
        taken = db.query(f'SELECT MIN(s.concept_id) FROM "{staged["concept"]}" s JOIN concept c USING (concept_id)')
        if taken.item() is not None:
            raise VocabularyError(
                f"concept_id {taken.item()} is already in the vocabulary", where=str(files["concept"]),
                fix="give the local concept a new id (fedomop codes apply continues after the highest)",
            )  # fmt: skip
        with db.engine.begin() as connection:
            for table, stage in staged.items():
                # a local vocabulary's row is added once, however many extensions (or reloads) name it
                new = (
                    " WHERE vocabulary_id NOT IN (SELECT vocabulary_id FROM vocabulary)"
                    if table == "vocabulary"
                    else ""
                )
                connection.execute(sa.text(f'INSERT INTO "{table}" SELECT * FROM "{stage}"{new}'))
            for statement in _reference_rows(staged["concept"]):
                connection.execute(sa.text(statement))
    return counts


def _reference_rows(concepts: str) -> list[str]:
    """INSERTs for the DOMAIN, CONCEPT_CLASS and VOCABULARY rows the extension's concepts name but neither the
    loaded release nor the extension defines (concept.domain_id, concept_class_id and vocabulary_id are foreign
    keys: the DQD's isForeignKey check is fatal). A release subset lacks some that Athena has (the Observation
    domain, the Vocabulary class); their own concept id is 0, "no concept", as for any metadata concept the
    release does not hold. A full Athena release loaded later has them, and then nothing is added."""
    return [
        'INSERT INTO "domain" (domain_id, domain_name, domain_concept_id) SELECT DISTINCT domain_id, domain_id, 0 '
        f'FROM "{concepts}" WHERE domain_id NOT IN (SELECT domain_id FROM "domain")',
        'INSERT INTO "concept_class" (concept_class_id, concept_class_name, concept_class_concept_id) '
        "SELECT DISTINCT concept_class_id, concept_class_id, 0 "
        f'FROM "{concepts}" WHERE concept_class_id NOT IN (SELECT concept_class_id FROM "concept_class")',
        'INSERT INTO "vocabulary" (vocabulary_id, vocabulary_name, vocabulary_concept_id) '
        "SELECT DISTINCT vocabulary_id, vocabulary_id, 0 "
        f'FROM "{concepts}" WHERE vocabulary_id NOT IN (SELECT vocabulary_id FROM "vocabulary")',
    ]


def load_source_to_concept_map(db: Database, path: Path, *, replace: bool = False) -> int:
    """Append a site's source_to_concept_map CSV (OMOP columns); every non-zero target must be in CONCEPT.

    Nothing is appended if any target is missing. ``replace=True`` swaps out the table's current rows in the
    same transaction (used when importing a whole CDM export). Returns rows loaded.
    """
    path = Path(path)
    frame = read_cdm_csv(path, SITE_MAPPING_TABLE, error=VocabularyError)
    create_cdm(db.engine, tables=[SITE_MAPPING_TABLE, "concept"])
    if frame.is_empty() and not replace:
        return 0
    columns = ", ".join(f'"{c}"' for c in frame.columns)
    with staging_table(db, SITE_MAPPING_TABLE) as stage:
        db.load_arrow(stage, frame)
        missing = db.query(
            f'SELECT DISTINCT s.target_concept_id FROM "{stage}" s '
            "LEFT JOIN concept c ON c.concept_id = s.target_concept_id "
            "WHERE c.concept_id IS NULL AND s.target_concept_id <> 0"
        )
        if not missing.is_empty():
            _raise_missing_target(frame, path, int(missing.item(0, 0)), missing.height)
        with db.engine.begin() as connection:
            if replace:
                connection.execute(sa.text(clear_table_sql(db, SITE_MAPPING_TABLE)))
            connection.execute(
                sa.text(f'INSERT INTO "{SITE_MAPPING_TABLE}" ({columns}) SELECT {columns} FROM "{stage}"')
            )
    return frame.height


def _raise_missing_target(frame: pl.DataFrame, path: Path, concept_id: int, how_many: int) -> None:
    index = int((frame.get_column("target_concept_id") == concept_id).arg_true()[0])
    raise VocabularyError(
        f"target_concept_id {concept_id} is not in the CONCEPT table ({how_many} missing target(s) in all)",
        where=f"{path} line {index + 2}, field target_concept_id",
        fix="load the vocabulary that contains it first (fedomop vocab load), or correct the concept id",
    )

"""Bookkeeping and loading: the empty CDM and run tables, the OMOP frames and their lineage, the reconciliation.

A record is accounted for exactly once: loaded into at least one OMOP row (with lineage) or quarantined with its
reason; what no rule took is quarantined here. An unbalanced reconciliation stops the run before the swap.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from fedomop.harmonize.cdm import create_cdm, load_spec
from fedomop.harmonize.cdm.schema import supports_deferred_keys
from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import ReconciliationError
from fedomop.harmonize.mapping.models import Mapping, Source
from fedomop.harmonize.run.files import SiteFiles, contained_file
from fedomop.harmonize.run.lineage import (
    ALL_TABLES,
    LINEAGE_FILE_SCHEMA,
    LINEAGE_FILE_TABLE,
    LINEAGE_ROW_SCHEMA,
    LINEAGE_ROW_TABLE,
    LINEAGE_VIEW_SQL,
    RECONCILIATION_SCHEMA,
    RECONCILIATION_TABLE,
    RecordLedger,
)
from fedomop.harmonize.run.preflight import check_concept_names
from fedomop.harmonize.run.progress import Progress
from fedomop.harmonize.run.quarantine import QUARANTINE_SCHEMA, QUARANTINE_TABLE, Quarantine
from fedomop.harmonize.run.rules import filter_mask
from fedomop.harmonize.run.shorten import SHORTENED_SCHEMA, SHORTENED_TABLE
from fedomop.harmonize.tables import (
    TARGETS,
)
from fedomop.harmonize.vocabulary import (
    load_source_to_concept_map,
    load_vocabulary_extension,
)
from fedomop.harmonize.vocabulary.store import load_versioned, loaded_version, vocabulary_version

RUN_TABLE = "fedomop_run"


RUN_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "site": pl.String(),
    "mapping_file": pl.String(),
    "source_dir": pl.String(),
    "started_at": pl.Datetime("us"),
    "finished_at": pl.Datetime("us"),
    "records_read": pl.Int64(),
    "rows_loaded": pl.Int64(),
    "records_quarantined": pl.Int64(),
    "values_shortened": pl.Int64(),  # texts longer than their OMOP column, loaded in short form (fedomop_shortened)
    "vocabulary_version": pl.String(),  # the release the run resolved codes against (fedomop_vocabulary.version)
}


def _sa_type(dtype: pl.DataType) -> sa.types.TypeEngine:
    if dtype == pl.Int64:
        return sa.BigInteger()
    if dtype == pl.Int32:
        return sa.Integer()
    if dtype == pl.Boolean:
        return sa.Boolean()
    if dtype == pl.Float64:
        return sa.Double()
    if dtype == pl.Datetime:
        return sa.DateTime()
    return sa.Text()


def _create_bookkeeping(db: Database, tables: dict[str, dict[str, pl.DataType]]) -> None:
    metadata = sa.MetaData()
    for name, schema in tables.items():
        sa.Table(name, metadata, *(sa.Column(c, _sa_type(t)) for c, t in schema.items()))
    metadata.create_all(db.engine)


def create_run_tables(db: Database) -> None:
    _create_bookkeeping(
        db,
        {
            QUARANTINE_TABLE: QUARANTINE_SCHEMA,
            LINEAGE_ROW_TABLE: LINEAGE_ROW_SCHEMA,
            LINEAGE_FILE_TABLE: LINEAGE_FILE_SCHEMA,
            RECONCILIATION_TABLE: RECONCILIATION_SCHEMA,
            RUN_TABLE: RUN_SCHEMA,
            SHORTENED_TABLE: SHORTENED_SCHEMA,
        },
    )
    db.execute(LINEAGE_VIEW_SQL)


def prepare_database(
    db: Database, mapping: Mapping, mapping_path: Path, files: SiteFiles, vocabulary_dir: Path, progress: Progress
) -> str:
    """Empty CDM, the vocabulary and the site's source_to_concept_map; then the concept names the mapping uses.

    The release is loaded only when the database does not hold it already (a DuckDB run starts from a copy of
    the site's vocabulary store, see ``vocabulary/store.py``). Returns the release's version.
    """
    progress("vocabulary", 0, 1)
    if supports_deferred_keys(db.engine):  # the engine's own tables get their keys after the load
        create_cdm(db.engine, constraints="none", tables=list(TARGETS))
    create_cdm(db.engine)
    version = vocabulary_version(vocabulary_dir)
    if loaded_version(db) != version:
        load_versioned(db, vocabulary_dir)
    for extension in mapping.vocabulary.extensions:  # site concepts compose with the release, never copy it
        load_vocabulary_extension(db, (mapping_path.parent / extension).resolve())
    if mapping.vocabulary.source_to_concept_map:
        path = contained_file(
            files.source_dir,
            mapping.vocabulary.source_to_concept_map,
            f"{mapping_path}: vocabulary.source_to_concept_map",
        )
        load_source_to_concept_map(db, path)
    check_concept_names(db, mapping, mapping_path)
    progress("vocabulary", 1, 1)
    return version


def load_tables(db: Database, tables: dict[str, pl.DataFrame], progress: Progress) -> dict[str, int]:
    loaded: dict[str, int] = {}
    for index, (table, frame) in enumerate(sorted(tables.items())):
        progress("load", index, len(tables))
        columns = load_spec().table(table).column_names
        loaded[table] = db.load_arrow(table, frame.select(columns)) if frame.height else 0
    progress("load", len(tables), len(tables))
    return loaded


def lineage_id(table: str) -> str | pl.Expr:
    """The id recorded in lineage: the primary key; episode_event by its event; cdm_source is row 1."""
    if table == "episode_event":
        return "event_id"
    if table == "cdm_source":
        return pl.lit(1, pl.Int64)
    return TARGETS[table].id_column


def quarantine_leftovers(
    batches: dict[str, pl.DataFrame],
    ledger: RecordLedger,
    quarantine: Quarantine,
    sources: dict[str, Source] | None = None,
) -> None:
    """Rows no rule took are accounted, so none is silently dropped: those a source's ``exclude`` selects as
    "excluded by rule: <reason>" (first matching rule), the rest (filtered out by every ``when``) quarantined."""
    for name, frame in batches.items():
        left = ledger.unaccounted(name)
        if not left.any():
            continue
        rows = frame.filter(pl.Series(left))
        source = (sources or {}).get(name)
        for rule in source.exclude if source else []:
            hit = rows.filter(filter_mask(rule))
            quarantine.add_rows(name, hit, rule.column, pl.col(rule.column), f"{EXCLUDED_PREFIX}: {rule.reason}")
            rows = rows.filter(~filter_mask(rule))
        quarantine.add_rows(name, rows, "*", pl.lit(None, pl.String), NOT_SELECTED)
        ledger.mark_held(name, left)


EXCLUDED_PREFIX = "excluded by rule"
NOT_SELECTED = "no mapping rule selects this record"


def excluded_records(quarantine: pl.DataFrame) -> dict[str, int]:
    """Per source, the records a mapping rule left out on purpose (a source's ``exclude``, or every rule's ``when``).

    ``quarantine_leftovers`` writes exactly one quarantine row for each such record, so rows count records."""
    if quarantine.is_empty():
        return {}
    reason = pl.col("reason")
    left_out = quarantine.filter(reason.str.starts_with(EXCLUDED_PREFIX) | (reason == NOT_SELECTED))
    return {str(source): int(n) for source, n in left_out.group_by("source").len().iter_rows()}


def summarise_reasons(quarantine: pl.DataFrame) -> dict[str, int]:
    """Quarantine rows per kind of reason: the text before ':' or ';', with quoted values elided."""
    if quarantine.is_empty():
        return {}
    reasons = (
        quarantine.with_columns(pl.col("reason").str.replace_all(r"'[^']*'", "'…'").str.replace(r"[:;].*$", ""))
        .group_by("reason")
        .len()
        .sort("len", "reason", descending=[True, False])
    )
    return dict(reasons.iter_rows())


def check_reconciliation(recon: pl.DataFrame) -> None:
    unbalanced = recon.filter((pl.col("omop_table") == ALL_TABLES) & ~pl.col("balanced"))
    if unbalanced.height:
        row = unbalanced.row(0, named=True)
        raise ReconciliationError(
            f"source {row['source']!r}: {row['source_count']} records read but {row['loaded']} loaded + "
            f"{row['quarantined']} quarantined",
            where="fedomop_reconciliation",
            fix="this is an engine bug: report it with the mapping; the previous site database was kept",
        )


def check_split(written: dict[str, int], mapped: Counter[str]) -> None:
    """The chunks mapped must add up to what the split wrote, source by source."""
    for source, count in written.items():
        if mapped[source] != count:
            raise ReconciliationError(
                f"source {source!r}: the split wrote {count} records but the chunks mapped {mapped[source]}",
                where="person-disjoint chunks",
                fix="this is an engine bug: report it with the mapping; the previous site database was kept",
            )

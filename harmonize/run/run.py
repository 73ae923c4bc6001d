"""``run_mapping``: map one site's extract into a fresh OMOP CDM v5.4 database and swap it in atomically.

The library entry point (``fedomop map`` is a thin layer over it): load and check the mapping, resolve the files
once, pre-flight every header, plan chunks, then build the site database aside and swap it in only when every
source record is accounted for.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from fedomop.harmonize.cdm.ddl import create_indexes
from fedomop.harmonize.cdm.schema import add_primary_keys, supports_deferred_keys
from fedomop.harmonize.ground.atomic import AtomicTarget
from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import FedomopError, MappingError
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.mapping.models import Mapping
from fedomop.harmonize.run.chunked import RunTotals, SiteRun
from fedomop.harmonize.run.chunking import DEFAULT_CHUNK_MB, ChunkPlan, plan_chunks
from fedomop.harmonize.run.eras import build_eras
from fedomop.harmonize.run.files import SiteFiles, resolve_files
from fedomop.harmonize.run.lineage import (
    ALL_TABLES,
    RECONCILIATION_SCHEMA,
    RECONCILIATION_TABLE,
)
from fedomop.harmonize.run.load import RUN_SCHEMA, RUN_TABLE, check_reconciliation, create_run_tables, prepare_database
from fedomop.harmonize.run.parallel import default_workers
from fedomop.harmonize.run.preflight import (
    absent_named_concepts,
    check_mapping,
    check_source_columns,
    unknown_vocabulary_ids,
)
from fedomop.harmonize.run.progress import Progress, no_progress
from fedomop.harmonize.tables import (
    TARGETS,
)
from fedomop.harmonize.vocabulary.store import ensure_store


@dataclass
class RunReport:
    """What a run did: rows per OMOP table, quarantine by reason, and the reconciliation that proves it."""

    run_id: str
    site: str
    database: str
    loaded: dict[str, int]
    quarantine_reasons: dict[str, int]
    reconciliation: pl.DataFrame
    records_read: int
    records_quarantined: int
    seconds: float
    read_seconds: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)
    chunks: int = 1
    unsplit_reason: str = ""  # why a site big enough to chunk was mapped whole
    absent_sources: list[str] = field(default_factory=list)  # sources with no file: 0 records
    unread_files: list[str] = field(default_factory=list)  # fhir_inventory files no source reads (quarantined)
    absent_concepts: list[str] = field(default_factory=list)  # the mapping's named concepts the vocabulary lacks
    unknown_vocabularies: list[str] = field(default_factory=list)  # vocabulary ids the site does not know (yet)
    values_shortened: int = 0  # texts longer than their OMOP column, loaded in short form (fedomop_shortened)
    # source -> records a mapping rule left out on purpose (``exclude``, or no rule's ``when`` selects them): part of
    # the reconciliation's "quarantined" (each has a quarantine row with its reason), not an error
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def records_excluded(self) -> int:
        return sum(self.excluded.values())

    @property
    def balanced(self) -> bool:
        totals = self.reconciliation.filter(pl.col("omop_table") == ALL_TABLES)
        return bool(totals.get_column("balanced").all())

    @property
    def rows_loaded(self) -> int:
        return sum(self.loaded.values())


class NothingLoadedError(FedomopError):
    """A balanced run that loaded no person (every record quarantined: a misnamed patients file, the wrong
    format). Raised before the swap, because a site database is read by the federation and the QA report at any
    time: replacing a good one with an empty one would be a silent failure. ``report`` holds what the run did
    with each record (the reasons are the user's clue)."""

    report: RunReport | None = None

    @classmethod
    def of(cls, report: RunReport) -> NothingLoadedError:
        error = cls(
            "nothing was loaded: no person, every source record was quarantined; the previous site database "
            "(if any) was kept",
            where=report.database,
            fix="check the files match the mapping's sources (file names, format, resource type, columns): the "
            "quarantine reasons above say what each record met",
        )
        error.report = report
        return error


@dataclass(frozen=True)
class RunPlan:
    """Everything checked before the first data row is read: the mapping, its files, vocabulary and chunk plan."""

    mapping: Mapping
    mapping_path: Path
    files: SiteFiles
    vocabulary_dir: Path
    chunks: ChunkPlan


def plan_run(
    mapping_path: Path,
    source_dir: Path,
    *,
    vocabulary: Path | None = None,
    chunks: int | None = None,
    chunk_mb: int = DEFAULT_CHUNK_MB,
    scratch: Path | None = None,
) -> RunPlan:
    """Pre-flight: load and check the mapping, resolve the files once, check every header, plan the chunks.

    All of this runs before any data row is read, so a mistake costs seconds, not a half-built site.
    """
    mapping = load_mapping(mapping_path)
    check_mapping(mapping, mapping_path)
    if not source_dir.is_dir():
        raise MappingError("source folder not found", where=str(source_dir), fix="point --source at the extract folder")
    files = resolve_files(mapping, source_dir, str(mapping_path))
    check_source_columns(mapping, mapping_path, files)
    vocabulary_dir = Path(vocabulary) if vocabulary else (mapping_path.parent / mapping.vocabulary.folder).resolve()
    if not vocabulary_dir.is_dir():
        raise MappingError(
            "vocabulary folder not found",
            where=f"{mapping_path}: vocabulary.folder ({vocabulary_dir})",
            fix="fix the path or pass --vocabulary",
        )
    if scratch is not None and not Path(scratch).is_dir():
        raise MappingError(
            "scratch folder not found",
            where=str(scratch),
            fix="create it, or leave --scratch out to use the system's temporary folder",
        )
    plan = plan_chunks(mapping, files, chunks, chunk_mb)
    if plan.reason and chunks:
        raise MappingError(
            f"cannot map in {chunks} chunks: {plan.reason}",
            where=str(mapping_path),
            fix="leave --chunks out to map the site whole, or let each source name its person in one column",
        )
    return RunPlan(mapping, mapping_path, files, vocabulary_dir, plan)


def run_mapping(
    mapping_path: Path | str,
    source_dir: Path | str,
    db_url: str | Path,
    *,
    vocabulary: Path | None = None,
    progress: Progress | None = None,
    schema: str = "public",
    results_schema: str | None = None,
    chunks: int | None = None,
    chunk_mb: int = DEFAULT_CHUNK_MB,
    scratch: Path | None = None,
    indexes: bool = True,
    workers: int | None = None,
) -> RunReport:
    """Map one site's extract into a fresh OMOP CDM v5.4 database (vocabulary included) and swap it in atomically.

    A site with more than ``chunk_mb`` MiB of source text is mapped in person-disjoint chunks (``chunks`` fixes
    their number), so memory stays bounded whatever the site's size; ``scratch`` holds the split sources
    (default: a temporary folder, removed afterwards). On PostgreSQL the OMOP tables go to ``schema`` and
    fedomop's ``fedomop_*`` run tables to ``results_schema`` (default: ``schema``); nothing else there is touched.
    ``indexes`` creates the official DDL's indexes once the rows are in (building them over loaded rows is
    cheaper than maintaining them during the load). ``workers`` processes build the chunks of a chunked DuckDB
    run (default: two where there are two cores; the database is the same whatever the number, see
    ``run/parallel.py``); only the run's process writes the database.
    """
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    progress = progress or no_progress
    plan = plan_run(
        Path(mapping_path), Path(source_dir), vocabulary=vocabulary, chunks=chunks, chunk_mb=chunk_mb, scratch=scratch
    )
    mapping = plan.mapping
    run_id = f"{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    target = AtomicTarget(db_url, run_id, schema=schema, results_schema=results_schema)
    if target.dialect == "duckdb":  # the release is loaded once per site, then copied into each run's database
        progress("vocabulary store", 0, 1)
        target.seed, _ = ensure_store(target.path, plan.vocabulary_dir)
        progress("vocabulary store", 1, 1)
    with target as db:
        version = prepare_database(db, mapping, plan.mapping_path, plan.files, plan.vocabulary_dir, progress)
        absent_concepts = absent_named_concepts(db, mapping, plan.mapping_path)
        unknown_vocabularies = unknown_vocabulary_ids(db, mapping, plan.mapping_path)  # a near miss stops here
        create_run_tables(db)
        totals = _map_site(db, plan, run_id, progress, scratch, default_workers() if workers is None else workers)
        recon = totals.reconciliation()
        check_reconciliation(recon)
        progress("eras", 0, 1)
        build_eras(db)  # derived from the loaded rows: condition_era, drug_era, dose_era
        progress("eras", 1, 1)
        if supports_deferred_keys(db.engine):
            progress("primary keys", 0, 1)
            add_primary_keys(db.engine, TARGETS)
            progress("primary keys", 1, 1)
        if indexes:
            progress("indexes", 0, 1)
            create_indexes(db.engine)
            progress("indexes", 1, 1)
        records_read = sum(totals.seen.values())
        records_quarantined = int(recon.filter(pl.col("omop_table") == ALL_TABLES).get_column("quarantined").sum())
        run_row = {
            "run_id": run_id,
            "site": mapping.site,
            "mapping_file": str(plan.mapping_path),
            "source_dir": str(plan.files.source_dir),
            "started_at": started_at,
            "finished_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            "records_read": records_read,
            "rows_loaded": sum(totals.loaded.values()),
            "records_quarantined": records_quarantined,
            "values_shortened": totals.shortened,
            "vocabulary_version": version,
        }
        report = RunReport(
            run_id=run_id,
            site=mapping.site,
            database=str(db_url),
            loaded=dict(sorted(totals.loaded.items())),
            quarantine_reasons=dict(sorted(totals.reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
            reconciliation=recon,
            records_read=records_read,
            records_quarantined=records_quarantined,
            seconds=time.perf_counter() - started,
            read_seconds=totals.read_seconds,
            sources=dict(totals.seen),
            chunks=plan.chunks.chunks,
            unsplit_reason=plan.chunks.reason,
            absent_sources=list(plan.files.absent),
            unread_files=plan.files.unread_inventory(mapping),
            values_shortened=totals.shortened,
            absent_concepts=absent_concepts,
            unknown_vocabularies=unknown_vocabularies,
            excluded=dict(totals.excluded),
        )
        if not report.loaded.get("person"):  # the run's own rows (cdm_source, eras) are no data
            raise NothingLoadedError.of(report)  # before the swap: the site database a federation reads stays
        db.load_arrow(RECONCILIATION_TABLE, recon.select(list(RECONCILIATION_SCHEMA)))
        db.load_arrow(RUN_TABLE, pl.DataFrame([run_row], schema=RUN_SCHEMA))
        target.commit()
    return report


def _map_site(
    db: Database, plan: RunPlan, run_id: str, progress: Progress, scratch: Path | None, workers: int
) -> RunTotals:
    """The site whole or in chunks; a failure lets the background load end first (its error becomes a note)."""
    run = SiteRun(db, plan.mapping, plan.mapping_path, plan.files, run_id, progress, workers)
    try:
        if plan.chunks.chunks == 1:
            run.whole()
        else:
            with tempfile.TemporaryDirectory(prefix="fedomop-chunks-", dir=scratch) as folder:
                run.chunked(plan.chunks, Path(folder))
        run.close()
    except BaseException as exc:
        if (loading := run.abandon()) is not None:
            exc.add_note(f"the chunk loading in the background also failed: {loading}")
        raise
    return run.totals

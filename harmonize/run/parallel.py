"""Chunks built in worker processes; the run's process alone writes the database, in chunk order.

Why processes: most of a chunk's build is polars and Python that holds one core; a second process uses the second
core. Why the output stays identical to a sequential run: a worker numbers chunk k's rows from a placeholder base
``ID_BASE`` (ids of rows shared from the first chunk stay real and below it), and the run's
process, which knows where chunk k-1 ended, moves every id at or above the base to where a sequential run would
have put it (the table an id column refers to comes from the CDM spec's foreign keys). Nothing else in a chunk
depends on earlier chunks except the shared keys, which the first chunk hands over before later chunks start.

Workers read the vocabulary from a read-only DuckDB snapshot of the run's database (taken before the first chunk
is loaded) and write each chunk as Arrow IPC files into a private folder inside the run's scratch folder, which
the run removes whatever happens. At most ``workers`` chunks are being built while the run's process loads one.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl

from fedomop.harmonize.cdm import load_spec
from fedomop.harmonize.ground.db import Database, quote_identifier
from fedomop.harmonize.ground.errors import ReconciliationError
from fedomop.harmonize.mapping.models import Mapping
from fedomop.harmonize.run.build import last_ids
from fedomop.harmonize.run.chunked import BuiltChunk, ChunkBuilder, ChunkState, unique_rows
from fedomop.harmonize.run.chunking import StagedSite
from fedomop.harmonize.run.files import SiteFiles
from fedomop.harmonize.run.lookup import lookup_sources
from fedomop.harmonize.run.progress import no_progress
from fedomop.harmonize.run.reading import read_source
from fedomop.harmonize.run.refused import persons_refused_at_read
from fedomop.harmonize.sources.base import SourceBatch
from fedomop.harmonize.tables import TARGETS

ID_BASE = 1 << 31  # later chunks' placeholder ids start here: above every real row id (polars numbers < 2**32)


def default_workers() -> int:
    """One, until two are measured faster on an idle machine: the output is the same either way
    (tests/harmonize/test_workers.py), but on the shared 2-core test machine two workers cost 1.3x the CPU and
    were not faster (docs/benchmarks.md). ``--workers 2`` opts in."""
    return 1


@dataclass(frozen=True)
class ChunkJob:
    """Everything a worker needs to build one chunk (pickled to it)."""

    chunk: int
    names: list[str]
    staged: StagedSite
    mapping: Mapping
    mapping_path: Path
    files: SiteFiles
    run_id: str
    vocabulary_db: Path
    out: Path
    carried_keys: dict[str, pl.DataFrame]
    shared: tuple[str, ...]


@dataclass(frozen=True)
class ChunkFiles:
    """A built chunk as a worker hands it back: frames on disk, small things inline."""

    chunk: int
    tables: list[str]  # in build order; each in <out>/<table>.arrow
    out: Path
    recon: pl.DataFrame
    seen: dict[str, int]
    read_seconds: float
    shared_keys: dict[str, pl.DataFrame]
    base: int


def snapshot_vocabulary(db: Database, path: Path) -> None:
    """Copy the tables a build reads (everything but the OMOP tables being built) into a DuckDB file.

    DuckDB runs only: another process cannot open the run's database while the run writes it.
    """
    names = [t for t in db.table_names() if t not in TARGETS]
    with db.raw_duckdb() as con:
        con.execute(f"ATTACH '{path}' AS fedomop_snapshot")
        try:
            for name in names:
                quoted = quote_identifier(name)
                con.execute(f"CREATE TABLE fedomop_snapshot.{quoted} AS SELECT * FROM {quoted}")
        finally:
            con.execute("DETACH fedomop_snapshot")


def _whole_reader(job: ChunkJob) -> Callable[[str], SourceBatch]:
    def read(name: str) -> SourceBatch:
        if name in job.staged.plan.person_columns:
            return job.staged.batch(name, job.chunk)
        return read_source(
            name,
            job.mapping.sources[name],
            job.files.of(name),
            job.files.source_dir,
            understood=job.mapping.fhir_understood_modifier_extensions,
        )

    return read


_WORKER_DB: dict[Path, Database] = {}  # per worker process: its own copy of the snapshot, opened once


def _worker_database(snapshot: Path) -> Database:
    """The worker's private copy of the snapshot: code resolution stages its codes in a table, so it writes."""
    if snapshot not in _WORKER_DB:
        private = snapshot.with_name(f"{snapshot.stem}-{os.getpid()}.duckdb")
        shutil.copyfile(snapshot, private)
        _WORKER_DB[snapshot] = Database(private)
    return _WORKER_DB[snapshot]


def build_chunk(job: ChunkJob) -> ChunkFiles:
    """In a worker: build one chunk with placeholder ids and write its frames to ``job.out``."""
    base = ID_BASE if job.chunk else 0
    db = _worker_database(job.vocabulary_db)
    builder = ChunkBuilder(db, job.mapping, job.mapping_path, job.files, job.run_id)
    read = _whole_reader(job)
    looked_up: dict[str, pl.DataFrame] = {}
    if job.chunk:  # a sequential run keeps these from the first chunk; reading them again gives the same frame
        fhir = builder.fhir
        for name in sorted(lookup_sources(job.mapping) - set(job.names)):
            if name in job.mapping.sources and name not in job.files.absent:
                looked_up[name] = unique_rows(read(name).frame, repeats_possible=name in fhir)
    ids_after = {table: base for table in TARGETS} if base else {}
    refused = persons_refused_at_read(job.mapping, job.files, job.staged.read_rejects())
    state = ChunkState(job.chunk, ids_after, job.carried_keys, None, looked_up, job.shared, refused)
    built = builder.build(state, job.names, read, no_progress)
    job.out.mkdir(parents=True)
    for table, frame in built.tables.items():
        frame.write_ipc(job.out / f"{table}.arrow")
    built.quarantined.write_ipc(job.out / "_quarantine.arrow")
    built.shortened.write_ipc(job.out / "_shortened.arrow")
    return ChunkFiles(
        chunk=job.chunk,
        tables=list(built.tables),
        out=job.out,
        recon=built.recon,
        seen=built.seen,
        read_seconds=built.read_seconds,
        shared_keys=built.shared_keys,
        base=base,
    )


@cache
def _id_references(table: str) -> dict[str, str]:
    """Column -> the OMOP table whose ids it holds: the table's own id, its foreign keys, episode_event's event."""
    found = {f.name: f.fk_table for f in load_spec().table(table).fields if f.fk_table in TARGETS and f.fk_table}
    if TARGETS[table].id_column and not TARGETS[table].one_per_person:
        found[TARGETS[table].id_column] = table
    if table == "episode_event":  # built from cancer conditions only (tables/episode_event.py)
        found["event_id"] = "condition_occurrence"
    return found


def _shift(frame: pl.DataFrame, table: str, base: int, ids_after: dict[str, int]) -> pl.DataFrame:
    """Placeholder ids (>= base) to the ids a sequential run gives; ids below the base are real already."""
    moves = []
    for column, target in _id_references(table).items():
        if column in frame.columns:
            value = pl.col(column)
            moved = pl.when(value >= base).then(value - base + ids_after.get(target, 0)).otherwise(value)
            moves.append(moved.alias(column))
    shifted = frame.with_columns(moves)
    for column, dtype in shifted.schema.items():  # an id the spec does not name would differ from a sequential run
        row_id = column.endswith("_id") and not column.endswith("concept_id") and not column.startswith("_")
        if row_id and dtype.is_integer() and (shifted.get_column(column) >= base).any():
            raise ReconciliationError(
                f"{table}.{column} holds an id the parallel build cannot renumber",
                where="fedomop map --workers",
                fix="this is an engine bug: report it with the mapping; map with --workers 1 meanwhile",
            )
    return shifted


def _shift_quarantine(frame: pl.DataFrame, base: int, ids_after: dict[str, int]) -> pl.DataFrame:
    """A second death record is quarantined with its OMOP person_id as the value: renumber it like the rows."""
    death = (pl.col("omop_table") == "death") & (pl.col("field") == "person")
    number = pl.col("value").cast(pl.Int64, strict=False)
    moved = (number - base + ids_after.get("person", 0)).cast(pl.String)
    return frame.with_columns(pl.when(death & (number >= base)).then(moved).otherwise(pl.col("value")).alias("value"))


def collect(files: ChunkFiles, ids_after: dict[str, int]) -> BuiltChunk:
    """In the run's process: read a worker's chunk back and give it the ids a sequential run would."""
    tables = {t: pl.read_ipc(files.out / f"{t}.arrow") for t in files.tables}
    quarantined = pl.read_ipc(files.out / "_quarantine.arrow")
    shortened = pl.read_ipc(files.out / "_shortened.arrow")
    if files.base:
        tables = {t: _shift(f, t, files.base, ids_after) for t, f in tables.items()}
        if quarantined.height:
            quarantined = _shift_quarantine(quarantined, files.base, ids_after)
    for path in files.out.iterdir():
        path.unlink()
    files.out.rmdir()
    return BuiltChunk(
        tables=tables,
        quarantined=quarantined,
        shortened=shortened,
        recon=files.recon,
        seen=files.seen,
        read_seconds=files.read_seconds,
        shared_keys=files.shared_keys,
        cancer_concepts=None,
        last_ids=last_ids(tables, ids_after),
    )


class ChunkPool:
    """Worker processes building chunks ahead of the run's process, which takes them back in chunk order."""

    def __init__(self, workers: int, make_job: Callable[[int, dict[str, pl.DataFrame]], ChunkJob], chunks: int):
        self.workers = workers
        self.make_job = make_job
        self.chunks = chunks
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.pending: deque[Future[ChunkFiles]] = deque()
        self.submitted = 0
        self.carried: dict[str, pl.DataFrame] = {}

    def _fill(self) -> None:
        while self.submitted < self.chunks and len(self.pending) < self.workers:
            self.pending.append(self.pool.submit(build_chunk, self.make_job(self.submitted, self.carried)))
            self.submitted += 1

    def next(self, first_alone: bool) -> ChunkFiles:
        """The next chunk in order; with ``first_alone`` the first chunk is built before any other starts
        (later chunks need the keys of the shared rows it builds)."""
        if self.submitted == 0 and first_alone:
            self.pending.append(self.pool.submit(build_chunk, self.make_job(0, {})))
            self.submitted = 1
            done = self.pending.popleft().result()
            self.carried = done.shared_keys
            self._fill()
            return done
        self._fill()
        done = self.pending.popleft().result()
        self._fill()  # the next chunk starts building while this one is loaded
        return done

    def close(self, failed: bool) -> None:
        """Stop the workers; after a failure (or Ctrl-C) they are ended at once, so none writes after cleanup."""
        if failed:
            for future in self.pending:
                future.cancel()
            for process in list((self.pool._processes or {}).values()):  # noqa: SLF001 - no public way to end them
                process.terminate()
            for process in list((self.pool._processes or {}).values()):  # noqa: SLF001
                process.join()
        self.pool.shutdown(wait=True, cancel_futures=True)

"""One run over a site: its chunks (one for a site that fits in memory) read, built, reconciled and loaded in turn.

Chunk k loads on a second connection while chunk k+1 is built (DuckDB and PostgreSQL release the GIL); ids continue
across chunks and the keys of shared rows (providers, care sites, locations) are carried forward. With more than one
worker (DuckDB), chunks are built in worker processes instead and taken back in order (:mod:`.parallel`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.mapping.models import Mapping
from fedomop.harmonize.run.build import SiteBuild
from fedomop.harmonize.run.chunking import ChunkPlan, StagedSite
from fedomop.harmonize.run.files import SiteFiles
from fedomop.harmonize.run.lineage import (
    ALL_TABLES,
    LINEAGE_FILE_TABLE,
    LINEAGE_ROW_TABLE,
    RECONCILIATION_SCHEMA,
    LineageFiles,
    RecordLedger,
    lineage_rows,
)
from fedomop.harmonize.run.load import (
    check_reconciliation,
    check_split,
    excluded_records,
    lineage_id,
    load_tables,
    quarantine_leftovers,
    summarise_reasons,
)
from fedomop.harmonize.run.lookup import apply_lookups, lookup_sources
from fedomop.harmonize.run.progress import Progress, chunk_progress
from fedomop.harmonize.run.quarantine import QUARANTINE_SCHEMA, QUARANTINE_TABLE, Quarantine
from fedomop.harmonize.run.reading import read_source
from fedomop.harmonize.run.refused import persons_refused_at_read
from fedomop.harmonize.run.rules import RunContext
from fedomop.harmonize.run.shorten import SHORTENED_SCHEMA, SHORTENED_TABLE, Shortened
from fedomop.harmonize.run.units import UnitConverter
from fedomop.harmonize.sources.base import SourceBatch
from fedomop.harmonize.vocabulary.resolve import ResolutionCache


def unique_rows(frame: pl.DataFrame, *, repeats_possible: bool = True) -> pl.DataFrame:
    """Number rows within the batch (``_ord``) and make (file, row) unique: a repeated FHIR id gets ``#n``.

    CSV/Parquet rows are numbered per file by the reader, so they cannot repeat and skip the (costly) window.
    """
    frame = frame.with_row_index("_ord").with_columns(pl.col("_ord").cast(pl.Int64))
    if not repeats_possible:
        return frame
    repeat = pl.col("_ord").cum_count().over("_source_file", "_source_row")
    return frame.with_columns(
        pl.when(repeat > 1)
        .then(pl.format("{}#{}", "_source_row", repeat))
        .otherwise(pl.col("_source_row"))
        .alias("_source_row")
    )


def read_sources(
    names: list[str], read: Callable[[str], SourceBatch], quarantine: Quarantine, progress: Progress, fhir: set[str]
) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """Each named source as a frame (read-time rejects go to the quarantine), and records read per source."""
    batches: dict[str, pl.DataFrame] = {}
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        progress("read sources", index, len(names))
        batch = read(name)
        quarantine.add_rejects(name, batch.rejects)
        batches[name] = unique_rows(batch.frame, repeats_possible=name in fhir)
        seen[name] = batch.seen
    progress("read sources", len(names), len(names))
    return batches, seen


def inventory_unmapped(mapping: Mapping, files: SiteFiles, quarantine: Quarantine) -> dict[str, int]:
    """Quarantine every inventory resource that no source reads, so a FHIR export is accounted completely:
    a type no source maps (``resource type not mapped``), and a mapped type in a file no source of that type
    reads (``no source reads <type> resources from this file``: a renamed ``patients.ndjson``, a glob that
    misses ``.gz``). An NDJSON file some source reads is that source's to account (a line of another type is
    refused there); a Bundle's entries of type T are accounted by the sources of T that read the file."""
    if not mapping.fhir_inventory:
        return {}
    from fedomop.harmonize.sources.fhir.reader import count_fhir_resources, untyped_bundle_entries

    seen: dict[str, int] = {}
    for item, item_files in zip(mapping.fhir_inventory, files.inventory, strict=True):
        fmt: Literal["ndjson", "bundle"] = "ndjson" if item.format == "fhir_ndjson" else "bundle"
        mapped = {s.resource_type for s in mapping.sources.values() if s.format == item.format}
        read_types = files.read_types(mapping, item.format)
        for path in item_files:
            reading = read_types.get(path.resolve(), set())
            if fmt == "ndjson" and reading:
                continue
            kinds = sorted(k for k in count_fhir_resources([path], fmt) if not k.startswith("(") and k not in reading)
            for name, count in _quarantine_unread(path, kinds, mapped, fmt, files.source_dir, quarantine).items():
                seen[name] = seen.get(name, 0) + count
        if fmt == "bundle" and item_files:
            untyped = untyped_bundle_entries(item_files, files.source_dir)
            if untyped.height:
                name = "(bundle entries without a resource type)"
                quarantine.add_rejects(name, untyped)
                seen[name] = seen.get(name, 0) + untyped.height
    return seen


def _quarantine_unread(
    path: Path,
    kinds: list[str],
    mapped: set[str | None],
    fmt: Literal["ndjson", "bundle"],
    source_dir: Path,
    quarantine: Quarantine,
) -> dict[str, int]:
    """Quarantine the resources of ``kinds`` in one file no source reads them from; records per inventory name.

    Each type is read on its own; in a file of several types, a line of another type is refused by that read
    ("resourceType '...' in a source declared as ...") and accounted by its own type's read instead, and a line
    that is no resource at all is refused by every read and counted once."""
    from fedomop.harmonize.sources.fhir.reader import read_fhir

    seen: dict[str, int] = {}
    refused: list[pl.DataFrame] = []
    for kind in kinds:
        name = f"{kind} (not mapped)" if kind not in mapped else f"{kind} (file no source reads)"
        batch = read_fhir(name, [path], source_dir, kind, {"id": "id"}, fmt=fmt)
        frame = unique_rows(batch.frame)
        reason = (
            "resource type not mapped"
            if kind not in mapped
            else f"no source reads {kind} resources from this file: rename the file to match a {kind} source's "
            "files: pattern, or widen that pattern"
        )
        quarantine.add_rows(name, frame, "resourceType", pl.lit(kind), reason)
        other_type = (pl.col("field") == "resourceType") & pl.col("value").is_in(kinds) & (pl.col("value") != kind)
        rejects = batch.rejects.filter(~other_type)  # accounted by the read of its own type
        refused.append(rejects.with_columns(pl.lit(name).alias("_name")))
        seen[name] = seen.get(name, 0) + frame.height
    if refused:
        once = pl.concat(refused).unique(subset=["source_file", "source_row", "field", "reason"], keep="first")
        for (name,), rows in once.group_by("_name", maintain_order=True):
            quarantine.add_rejects(str(name), rows.drop("_name"))
            seen[str(name)] = seen.get(str(name), 0) + rows.height
    return seen


def rule_tables(mapping: Mapping) -> dict[str, set[str]]:
    """Source -> the OMOP tables its rules are declared for."""
    found: dict[str, set[str]] = {}
    for table, rules in mapping.tables.items():
        for rule in rules:
            found.setdefault(rule.source, set()).add(table)
    return found


@dataclass
class RunTotals:
    """What the chunks of a run add up to."""

    loaded: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)  # source -> records a rule left out (load.py)
    seen: Counter[str] = field(default_factory=Counter)
    reconciliations: list[pl.DataFrame] = field(default_factory=list)
    read_seconds: float = 0.0
    shortened: int = 0  # values longer than their OMOP column, loaded in short form (fedomop_shortened)

    def reconciliation(self) -> pl.DataFrame:
        """Per source and table, counts summed over chunks (chunks never share a record, so sums are exact)."""
        both = pl.concat(self.reconciliations)
        summed = both.group_by("run_id", "source", "omop_table", maintain_order=True).agg(
            pl.col("source_count", "loaded", "quarantined").sum()
        )
        balanced = pl.when(pl.col("omop_table") == ALL_TABLES).then(
            pl.col("source_count") == pl.col("loaded") + pl.col("quarantined")
        )
        return summed.with_columns(balanced.alias("balanced")).select(list(RECONCILIATION_SCHEMA))


@dataclass(frozen=True)
class ChunkState:
    """What building chunk ``chunk`` needs from the chunks before it (empty for the first)."""

    chunk: int
    ids_after: dict[str, int]  # table -> last id used before this chunk
    carried_keys: dict[str, pl.DataFrame]  # keys of shared keyed rows built by the first chunk
    cancer_concepts: list[int] | None  # resolved once, by the first chunk with conditions
    looked_up: dict[str, pl.DataFrame]  # sources read through lookup:, kept for later chunks (updated here)
    shared: tuple[str, ...] = ()  # sources read whole, in the first chunk
    # persons refused when their file was read (refused.py), for a chunk that does not read those rejects itself
    refused_at_read: pl.DataFrame | None = None


@dataclass
class BuiltChunk:
    """One chunk's finished OMOP frames (lineage columns kept), quarantine and reconciliation, not yet loaded."""

    tables: dict[str, pl.DataFrame]
    quarantined: pl.DataFrame
    shortened: pl.DataFrame
    recon: pl.DataFrame
    seen: dict[str, int]
    read_seconds: float
    shared_keys: dict[str, pl.DataFrame]
    cancer_concepts: list[int] | None
    last_ids: dict[str, int]


class ChunkBuilder:
    """Builds chunks against a database it only reads (the vocabulary): in the run's process or in a worker."""

    def __init__(self, db: Database, mapping: Mapping, mapping_path: Path, files: SiteFiles, run_id: str) -> None:
        self.db = db
        self.mapping = mapping
        self.mapping_path = mapping_path
        self.files = files
        self.run_id = run_id
        self.units = UnitConverter(db, mapping.units, str(mapping_path))
        self.fhir = {name for name, source in mapping.sources.items() if source.is_fhir}
        self.codes = ResolutionCache()

    def build(
        self, state: ChunkState, names: list[str], read: Callable[[str], SourceBatch], progress: Progress
    ) -> BuiltChunk:
        """Read, build and account for one chunk; raises if its records do not balance."""
        quarantine = Quarantine(self.run_id)
        read_started = time.perf_counter()
        rejects: dict[str, pl.DataFrame] = {}

        def reading(name: str) -> SourceBatch:
            batch = read(name)
            rejects[name] = batch.rejects
            return batch

        batches, seen = read_sources(names, reading, quarantine, progress, self.fhir)
        state.looked_up.update({n: f for n, f in batches.items() if n in lookup_sources(self.mapping)})
        batches = apply_lookups(self.mapping, batches, state.looked_up)
        if state.chunk == 0:
            seen.update(inventory_unmapped(self.mapping, self.files, quarantine))
        read_seconds = time.perf_counter() - read_started
        ctx = RunContext(
            db=self.db,
            mapping=self.mapping,
            mapping_file=str(self.mapping_path),
            quarantine=quarantine,
            units=self.units,
            codes=self.codes,
            shortened=Shortened(self.run_id),
        )
        refused = state.refused_at_read
        ctx.remember_refused(
            "person", persons_refused_at_read(self.mapping, self.files, rejects) if refused is None else refused
        )
        build = SiteBuild(ctx, batches, progress, ids_after=state.ids_after, carried_keys=state.carried_keys)
        build.build_keyed()
        build.build_events()
        build.build_derived(
            str(self.mapping_path), with_cdm_source=state.chunk == 0, cancer_concepts=state.cancer_concepts
        )
        shared_keys = build.shared_keys(state.shared) if state.chunk == 0 and state.shared else {}
        tables = {t: f for t, f in build.tables.items() if f.height}
        ledger = RecordLedger({name: frame.height for name, frame in batches.items()})
        for table, frame in tables.items():
            ledger.mark_loaded(table, frame)
        ledger.mark_quarantined(quarantine.frame())
        quarantine_leftovers(batches, ledger, quarantine, self.mapping.sources)
        recon = ledger.reconciliation(self.run_id, seen, rule_tables(self.mapping))
        check_reconciliation(recon)
        return BuiltChunk(
            tables=tables,
            quarantined=quarantine.frame(),
            shortened=ctx.shortened.frame(),
            recon=recon,
            seen=seen,
            read_seconds=read_seconds,
            shared_keys=shared_keys,
            cancer_concepts=build.cancer_concepts,
            last_ids=build.last_ids(),
        )


class SiteRun:
    """One run over a site: its chunks mapped in turn into the same (aside) database."""

    def __init__(
        self,
        db: Database,
        mapping: Mapping,
        mapping_path: Path,
        files: SiteFiles,
        run_id: str,
        progress: Progress,
        workers: int = 1,
    ) -> None:
        self.db = db
        self.workers = workers  # processes building chunks (1: built here, in turn)
        self.mapping = mapping
        self.mapping_path = mapping_path
        self.files = files
        self.present = [name for name in mapping.sources if name not in files.absent]  # absent sources add nothing
        self.run_id = run_id
        self.progress = progress
        self.builder = ChunkBuilder(db, mapping, mapping_path, files, run_id)
        self.totals = RunTotals()
        self.ids_after: dict[str, int] = {}
        self.carried_keys: dict[str, pl.DataFrame] = {}
        self.cancer_concepts: list[int] | None = None
        self.looked_up: dict[str, pl.DataFrame] = {}  # sources read through lookup:, kept for later chunks
        self.lineage_files = LineageFiles()  # file numbers of the integer lineage, shared by all chunks
        # DuckDB and PostgreSQL load a chunk on a second connection while the next chunk is built (both release
        # the GIL); SQLite connections stay on their thread, so it loads in turn
        self.loader = ThreadPoolExecutor(1, "fedomop-load") if db.dialect in ("duckdb", "postgresql") else None
        self.pending: Future[None] | None = None
        self.refused_at_read: pl.DataFrame | None = None  # a chunked run's, from its staged sources (refused.py)

    def whole(self) -> None:
        """The site in one piece (small sites, and mappings that cannot be split by person)."""
        self._map_chunk(0, 1, self.present, self._read_whole)

    def _read_whole(self, name: str) -> SourceBatch:
        mapping = self.mapping
        return read_source(
            name,
            mapping.sources[name],
            self.files.of(name),
            self.files.source_dir,
            understood=mapping.fhir_understood_modifier_extensions,
        )

    def chunked(self, plan: ChunkPlan, scratch: Path) -> None:
        """Stage the partitioned sources into ``plan.chunks`` person-disjoint chunks, then map them in turn."""
        staged = StagedSite(plan, self.mapping, self.files, scratch)
        names = [name for name in plan.person_columns if name in self.present]
        for index, name in enumerate(names):
            self.progress("split sources", index, len(names))
            staged.stage(name)
        self.progress("split sources", len(names), len(names))
        self.refused_at_read = persons_refused_at_read(self.mapping, self.files, staged.read_rejects())

        def read(chunk: int) -> Callable[[str], SourceBatch]:
            def one(name: str) -> SourceBatch:
                if name in plan.person_columns:
                    return staged.batch(name, chunk)
                return self._read_whole(name)

            return one

        if self.workers > 1 and self.db.dialect == "duckdb":
            self._chunked_in_workers(plan, staged, scratch)
        else:
            for chunk in range(plan.chunks):
                chunk_names = [n for n in self.present if n in plan.person_columns or chunk == 0]
                self._map_chunk(chunk, plan.chunks, chunk_names, read(chunk), shared=plan.shared)
        check_split(staged.records, self.totals.seen)

    def _chunked_in_workers(self, plan: ChunkPlan, staged: StagedSite, scratch: Path) -> None:
        """Chunks built by worker processes (:mod:`.parallel`), taken back, renumbered and loaded in order."""
        from fedomop.harmonize.run.parallel import ChunkJob, ChunkPool, collect, snapshot_vocabulary

        snapshot = scratch / "vocabulary.duckdb"
        self.progress("vocabulary snapshot", 0, 1)
        snapshot_vocabulary(self.db, snapshot)
        self.progress("vocabulary snapshot", 1, 1)

        def job(chunk: int, carried: dict[str, pl.DataFrame]) -> ChunkJob:
            names = [n for n in self.present if n in plan.person_columns or chunk == 0]
            return ChunkJob(
                chunk=chunk,
                names=names,
                staged=staged,
                mapping=self.mapping,
                mapping_path=self.mapping_path,
                files=self.files,
                run_id=self.run_id,
                vocabulary_db=snapshot,
                out=scratch / "built" / str(chunk),
                carried_keys=carried,
                shared=plan.shared,
            )

        pool = ChunkPool(min(self.workers, plan.chunks), job, plan.chunks)
        failed = True
        try:
            for chunk in range(plan.chunks):
                progress = chunk_progress(self.progress, chunk, plan.chunks)
                progress("build (workers)", 0, 1)
                built = collect(pool.next(first_alone=bool(plan.shared)), self.ids_after)
                progress("build (workers)", 1, 1)
                self.ids_after = built.last_ids
                self.accept(built, plan.chunks, progress)
            failed = False
        finally:
            pool.close(failed)

    def _map_chunk(
        self,
        chunk: int,
        chunks: int,
        names: list[str],
        read: Callable[[str], SourceBatch],
        shared: tuple[str, ...] = (),
    ) -> None:
        """Read, build, account for and load one chunk; what later chunks need is kept on ``self``."""
        progress = self.progress if chunks == 1 else chunk_progress(self.progress, chunk, chunks)
        built = self.builder.build(
            ChunkState(
                chunk,
                self.ids_after,
                self.carried_keys,
                self.cancer_concepts,
                self.looked_up,
                shared,
                self.refused_at_read,
            ),
            names,
            read,
            progress,
        )
        if built.cancer_concepts is not None:
            self.cancer_concepts = built.cancer_concepts
        if chunk == 0 and shared:
            self.carried_keys = built.shared_keys
        self.ids_after = built.last_ids
        self.accept(built, chunks, progress)

    def accept(self, built: BuiltChunk, chunks: int, progress: Progress) -> None:
        """Add a built chunk to the run's totals and load it (in the background where the database allows)."""
        self.totals.read_seconds += built.read_seconds
        self.totals.shortened += built.shortened.height
        self.totals.reasons.update(summarise_reasons(built.quarantined))
        self.totals.excluded.update(excluded_records(built.quarantined))
        self.totals.seen.update(built.seen)
        self.totals.reconciliations.append(built.recon)
        self.wait_for_load()  # at most one chunk is loading while the next one is built
        if self.loader is None or chunks == 1:
            self._load(built.tables, built.quarantined, built.shortened, progress)
        else:
            self.pending = self.loader.submit(self._load, built.tables, built.quarantined, built.shortened, progress)

    def _load(
        self, tables: dict[str, pl.DataFrame], quarantined: pl.DataFrame, shortened: pl.DataFrame, progress: Progress
    ) -> None:
        self.totals.loaded.update(load_tables(self.db, tables, progress))
        self.db.load_arrow(QUARANTINE_TABLE, quarantined.select(list(QUARANTINE_SCHEMA)))
        if shortened.height:
            self.db.load_arrow(SHORTENED_TABLE, shortened.select(list(SHORTENED_SCHEMA)))
        self._load_lineage(tables)

    def _load_lineage(self, tables: dict[str, pl.DataFrame]) -> None:
        """The chunk's lineage runs of every table in one insert: an insert per table and chunk (89 at 1M persons)
        cost DuckDB 8.6 CPU s, one per chunk 2.8 s (benchmarks/profile_phases.py)."""
        runs: list[pl.DataFrame] = []
        for table, frame in tables.items():
            stored, new_files = self.lineage_files.number(lineage_rows(lineage_id(table), frame))
            self.db.load_arrow(LINEAGE_FILE_TABLE, new_files)
            runs.append(stored.with_columns(pl.lit(table).alias("omop_table")))
        if runs:
            self.db.load_arrow(LINEAGE_ROW_TABLE, pl.concat(runs), constants={"run_id": self.run_id})

    def close(self) -> None:
        """Finish the last background load (its error surfaces here) and stop the loader thread."""
        try:
            self.wait_for_load()
        finally:
            if self.loader is not None:
                self.loader.shutdown(wait=True)
                self.loader = None

    def abandon(self) -> BaseException | None:
        """After a failure: let the background load end and return its error instead of raising it."""
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 - the failure being raised already says what went wrong
            return exc
        return None

    def wait_for_load(self) -> None:
        """Block until the chunk being loaded in the background is in (re-raising its error, if any)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

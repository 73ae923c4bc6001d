"""Person-disjoint chunks: how a site bigger than memory is mapped in bounded memory.

Every OMOP row depends on one person's records only (the person, their visits and events, their observation
period and episodes), so a site can be mapped one slice of persons at a time. Before the run, each CSV or
Parquet source that names its person column in the mapping is streamed once (polars, never whole in memory;
legacy encodings transcoded to UTF-8 block by block first) into Parquet files, one per chunk, by a hash of that
column; the engine then maps chunk after chunk and appends to the database. Sources without a person column
(providers, care sites, locations) are read whole, in the first chunk, and their keys stay available to later
chunks. The split is checked: a streamed file's rows 1..n must all be in the chunks, and the chunks mapped must
add up to what was written.

FHIR sources are streamed too: the reader hands over the mapped columns of each block of resources as it reads
them, and each block is split and written at once (what stays in memory while a FHIR source is split is one id
per resource, for the duplicate-id check). Not streamed: a CSV file polars refuses (ragged rows, undecodable
bytes), which the normal reader takes whole so that those rows are quarantined with their reason. Read-time
rejects belong to the first chunk, so every record is still counted exactly once.
"""

from __future__ import annotations

import codecs
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

import polars as pl
from pydantic import BaseModel

from fedomop.harmonize.ground.errors import ReconciliationError
from fedomop.harmonize.mapping.models import Mapping
from fedomop.harmonize.run.files import SiteFiles
from fedomop.harmonize.run.reading import read_source, tabular_options
from fedomop.harmonize.sources.base import SourceBatch, empty_rejects
from fedomop.harmonize.sources.options import TabularOptions
from fedomop.harmonize.sources.tabular import read_tabular, regular_file_shape
from fedomop.harmonize.tables import KEYED_TABLES

DEFAULT_CHUNK_MB = 256  # of source text per chunk: ~3M records; peak about 0.5 GiB + 12x this (two in flight)
SHARED_TABLES = frozenset(KEYED_TABLES) - {"person", "visit_occurrence"}  # keyed, but not a person's records
_FHIR_TEXT_PER_RECORD = 4  # NDJSON carries ~4x the bytes of the columns a mapping extracts
FHIR_BLOCK_ROWS = 500_000  # FHIR rows gathered before a split is written (a few hundred MiB of columns at most)
_HASH_SEED = 20_261_123


def _strings(value: object) -> frozenset[str]:
    """Every string (dict keys included) inside a mapping's models, dicts and lists."""
    found: set[str] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            found.add(item.strip())
        elif isinstance(item, BaseModel):
            pending.extend(vars(item).values())
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend(item)
    return frozenset(found)


class _ScratchParquet(TypedDict):
    compression: Literal["lz4"]
    statistics: bool


# the split files live for one run and are read once: lz4 without statistics costs 15% less CPU to write and read
# than the zstd default (measured on the 1M-person site's observations), for about twice the scratch disk
SCRATCH_PARQUET = _ScratchParquet(compression="lz4", statistics=False)


@dataclass(frozen=True)
class ChunkPlan:
    """How a run is split: the number of chunks and, per partitioned source, its person column."""

    chunks: int
    person_columns: dict[str, str]  # source -> column whose value is the person's source id
    shared: tuple[str, ...] = ()  # sources read whole, in the first chunk
    reason: str = ""  # why the run is not split (when chunks == 1 although more were asked for)


def person_columns(mapping: Mapping) -> tuple[dict[str, str], tuple[str, ...], str]:
    """Each source's person column (from its rules), the sources with none, or why the mapping cannot be split."""
    found: dict[str, set[str]] = {}
    feeds: dict[str, set[str]] = {}
    for table, rules in mapping.tables.items():
        for rule in rules:
            feeds.setdefault(rule.source, set()).add(table)
            column = rule.id if table == "person" else rule.person
            if column:
                found.setdefault(rule.source, set()).add(column)
    columns: dict[str, str] = {}
    shared: list[str] = []
    for name in mapping.sources:
        candidates = found.get(name, set())
        if len(candidates) > 1:
            return {}, (), f"source {name!r} names its person in more than one column ({', '.join(sorted(candidates))})"
        if candidates:
            columns[name] = candidates.pop()
        elif feeds.get(name, set()) - SHARED_TABLES:
            return {}, (), f"source {name!r} feeds {', '.join(sorted(feeds[name]))} without a person column"
        else:
            shared.append(name)
    for table in SHARED_TABLES:
        for rule in mapping.tables.get(table, []):
            if rule.source in columns and rule.id and rule.id != columns[rule.source]:
                return (
                    {},
                    (),
                    (
                        f"source {rule.source!r} is split by person ({columns[rule.source]}) but also builds {table} rows "
                        f"keyed by {rule.id}, which other persons' records may point at"
                    ),
                )
    return columns, tuple(shared), ""


def source_bytes(mapping: Mapping, files: SiteFiles) -> int:
    """Bytes of source text the mapping reads (FHIR discounted: its JSON is mostly structure)."""
    total = 0
    for name, source in mapping.sources.items():
        size = sum(p.stat().st_size for p in files.of(name))
        total += size // _FHIR_TEXT_PER_RECORD if source.is_fhir else size
    return total


def plan_chunks(
    mapping: Mapping, files: SiteFiles, chunks: int | None = None, chunk_mb: int = DEFAULT_CHUNK_MB
) -> ChunkPlan:
    """``chunks`` if given, else one chunk per ``chunk_mb`` of source text; 1 when the mapping cannot be split."""
    wanted = chunks if chunks else max(1, math.ceil(source_bytes(mapping, files) / (chunk_mb * 2**20)))
    if wanted <= 1:
        return ChunkPlan(1, {})
    columns, shared, reason = person_columns(mapping)
    if reason:
        return ChunkPlan(1, {}, reason=reason)
    return ChunkPlan(wanted, columns, shared)


def chunk_of(column: str, chunks: int) -> pl.Expr:
    """The chunk of a row: a hash of its person id as the reader gives it (CSV cells arrive stripped)."""
    return (pl.col(column).cast(pl.String).hash(seed=_HASH_SEED) % chunks).cast(pl.Int64).alias("_chunk")


def _transcode(path: Path, codec: str, out: Path, block: int = 16 * 2**20) -> bool:
    """Write a legacy-encoded file as UTF-8, block by block; False (nothing kept) if a byte is not valid."""
    decoder = codecs.getincrementaldecoder(codec)()
    try:
        with path.open("rb") as source, out.open("w", encoding="utf-8", newline="") as target:
            while data := source.read(block):
                target.write(decoder.decode(data))
            target.write(decoder.decode(b"", final=True))
    except UnicodeDecodeError:
        out.unlink(missing_ok=True)
        return False
    return True


class _ChunkWriter:
    """Splits blocks of rows by person into ``folder/_chunk=K/NNNNNNNN.parquet`` as they come.

    Blocks are gathered up to ``block_rows`` rows before a write, so a big source makes a few files per
    chunk rather than one per reader batch; files are numbered in arrival order, which ``batch`` keeps.
    """

    def __init__(self, folder: Path, column: str, chunks: int, block_rows: int | None = None) -> None:
        self.folder = folder
        self.column = column
        self.chunks = chunks
        self.block_rows = block_rows or FHIR_BLOCK_ROWS
        self.rows = 0  # handed over so far
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = 0
        self._written_blocks = 0

    def add(self, frame: pl.DataFrame) -> None:
        self.rows += frame.height
        self._pending.append(frame)
        self._pending_rows += frame.height
        if self._pending_rows >= self.block_rows:
            self._write()

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        if not self._pending_rows:
            return
        block = pl.concat(self._pending, how="vertical") if len(self._pending) > 1 else self._pending[0]
        self._pending, self._pending_rows = [], 0
        name = f"{self._written_blocks:08d}.parquet"
        self._written_blocks += 1
        parts = block.with_columns(chunk_of(self.column, self.chunks)).partition_by(
            "_chunk", as_dict=True, include_key=False
        )
        for (chunk,), part in parts.items():
            (self.folder / f"_chunk={chunk}").mkdir(parents=True, exist_ok=True)
            part.write_parquet(self.folder / f"_chunk={chunk}" / name, **SCRATCH_PARQUET)


class StagedSite:
    """The site's sources split into chunks under a scratch folder; ``batch(name, k)`` reads one chunk back.

    ``records[source]`` is what the split wrote (rows plus read-time rejects), so the run can check that the
    chunks it mapped add up to it.
    """

    def __init__(self, plan: ChunkPlan, mapping: Mapping, files: SiteFiles, scratch: Path) -> None:
        self.plan = plan
        self.mapping = mapping
        self.files = files
        self.source_dir = files.source_dir
        self.scratch = scratch
        self._parts: dict[str, list[tuple[Path, list[str]]]] = {}  # source -> per file: (folder, columns)
        self._rejects: dict[str, pl.DataFrame] = {}
        self.records: dict[str, int] = {}
        self._named = _strings(mapping)  # every name the mapping spells, columns among them

    def stage(self, name: str) -> None:
        """Split one source into per-chunk Parquet files (streamed when polars can, else read then split)."""
        source = self.mapping.sources[name]
        column = self.plan.person_columns[name]
        staged: list[tuple[Path, list[str], int]] = []  # per file: folder, columns, rows written
        rejects: list[pl.DataFrame] = []
        if source.is_fhir:  # the reader hands over blocks of mapped columns; each is split and written at once
            writer = _ChunkWriter(self.scratch / name / "0", column, self.plan.chunks)
            batch = read_source(
                name,
                source,
                self.files.of(name),
                self.source_dir,
                on_frame=writer.add,
                understood=self.mapping.fhir_understood_modifier_extensions,
            )
            writer.close()
            staged.append((writer.folder, batch.frame.columns, self._written(writer.folder, expected=writer.rows)))
            rejects.append(batch.rejects)
        else:
            options = tabular_options(source)
            for path in self.files.of(name):
                relative = self.files.relative(path)
                part = self._stream_file(name, len(staged), path, relative, options, column)
                if part is None:  # ragged rows, bad bytes: the in-memory reader quarantines them
                    batch = read_tabular(name, [path], self.source_dir, options)
                    part = self._split_frame(name, len(staged), batch.frame, column)
                    rejects.append(batch.rejects)
                staged.append(part)
        self._parts[name] = [(folder, columns) for folder, columns, _ in staged]
        self._rejects[name] = pl.concat(rejects) if rejects else empty_rejects()
        self.records[name] = sum(rows for _, _, rows in staged) + self._rejects[name].height

    def _scan(self, name: str, index: int, path: Path, options: TabularOptions) -> tuple[pl.LazyFrame, bool] | None:
        """A lazy scan of the file as text (legacy encodings transcoded first) and whether its values need
        trimming (the row check saw a field that may be padded), or None if it cannot stream."""
        if options.format == "parquet":
            return pl.scan_parquet(path).select(pl.all().cast(pl.String)), True
        if not options.is_utf8:
            utf8 = self.scratch / name / f"{index}.utf8.csv"
            utf8.parent.mkdir(parents=True, exist_ok=True)
            if not _transcode(path, options.codec, utf8):
                return None
            path = utf8
        shape = regular_file_shape(path, options)
        if shape is None:  # a short/long row, a blank line, a control character: polars would null-fill or
            return None  # load it; the in-memory reader quarantines such rows (tabular.py)
        scan = pl.scan_csv(  # invalid UTF-8 makes the sink fail: the in-memory reader then quarantines those rows
            path,
            separator=options.delimiter,
            infer_schema=False,
            null_values=list(options.null_values),
            quote_char='"',
        )
        return scan, shape.padded

    def _stream_file(
        self, name: str, index: int, path: Path, relative: str, options: TabularOptions, column: str
    ) -> tuple[Path, list[str], int] | None:
        scanned = self._scan(name, index, path, options)
        if scanned is None:
            return None
        scan, padded = scanned
        folder = self.scratch / name / str(index)
        try:
            data_columns = self._read_columns(scan.collect_schema().names(), column)
            staged = (
                scan.select(data_columns)
                .with_row_index("_row", offset=1)
                .with_columns(pl.col(c).str.strip_chars() for c in (data_columns if padded else ()))
                .with_columns(
                    pl.lit(relative).alias("_source_file"), pl.col("_row").cast(pl.Int64).alias("_source_row")
                )  # a number here (cheaper to write, read and check); text again when a chunk is read (batch)
                .drop("_row")
                .with_columns(chunk_of(column, self.plan.chunks))
            )
            staged.sink_parquet(pl.PartitionBy(folder, key="_chunk", include_key=False), mkdir=True, **SCRATCH_PARQUET)
        except pl.exceptions.PolarsError:
            shutil.rmtree(folder, ignore_errors=True)
            return None
        finally:
            (self.scratch / name / f"{index}.utf8.csv").unlink(missing_ok=True)
        return folder, [*data_columns, "_source_file", "_source_row"], self._written(folder, numbered=relative)

    def _read_columns(self, header: list[str], person_column: str) -> list[str]:
        """The header's columns the mapping names (anywhere: rules, filters, lookups, exclusions), in file order.

        The others - a patient's name, a free-text description - are not copied into the split files: no rule
        can read them, they would cost a third of the split's work on site A, and identifying text that no rule
        needs should not be copied around. Over-inclusive by design: a column is dropped only if its name appears
        nowhere in the mapping."""
        kept = [c for c in header if c.strip() in self._named or c.strip() == person_column.strip()]
        return kept or header[:1]

    def _chunk_files(self, folder: Path) -> list[Path]:
        """The split files of one source file, refusing a chunk index the plan does not have."""
        files = sorted(folder.glob("_chunk=*/*.parquet"))
        for file in files:
            chunk = file.parent.name.removeprefix("_chunk=")
            if not chunk.isdigit() or int(chunk) >= self.plan.chunks:
                raise ReconciliationError(
                    f"split file {file} is not one of the {self.plan.chunks} chunks",
                    where=str(folder),
                    fix="this is an engine bug: report it with the polars version; nothing was loaded",
                )
        return files

    def _written(self, folder: Path, numbered: str | None = None, expected: int | None = None) -> int:
        """Rows in a file's chunks, checked: for a streamed file (``numbered``: its name) rows 1..n must all be
        there (n rows written and the last one is n); for rows split from memory, the ``expected`` count."""
        files = self._chunk_files(folder)
        if numbered is not None and files:
            rows, last = (
                pl.scan_parquet(files).select(pl.len(), pl.col("_source_row").cast(pl.Int64).max()).collect().row(0)
            )
            if rows != (last or 0):
                raise ReconciliationError(
                    f"splitting {numbered} into chunks kept {rows} rows but the file has {last}",
                    where=str(folder),
                    fix="this is an engine bug: report it with the polars version; nothing was loaded",
                )
            return int(rows)
        rows = int(pl.scan_parquet(files).select(pl.len()).collect().item()) if files else 0
        if expected is not None and rows != expected:
            raise ReconciliationError(
                f"splitting rows into chunks kept {rows} of the {expected} rows read",
                where=str(folder),
                fix="this is an engine bug: report it with the polars version; nothing was loaded",
            )
        return rows

    def _split_frame(self, name: str, index: int, frame: pl.DataFrame, column: str) -> tuple[Path, list[str], int]:
        writer = _ChunkWriter(self.scratch / name / str(index), column, self.plan.chunks)
        writer.add(frame)
        writer.close()
        return writer.folder, frame.columns, self._written(writer.folder, expected=writer.rows)

    def read_rejects(self) -> dict[str, pl.DataFrame]:
        """Each staged source's read-time rejects (they are mapped with chunk 0; later chunks may need them)."""
        return dict(self._rejects)

    def batch(self, name: str, chunk: int) -> SourceBatch:
        """The source's records of one chunk; read-time rejects come with chunk 0."""
        frames = []
        for folder, columns in self._parts[name]:
            files = sorted((folder / f"_chunk={chunk}").glob("*.parquet"))
            if files:
                frames.append(pl.read_parquet(files).with_columns(pl.col("_source_row").cast(pl.String)))
            else:
                frames.append(pl.DataFrame(schema=dict.fromkeys(columns, pl.String)))
        frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
        rejects = self._rejects[name] if chunk == 0 else empty_rejects()
        return SourceBatch(name=name, frame=frame, rejects=rejects, seen=frame.height + rejects.height)

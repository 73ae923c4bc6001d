"""Run a site mapping: read sources, resolve vocabulary, route by domain, load atomically, reconcile.

``run_mapping`` is the library entry point (``fedomop map`` is a thin layer over it). The run builds the whole
site database aside (vocabulary included) and swaps it in only when every source record is accounted for:
loaded into at least one OMOP row (with lineage) or written to ``fedomop_quarantine`` with its reason.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from fedomop.harmonize.cdm import create_cdm, load_spec
from fedomop.harmonize.cdm.schema import add_primary_keys, supports_deferred_keys
from fedomop.harmonize.ground.atomic import AtomicTarget
from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import MappingError, ReconciliationError
from fedomop.harmonize.mapping.loader import load_mapping
from fedomop.harmonize.mapping.models import Mapping, Rule
from fedomop.harmonize.run.chunking import DEFAULT_CHUNK_MB, ChunkPlan, StagedSite, plan_chunks
from fedomop.harmonize.run.ids import assign_ids
from fedomop.harmonize.run.lineage import (
    ALL_TABLES,
    LINEAGE_SCHEMA,
    LINEAGE_TABLE,
    RECONCILIATION_SCHEMA,
    RECONCILIATION_TABLE,
    RecordLedger,
    lineage_rows,
)
from fedomop.harmonize.run.preflight import check_concept_names, check_mapping, check_source_columns
from fedomop.harmonize.run.quarantine import QUARANTINE_SCHEMA, QUARANTINE_TABLE, Quarantine
from fedomop.harmonize.run.rules import FIELD_PREFIX, RuleEvaluator, RunContext
from fedomop.harmonize.run.units import UnitConverter
from fedomop.harmonize.sources.base import SourceBatch
from fedomop.harmonize.sources.read import read_source
from fedomop.harmonize.sources.tabular import match_files
from fedomop.harmonize.tables import (
    DOMAIN_TABLES,
    KEYED_TABLES,
    TARGETS,
    cdm_source,
    episode,
    episode_event,
    observation_period,
)
from fedomop.harmonize.vocabulary import (
    descendants,
    load_source_to_concept_map,
    load_vocabulary,
    standard_concept_by_code,
)
from fedomop.harmonize.vocabulary.resolve import ResolutionCache

Progress = Callable[[str, int, int], None]
RUN_TABLE = "fedomop_run"
_POLARS_TYPE: dict[str, pl.DataType] = {
    "integer": pl.Int64(),
    "float": pl.Float64(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us"),
}
_LINEAGE_COLUMNS = ("_source", "_source_file", "_source_row", "_rule", "_ord", "_target", "_source_key")
_DEFAULT_PERIOD_TYPE = 32817  # "EHR"; a mapping may declare its own observation_period.type_concept


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

    @property
    def balanced(self) -> bool:
        totals = self.reconciliation.filter(pl.col("omop_table") == ALL_TABLES)
        return bool(totals.get_column("balanced").all())

    @property
    def rows_loaded(self) -> int:
        return sum(self.loaded.values())


def _noop(label: str, done: int, total: int) -> None:
    return None


# -- reading ---------------------------------------------------------------------------------------------


def _unique_rows(frame: pl.DataFrame, *, repeats_possible: bool = True) -> pl.DataFrame:
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


def _inventory_unmapped(mapping: Mapping, source_dir: Path, quarantine: Quarantine) -> dict[str, int]:
    """Quarantine every resource of a type no source maps (reason: resource type not mapped)."""
    if not mapping.fhir_inventory:
        return {}
    from fedomop.harmonize.sources.fhir.reader import count_fhir_resources, read_fhir

    seen: dict[str, int] = {}
    for item in mapping.fhir_inventory:
        fmt = "ndjson" if item.format == "fhir_ndjson" else "bundle"
        mapped = {s.resource_type for s in mapping.sources.values() if s.format == item.format}
        files_by_type: dict[str, list[Path]] = {}
        for path in match_files(source_dir, item.files, "fhir_inventory"):
            for kind in count_fhir_resources([path], fmt):
                files_by_type.setdefault(kind, []).append(path)
        for resource_type in sorted(t for t in set(files_by_type) - mapped if not t.startswith("(")):
            name = f"{resource_type} (not mapped)"
            batch = read_fhir(name, files_by_type[resource_type], source_dir, resource_type, {"id": "id"}, fmt=fmt)
            frame = _unique_rows(batch.frame)
            quarantine.add_rejects(name, batch.rejects)
            quarantine.add_rows(name, frame, "resourceType", pl.lit(resource_type), "resource type not mapped")
            seen[name] = batch.seen
    return seen


# -- shaping rows into OMOP tables ----------------------------------------------------------------------


def _spec_types(table: str) -> dict[str, pl.DataType]:
    return {f.name: _POLARS_TYPE.get(f.datatype, pl.String()) for f in load_spec().table(table).fields}


def _to_table_columns(table: str, rows: pl.DataFrame) -> pl.DataFrame:
    """Rename slot columns to this table's columns; ``fields:`` apply only where the rule declared this table."""
    target = TARGETS[table]
    renamed = rows.rename({s: c for s, c in target.columns.items() if s in rows.columns and s != "_source_key"})
    field_columns = [c for c in renamed.columns if c.startswith(FIELD_PREFIX)]
    declared_here = renamed.height and renamed.get_column("_declared")[0] == table
    if declared_here:
        renamed = renamed.rename({c: c[len(FIELD_PREFIX) :] for c in field_columns})
    else:
        renamed = renamed.drop(field_columns)
    key_column = target.columns.get("_source_key")
    if key_column and "_source_key" in renamed.columns:  # the record's id is the *_source_value unless a field says
        present = key_column in renamed.columns
        value = pl.coalesce(key_column, "_source_key") if present else pl.col("_source_key")
        renamed = renamed.with_columns(value.cast(pl.String).alias(key_column))
    types = _spec_types(table)
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in types.items() if name not in renamed.columns]
    return renamed.with_columns(missing)


def _cast_to_spec(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """Spec types and varchar lengths (PostgreSQL would refuse longer text); lineage columns kept."""
    exprs = []
    for f in load_spec().table(table).fields:
        dtype = _POLARS_TYPE.get(f.datatype, pl.String())
        column = pl.col(f.name).cast(dtype, strict=False)  # type: ignore[arg-type]
        if f.datatype == "varchar":
            column = pl.col(f.name).cast(pl.String)
            if f.length:
                column = column.str.slice(0, f.length)
        exprs.append(column.alias(f.name))
    keep = [c for c in _LINEAGE_COLUMNS if c in frame.columns]
    return frame.select(*exprs, *keep)


class SiteBuild:
    """One run's state: evaluates rules table by table and keeps the finished OMOP frames."""

    def __init__(
        self,
        ctx: RunContext,
        batches: dict[str, pl.DataFrame],
        progress: Progress,
        *,
        ids_after: dict[str, int] | None = None,
        carried_keys: dict[str, pl.DataFrame] | None = None,
    ) -> None:
        self.ctx = ctx
        self.batches = batches
        self.progress = progress
        self.ids_after = ids_after or {}  # table -> last id used by earlier chunks
        self.carried_keys = carried_keys or {}  # keys of shared keyed rows built by an earlier chunk
        self.evaluator = RuleEvaluator(ctx)
        self.tables: dict[str, pl.DataFrame] = {}
        self.cancer_concepts: list[int] | None = None  # resolved by build_derived only when conditions exist
        self.rule_numbers: dict[tuple[str, int], int] = {}
        number = 0
        for table, rules in ctx.mapping.tables.items():
            for index in range(len(rules)):
                self.rule_numbers[(table, index)] = number
                number += 1

    def _evaluate_table_rules(self, table: str) -> list[tuple[Rule, pl.DataFrame]]:
        """Each rule of the table over its source (rules of sources not in this chunk are skipped)."""
        rules = self.ctx.mapping.tables.get(table, [])
        frames = []
        for index, rule in enumerate(rules):
            self.progress(table, index, len(rules))
            if rule.source in self.batches:
                number = self.rule_numbers[(table, index)]
                frames.append((rule, self.evaluator.evaluate(table, number, rule, self.batches[rule.source])))
        self.progress(table, len(rules), len(rules))
        return frames

    def _finish(self, table: str, frames: list[pl.DataFrame]) -> pl.DataFrame:
        """Table columns, ids, table defaults, NOT NULL check (violations quarantined), spec types."""
        shaped = [_to_table_columns(table, f) for f in frames if f.height]
        if not shaped:
            return pl.DataFrame()
        target = TARGETS[table]
        frame = pl.concat(shaped, how="diagonal_relaxed")
        if target.one_per_person:  # death: its key is the person, the first record wins
            frame = self._one_per_person(frame)
        elif target.id_column:
            frame = assign_ids(frame.drop(target.id_column), target.id_column, self.ids_after.get(table, 0))
        frame = _cast_to_spec(table, target.finish(frame))
        return self._require(table, frame)

    def _one_per_person(self, frame: pl.DataFrame) -> pl.DataFrame:
        ordered = frame.sort("person_id", "_rule", "_ord").with_columns(
            pl.col("person_id").is_first_distinct().alias("_keep")
        )
        for source, rows in ordered.filter(~pl.col("_keep")).partition_by("_source", as_dict=True).items():
            self.ctx.quarantine.add_rows(
                str(source[0]),
                rows,
                "person",
                pl.col("person_id"),
                "duplicate id: a second death record for this person",
                table="death",
            )
        return ordered.filter(pl.col("_keep")).drop("_keep")

    def _require(self, table: str, frame: pl.DataFrame) -> pl.DataFrame:
        required = [f.name for f in load_spec().table(table).fields if f.required]
        bad = pl.any_horizontal(*(pl.col(c).is_null() for c in required))
        broken = frame.filter(bad)
        for source, rows in broken.partition_by("_source", as_dict=True).items():
            missing = pl.concat_str(
                [pl.when(pl.col(c).is_null()).then(pl.lit(c)) for c in required], separator=",", ignore_nulls=True
            )
            self.ctx.quarantine.add_rows(
                str(source[0]),
                rows,
                "*",
                missing,
                pl.format("missing required OMOP field(s): {}", missing),
                table=table,
            )
        return frame.filter(~bad)

    def build_keyed(self) -> None:
        for table in KEYED_TABLES:
            frame = self._finish(table, [f for _, f in self._evaluate_table_rules(table)])
            self.tables[table] = frame
            keys = [self.carried_keys[table]] if table in self.carried_keys else []
            if frame.height:
                keys.append(frame.select(_key_columns(table)))
            if keys:
                self.ctx.keys[table] = pl.concat(keys).unique("_key", keep="first", maintain_order=True)

    def shared_keys(self, sources: tuple[str, ...]) -> dict[str, pl.DataFrame]:
        """Keys of the keyed rows built from ``sources`` (read in the first chunk only), for later chunks."""
        kept = {}
        for table in KEYED_TABLES:
            frame = self.tables.get(table, pl.DataFrame())
            if frame.height:
                mine = frame.filter(pl.col("_source").is_in(list(sources)))
                if mine.height:
                    kept[table] = mine.select(_key_columns(table))
        return kept

    def build_events(self) -> None:
        """Evaluate every non-keyed rule, route each row by its standard concept's domain, then finish tables."""
        routed: dict[str, list[pl.DataFrame]] = {}
        for table in TARGETS:
            if table in KEYED_TABLES or TARGETS[table].derived:
                continue
            for rule, rule_frame in self._evaluate_table_rules(table):
                for target, part in self._route(table, rule.route_by_domain, rule_frame).items():
                    routed.setdefault(target, []).append(part)
        for table, frames in routed.items():
            self.tables[table] = self._finish(table, frames)

    @staticmethod
    def _route(table: str, by_domain: bool, rows: pl.DataFrame) -> dict[str, pl.DataFrame]:
        if not by_domain or "_domain" not in rows.columns or TARGETS[table].domain is None:
            return {table: rows}
        target = pl.col("_domain").replace_strict(DOMAIN_TABLES, default=table, return_dtype=pl.String).fill_null(table)
        parts = rows.with_columns(target.alias("_to")).partition_by("_to", as_dict=True, include_key=False)
        return {str(key[0]): part for key, part in parts.items()}

    def build_derived(
        self, mapping_file: str, *, with_cdm_source: bool = True, cancer_concepts: list[int] | None = None
    ) -> None:
        """observation_period, episode + episode_event, cdm_source.

        ``cancer_concepts``: ids an earlier chunk resolved; resolved here when needed, then kept on ``self``.
        """
        mapping, db = self.ctx.mapping, self.ctx.db
        person = self.tables.get("person", pl.DataFrame())
        period_type = (
            mapping.observation_period.type_concept.constant if mapping.observation_period else _DEFAULT_PERIOD_TYPE
        )
        if person.height:
            period = observation_period.build(self.tables, person, int(period_type or 0))
            if period.height:
                period = self._continue_ids("observation_period", period)
                self.tables["observation_period"] = _cast_to_spec(
                    "observation_period", _to_table_columns_derived("observation_period", period)
                )
        conditions = self.tables.get("condition_occurrence", pl.DataFrame())
        if mapping.episodes and conditions.height:
            if cancer_concepts is None:
                ids = [standard_concept_by_code(db, c.vocabulary, c.code) for c in mapping.episodes.cancer_concepts]
                cancer_concepts = descendants(db, ids)
            self.cancer_concepts = cancer_concepts
            cancers = episode.cancer_conditions(conditions, cancer_concepts)
            episodes = episode.build(
                cancers,
                int(mapping.episodes.episode_concept.constant or 0),
                int(mapping.episodes.type_concept.constant or 0),
            )
            if episodes.height:
                episodes = self._continue_ids("episode", episodes)
                self.tables["episode"] = _cast_to_spec("episode", _to_table_columns_derived("episode", episodes))
                events = episode_event.build(cancers, episodes)
                self.tables["episode_event"] = _cast_to_spec(
                    "episode_event", _to_table_columns_derived("episode_event", events)
                )
        if with_cdm_source:
            version = _vocabulary_version(db)
            row = cdm_source.build(mapping.cdm_source, version, mapping_file, dt.date.today())
            self.tables["cdm_source"] = _cast_to_spec("cdm_source", _to_table_columns_derived("cdm_source", row))

    def _continue_ids(self, table: str, frame: pl.DataFrame) -> pl.DataFrame:
        """Derived tables number from 1 per build; shift past the ids earlier chunks used."""
        after = self.ids_after.get(table, 0)
        column = TARGETS[table].id_column
        return frame.with_columns(pl.col(column) + after) if after else frame

    def last_ids(self) -> dict[str, int]:
        """Per table with engine-assigned ids, the largest id so far (where the next chunk continues)."""
        last = dict(self.ids_after)
        for table, frame in self.tables.items():
            target = TARGETS[table]
            if frame.height and target.id_column and not target.one_per_person:
                last[table] = max(last.get(table, 0), int(frame.get_column(target.id_column).max()))  # type: ignore[arg-type]
        return last


def _key_columns(table: str) -> list[pl.Expr]:
    """(_key, _id): a keyed table's source id and OMOP id, the lookup events join on."""
    return [pl.col("_source_key").cast(pl.String).alias("_key"), pl.col(TARGETS[table].id_column).alias("_id")]


def _to_table_columns_derived(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    types = _spec_types(table)
    return frame.with_columns(pl.lit(None, dtype).alias(n) for n, dtype in types.items() if n not in frame.columns)


def _lineage_id(table: str) -> str | pl.Expr:
    """The id recorded in lineage: the primary key; episode_event by its event; cdm_source is row 1."""
    if table == "episode_event":
        return "event_id"
    if table == "cdm_source":
        return pl.lit(1, pl.Int64)
    return TARGETS[table].id_column


def _vocabulary_version(db: Database) -> str:
    found = db.query("SELECT vocabulary_version FROM vocabulary WHERE vocabulary_id = 'None'")
    return str(found.item(0, 0)) if found.height and found.item(0, 0) else "unknown"


# -- bookkeeping and loading ----------------------------------------------------------------------------


def _sa_type(dtype: pl.DataType) -> sa.types.TypeEngine:
    if dtype == pl.Int64:
        return sa.BigInteger()
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
}


def _load_tables(db: Database, tables: dict[str, pl.DataFrame], progress: Progress) -> dict[str, int]:
    loaded: dict[str, int] = {}
    for index, (table, frame) in enumerate(sorted(tables.items())):
        progress("load", index, len(tables))
        columns = load_spec().table(table).column_names
        loaded[table] = db.load_arrow(table, frame.select(columns)) if frame.height else 0
    progress("load", len(tables), len(tables))
    return loaded


def _quarantine_leftovers(batches: dict[str, pl.DataFrame], ledger: RecordLedger, quarantine: Quarantine) -> None:
    """Rows no rule took (filtered out by every ``when``) are quarantined, so none is silently dropped."""
    for name, frame in batches.items():
        left = ledger.unaccounted(name)
        if left.any():
            quarantine.add_rows(
                name,
                frame.filter(pl.Series(left)),
                "*",
                pl.lit(None, pl.String),
                "no mapping rule selects this record",
            )
            ledger.mark_held(name, left)


def _summarise_reasons(quarantine: pl.DataFrame) -> dict[str, int]:
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


def _check_reconciliation(recon: pl.DataFrame) -> None:
    unbalanced = recon.filter((pl.col("omop_table") == ALL_TABLES) & ~pl.col("balanced"))
    if unbalanced.height:
        row = unbalanced.row(0, named=True)
        raise ReconciliationError(
            f"source {row['source']!r}: {row['source_count']} records read but {row['loaded']} loaded + "
            f"{row['quarantined']} quarantined",
            where="fedomop_reconciliation",
            fix="this is an engine bug: report it with the mapping; the previous site database was kept",
        )


def _prepare_database(
    db: Database, mapping: Mapping, mapping_path: Path, source_dir: Path, vocabulary_dir: Path, progress: Progress
) -> None:
    """Empty CDM, the vocabulary and the site's source_to_concept_map; then the concept names the mapping uses."""
    progress("vocabulary", 0, 1)
    if supports_deferred_keys(db.engine):  # the engine's own tables get their keys after the load
        create_cdm(db.engine, constraints="none", tables=list(TARGETS))
    create_cdm(db.engine)
    load_vocabulary(db, vocabulary_dir)
    if mapping.vocabulary.source_to_concept_map:
        load_source_to_concept_map(db, source_dir / mapping.vocabulary.source_to_concept_map)
    check_concept_names(db, mapping, mapping_path)
    progress("vocabulary", 1, 1)


def _read_sources(
    names: list[str], read: Callable[[str], SourceBatch], quarantine: Quarantine, progress: Progress, fhir: set[str]
) -> tuple[dict[str, pl.DataFrame], dict[str, int]]:
    """Each named source as a frame (read-time rejects go to the quarantine), and records read per source."""
    batches: dict[str, pl.DataFrame] = {}
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        progress("read sources", index, len(names))
        batch = read(name)
        quarantine.add_rejects(name, batch.rejects)
        batches[name] = _unique_rows(batch.frame, repeats_possible=name in fhir)
        seen[name] = batch.seen
    progress("read sources", len(names), len(names))
    return batches, seen


def _rule_tables(mapping: Mapping) -> dict[str, set[str]]:
    """Source -> the OMOP tables its rules are declared for."""
    found: dict[str, set[str]] = {}
    for table, rules in mapping.tables.items():
        for rule in rules:
            found.setdefault(rule.source, set()).add(table)
    return found


def _create_run_tables(db: Database) -> None:
    _create_bookkeeping(
        db,
        {
            QUARANTINE_TABLE: QUARANTINE_SCHEMA,
            LINEAGE_TABLE: LINEAGE_SCHEMA,
            RECONCILIATION_TABLE: RECONCILIATION_SCHEMA,
            RUN_TABLE: RUN_SCHEMA,
        },
    )


@dataclass
class _Totals:
    """What the chunks of a run add up to."""

    loaded: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    reconciliations: list[pl.DataFrame] = field(default_factory=list)
    read_seconds: float = 0.0

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


class _ChunkedRun:
    """One run over a site: its chunks mapped in turn into the same (aside) database."""

    def __init__(
        self, db: Database, mapping: Mapping, mapping_path: Path, source_dir: Path, run_id: str, progress: Progress
    ) -> None:
        self.db = db
        self.mapping = mapping
        self.mapping_path = mapping_path
        self.source_dir = source_dir
        self.run_id = run_id
        self.progress = progress
        self.units = UnitConverter(db, mapping.units, str(mapping_path))
        self.fhir = {name for name, source in mapping.sources.items() if source.is_fhir}
        self.totals = _Totals()
        self.ids_after: dict[str, int] = {}
        self.carried_keys: dict[str, pl.DataFrame] = {}
        self.cancer_concepts: list[int] | None = None
        self.codes = ResolutionCache()
        # DuckDB and PostgreSQL load a chunk on a second connection while the next chunk is built (both release
        # the GIL); SQLite connections stay on their thread, so it loads in turn
        self.loader = ThreadPoolExecutor(1, "fedomop-load") if db.dialect in ("duckdb", "postgresql") else None
        self.pending: Future[None] | None = None

    def whole(self) -> None:
        """The site in one piece (small sites, and mappings that cannot be split by person)."""
        names = list(self.mapping.sources)
        self._map_chunk(0, 1, names, lambda name: read_source(name, self.mapping.sources[name], self.source_dir))

    def chunked(self, plan: ChunkPlan, scratch: Path) -> None:
        """Stage the partitioned sources into ``plan.chunks`` person-disjoint chunks, then map them in turn."""
        staged = StagedSite(plan, self.mapping, self.source_dir, scratch)
        names = list(plan.person_columns)
        for index, name in enumerate(names):
            self.progress("split sources", index, len(names))
            staged.stage(name)
        self.progress("split sources", len(names), len(names))

        def read(chunk: int) -> Callable[[str], SourceBatch]:
            def one(name: str) -> SourceBatch:
                if name in plan.person_columns:
                    return staged.batch(name, chunk)
                return read_source(name, self.mapping.sources[name], self.source_dir)

            return one

        for chunk in range(plan.chunks):
            chunk_names = [n for n in self.mapping.sources if n in plan.person_columns or chunk == 0]
            self._map_chunk(chunk, plan.chunks, chunk_names, read(chunk), shared=plan.shared)
        _check_split(staged.records, self.totals.seen)

    def _map_chunk(
        self,
        chunk: int,
        chunks: int,
        names: list[str],
        read: Callable[[str], SourceBatch],
        shared: tuple[str, ...] = (),
    ) -> None:
        """Read, build, account for and load one chunk; what later chunks need is kept on ``self``."""
        progress = self.progress if chunks == 1 else _chunk_progress(self.progress, chunk, chunks)
        quarantine = Quarantine(self.run_id)
        read_started = time.perf_counter()
        batches, seen = _read_sources(names, read, quarantine, progress, self.fhir)
        if chunk == 0:
            seen.update(_inventory_unmapped(self.mapping, self.source_dir, quarantine))
        self.totals.read_seconds += time.perf_counter() - read_started
        ctx = RunContext(
            db=self.db,
            mapping=self.mapping,
            mapping_file=str(self.mapping_path),
            quarantine=quarantine,
            units=self.units,
            codes=self.codes,
        )
        build = SiteBuild(ctx, batches, progress, ids_after=self.ids_after, carried_keys=self.carried_keys)
        build.build_keyed()
        build.build_events()
        build.build_derived(str(self.mapping_path), with_cdm_source=chunk == 0, cancer_concepts=self.cancer_concepts)
        if build.cancer_concepts is not None:
            self.cancer_concepts = build.cancer_concepts
        if chunk == 0 and shared:
            self.carried_keys = build.shared_keys(shared)
        self.ids_after = build.last_ids()
        tables = {t: f for t, f in build.tables.items() if f.height}
        ledger = RecordLedger({name: frame.height for name, frame in batches.items()})
        for table, frame in tables.items():
            ledger.mark_loaded(table, frame)
        ledger.mark_quarantined(quarantine.frame())
        _quarantine_leftovers(batches, ledger, quarantine)
        recon = ledger.reconciliation(self.run_id, seen, _rule_tables(self.mapping))
        _check_reconciliation(recon)
        quarantined = quarantine.frame()
        self.totals.reasons.update(_summarise_reasons(quarantined))
        self.totals.seen.update(seen)
        self.totals.reconciliations.append(recon)
        self.wait_for_load()  # at most one chunk is loading while the next one is built
        if self.loader is None or chunks == 1:
            self._load(tables, quarantined, progress)
        else:
            self.pending = self.loader.submit(self._load, tables, quarantined, progress)

    def _load(self, tables: dict[str, pl.DataFrame], quarantined: pl.DataFrame, progress: Progress) -> None:
        self.totals.loaded.update(_load_tables(self.db, tables, progress))
        self.db.load_arrow(QUARANTINE_TABLE, quarantined.select(list(QUARANTINE_SCHEMA)))
        for table, frame in tables.items():
            constants = {"run_id": self.run_id, "omop_table": table}
            self.db.load_arrow(LINEAGE_TABLE, lineage_rows(_lineage_id(table), frame), constants=constants)

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


def _check_split(written: dict[str, int], mapped: Counter[str]) -> None:
    """The chunks mapped must add up to what the split wrote, source by source."""
    for source, count in written.items():
        if mapped[source] != count:
            raise ReconciliationError(
                f"source {source!r}: the split wrote {count} records but the chunks mapped {mapped[source]}",
                where="person-disjoint chunks",
                fix="this is an engine bug: report it with the mapping; the previous site database was kept",
            )


def _chunk_progress(progress: Progress, chunk: int, chunks: int) -> Progress:
    """Steps of a chunked run report as "chunk k/n": one bar that advances per chunk, not per table."""

    def report(label: str, done: int, total: int) -> None:
        if label == "load" and done == total:
            progress("chunks", chunk + 1, chunks)

    if chunk == 0:
        progress("chunks", 0, chunks)
    return report


def run_mapping(
    mapping_path: Path | str,
    source_dir: Path | str,
    db_url: str | Path,
    *,
    vocabulary: Path | None = None,
    progress: Progress | None = None,
    schema: str = "public",
    chunks: int | None = None,
    chunk_mb: int = DEFAULT_CHUNK_MB,
    scratch: Path | None = None,
) -> RunReport:
    """Map one site's extract into a fresh OMOP CDM v5.4 database (vocabulary included) and swap it in atomically.

    A site with more than ``chunk_mb`` MiB of source text is mapped in person-disjoint chunks (``chunks`` fixes
    their number), so memory stays bounded whatever the site's size; ``scratch`` holds the split sources
    (default: a temporary folder, removed afterwards).
    """
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    progress = progress or _noop
    mapping_path, source_dir = Path(mapping_path), Path(source_dir)
    mapping = load_mapping(mapping_path)
    check_mapping(mapping, mapping_path)
    if not source_dir.is_dir():
        raise MappingError("source folder not found", where=str(source_dir), fix="point --source at the extract folder")
    check_source_columns(mapping, mapping_path, source_dir)
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
    plan = plan_chunks(mapping, source_dir, chunks, chunk_mb)
    if plan.reason and chunks:
        raise MappingError(
            f"cannot map in {chunks} chunks: {plan.reason}",
            where=str(mapping_path),
            fix="leave --chunks out to map the site whole, or let each source name its person in one column",
        )
    run_id = f"{started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    target = AtomicTarget(db_url, run_id, schema=schema)
    with target as db:
        _prepare_database(db, mapping, mapping_path, source_dir, vocabulary_dir, progress)
        _create_run_tables(db)
        run = _ChunkedRun(db, mapping, mapping_path, source_dir, run_id, progress)
        try:
            if plan.chunks == 1:
                run.whole()
            else:
                with tempfile.TemporaryDirectory(prefix="fedomop-chunks-", dir=scratch) as folder:
                    run.chunked(plan, Path(folder))
            run.close()
        except BaseException as exc:
            if (loading := run.abandon()) is not None:
                exc.add_note(f"the chunk loading in the background also failed: {loading}")
            raise
        totals = run.totals
        recon = totals.reconciliation()
        _check_reconciliation(recon)
        if supports_deferred_keys(db.engine):
            progress("primary keys", 0, 1)
            add_primary_keys(db.engine, TARGETS)
            progress("primary keys", 1, 1)
        records_read = sum(totals.seen.values())
        records_quarantined = int(recon.filter(pl.col("omop_table") == ALL_TABLES).get_column("quarantined").sum())
        run_row = {
            "run_id": run_id,
            "site": mapping.site,
            "mapping_file": str(mapping_path),
            "source_dir": str(source_dir),
            "started_at": started_at,
            "finished_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            "records_read": records_read,
            "rows_loaded": sum(totals.loaded.values()),
            "records_quarantined": records_quarantined,
        }
        db.load_arrow(RECONCILIATION_TABLE, recon.select(list(RECONCILIATION_SCHEMA)))
        db.load_arrow(RUN_TABLE, pl.DataFrame([run_row], schema=RUN_SCHEMA))
        target.commit()
    return RunReport(
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
        chunks=plan.chunks,
        unsplit_reason=plan.reason,
    )

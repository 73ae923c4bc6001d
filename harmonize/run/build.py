"""Build one chunk's OMOP tables from its source frames: rules table by table, domain routing, ids, derived tables.

Nothing here touches the database except to read the vocabulary; the finished frames go to :mod:`.load`.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from fedomop.harmonize.cdm import load_spec
from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.mapping.models import Rule
from fedomop.harmonize.run.ids import assign_ids
from fedomop.harmonize.run.progress import Progress
from fedomop.harmonize.run.rules import FIELD_PREFIX, RuleEvaluator, RunContext
from fedomop.harmonize.run.shorten import Shortened
from fedomop.harmonize.tables import (
    DOMAIN_TABLES,
    KEYED_TABLES,
    TARGETS,
    cdm_source,
    episode,
    episode_event,
    observation_period,
)
from fedomop.harmonize.tables.visit_occurrence import OPEN_END, close_open_visits
from fedomop.harmonize.vocabulary import (
    descendants,
    standard_concept_by_code,
)

_POLARS_TYPE: dict[str, pl.DataType] = {
    "integer": pl.Int64(),
    "float": pl.Float64(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us"),
}


_LINEAGE_COLUMNS = ("_source", "_source_file", "_source_row", "_rule", "_ord", "_target", "_source_key", OPEN_END)


_DEFAULT_PERIOD_TYPE = 32817  # "EHR"; a mapping may declare its own observation_period.type_concept


def _spec_types(table: str) -> dict[str, pl.DataType]:
    return {f.name: _POLARS_TYPE.get(f.datatype, pl.String()) for f in load_spec().table(table).fields}


def _to_table_columns(table: str, rows: pl.DataFrame) -> pl.DataFrame:
    """Rename slot columns to this table's columns; ``fields:`` apply where the rule declared this table, and in a
    table rows are routed to only where that table has the same column (value_as_concept_id, quantity ...)."""
    target = TARGETS[table]
    renamed = rows.rename({s: c for s, c in target.columns.items() if s in rows.columns and s != "_source_key"})
    field_columns = [c for c in renamed.columns if c.startswith(FIELD_PREFIX)]
    declared_here = renamed.height and renamed.get_column("_declared")[0] == table
    if declared_here:
        renamed = renamed.rename({c: c[len(FIELD_PREFIX) :] for c in field_columns})
    else:  # routed here by domain: a field this table also has (value_as_concept_id ...) comes along
        own = set(load_spec().table(table).column_names) - set(renamed.columns)
        carried = {c: c[len(FIELD_PREFIX) :] for c in field_columns if c[len(FIELD_PREFIX) :] in own}
        renamed = renamed.drop([c for c in field_columns if c not in carried]).rename(carried)
    key_column = target.columns.get("_source_key")
    if key_column and "_source_key" in renamed.columns:  # the record's id is the *_source_value unless a field says
        present = key_column in renamed.columns
        value = pl.coalesce(key_column, "_source_key") if present else pl.col("_source_key")
        renamed = renamed.with_columns(value.cast(pl.String).alias(key_column))
    types = _spec_types(table)
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in types.items() if name not in renamed.columns]
    return renamed.with_columns(missing)


def _cast_to_spec(table: str, frame: pl.DataFrame, shortened: Shortened) -> pl.DataFrame:
    """Spec types and varchar lengths (PostgreSQL would refuse longer text); lineage columns kept. A longer text
    gets its recorded short form (:mod:`.shorten`): never cut silently."""
    exprs = []
    fitted = frame
    for f in load_spec().table(table).fields:
        dtype = _POLARS_TYPE.get(f.datatype, pl.String())
        column = pl.col(f.name).cast(dtype, strict=False)
        if f.datatype == "varchar":
            column = pl.col(f.name).cast(pl.String)
            if f.length and f.name in frame.columns:
                fitted = shortened.fit(table, f.name, f.length, fitted.with_columns(pl.col(f.name).cast(pl.String)))
        exprs.append(column.alias(f.name))
    keep = [c for c in _LINEAGE_COLUMNS if c in fitted.columns]
    return fitted.select(*exprs, *keep)


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

    def _evaluate_table_rules(
        self, table: str, batches: dict[str, pl.DataFrame] | None = None
    ) -> list[tuple[Rule, pl.DataFrame]]:
        """Each rule of the table over its source (rules of sources not in this chunk are skipped)."""
        batches = self.batches if batches is None else batches
        rules = self.ctx.mapping.tables.get(table, [])
        frames = []
        for index, rule in enumerate(rules):
            self.progress(table, index, len(rules))
            if rule.source in batches:
                number = self.rule_numbers[(table, index)]
                frames.append((rule, self.evaluator.evaluate(table, number, rule, batches[rule.source])))
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
        frame = _cast_to_spec(table, target.finish(frame), self.ctx.shortened)
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
            if table == "person" and "_source_key" in rows.columns:
                self.ctx.remember_refused(
                    table,
                    rows.filter(pl.col("_source_key").is_not_null()).select(
                        pl.col("_source_key").cast(pl.String).alias("_key"),
                        pl.format("missing required OMOP field(s): {}", missing).alias("_refused"),
                    ),
                )
        return frame.filter(~bad)

    def build_keyed(self) -> None:
        for table in KEYED_TABLES:
            evaluated = self._evaluate_table_rules(table)
            frame = self._finish(table, [f for _, f in evaluated])
            self.tables[table] = frame
            keys = [self.carried_keys[table]] if table in self.carried_keys else []
            if frame.height:
                keys.append(frame.select(_key_columns(table)))
            if len(keys) == 1 and _unique_by_rule(evaluated):
                self.ctx.keys[table] = keys[0]
            elif keys:
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
        tables = [t for t in TARGETS if t not in KEYED_TABLES and not TARGETS[t].derived]
        rules = [rule for table in tables for rule in self.ctx.mapping.tables.get(table, [])]
        batches = self.evaluator.share_reference_joins(rules, self.batches)
        for table in tables:
            for rule, rule_frame in self._evaluate_table_rules(table, batches):
                for target, part in self._route(table, rule.route_by_domain, rule_frame).items():
                    routed.setdefault(target, []).append(part)
        for table, frames in routed.items():
            self.tables[table] = self._finish(table, frames)

    @staticmethod
    def _route(table: str, by_domain: bool, rows: pl.DataFrame) -> dict[str, pl.DataFrame]:
        if not by_domain or "_domain" not in rows.columns or TARGETS[table].domain is None:
            return {table: rows}
        # Each row's target as a small integer, then one filter per target present (in order of first appearance):
        # most rules route every row to their own table, and then the frame is handed on without a copy.
        # ``partition_by`` on the table names grouped the strings and gathered every column even then (6 CPU s of
        # 1M persons' rules).
        names = list(dict.fromkeys([table, *DOMAIN_TABLES.values()]))
        codes = {domain: names.index(name) for domain, name in DOMAIN_TABLES.items()}
        target = (
            rows.get_column("_domain")
            .cast(pl.String)
            .replace_strict(codes, default=0, return_dtype=pl.UInt8)
            .fill_null(0)
        )
        present = target.unique(maintain_order=True).to_list()
        if len(present) == 1:
            return {names[present[0]]: rows}
        return {names[code]: rows.filter(target == code) for code in present}

    def build_derived(
        self, mapping_file: str, *, with_cdm_source: bool = True, cancer_concepts: list[int] | None = None
    ) -> None:
        """observation_period, episode + episode_event, cdm_source.

        ``cancer_concepts``: ids an earlier chunk resolved; resolved here when needed, then kept on ``self``.
        """
        mapping, db = self.ctx.mapping, self.ctx.db
        if "visit_occurrence" in self.tables:
            self.tables["visit_occurrence"] = close_open_visits(
                self.tables["visit_occurrence"], observation_period.person_last_dates(self.tables)
            )
        person = self.tables.get("person", pl.DataFrame())
        period_type = (
            mapping.observation_period.type_concept.constant if mapping.observation_period else _DEFAULT_PERIOD_TYPE
        )
        if person.height:
            period = observation_period.build(self.tables, person, int(period_type or 0))
            if period.height:
                period = self._continue_ids("observation_period", period)
                self.tables["observation_period"] = _cast_to_spec(
                    "observation_period", _to_table_columns_derived("observation_period", period), self.ctx.shortened
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
                self.tables["episode"] = _cast_to_spec(
                    "episode", _to_table_columns_derived("episode", episodes), self.ctx.shortened
                )
                events = episode_event.build(cancers, episodes)
                self.tables["episode_event"] = _cast_to_spec(
                    "episode_event", _to_table_columns_derived("episode_event", events), self.ctx.shortened
                )
        if with_cdm_source:
            version = _vocabulary_version(db)
            row = cdm_source.build(mapping.cdm_source, version, mapping_file, dt.date.today())
            self.tables["cdm_source"] = _cast_to_spec(
                "cdm_source", _to_table_columns_derived("cdm_source", row), self.ctx.shortened
            )

    def _continue_ids(self, table: str, frame: pl.DataFrame) -> pl.DataFrame:
        """Derived tables number from 1 per build; shift past the ids earlier chunks used."""
        after = self.ids_after.get(table, 0)
        column = TARGETS[table].id_column
        return frame.with_columns(pl.col(column) + after) if after else frame

    def last_ids(self) -> dict[str, int]:
        """Per table with engine-assigned ids, the largest id so far (where the next chunk continues)."""
        return last_ids(self.tables, self.ids_after)


def last_ids(tables: dict[str, pl.DataFrame], before: dict[str, int]) -> dict[str, int]:
    """``before`` raised to the largest id of each table with engine-assigned ids in ``tables``."""
    last = dict(before)
    for table, frame in tables.items():
        target = TARGETS[table]
        if frame.height and target.id_column and not target.one_per_person:
            top = frame.select(pl.col(target.id_column).max()).item()
            last[table] = max(last.get(table, 0), int(top))
    return last


def _unique_by_rule(evaluated: list[tuple[Rule, pl.DataFrame]]) -> bool:
    """The rows of one rule with an id and no code resolution have one row per source key already (the rule
    quarantined the duplicates), so the lookup needs no second pass for uniqueness (1-2 CPU s at 1M persons).
    Several rules, or a code with several "Maps to" targets, can repeat a key."""
    return len(evaluated) == 1 and bool(evaluated[0][0].id) and evaluated[0][0].concept is None


def _key_columns(table: str) -> list[pl.Expr]:
    """(_key, _id): a keyed table's source id and OMOP id, the lookup events join on."""
    return [pl.col("_source_key").cast(pl.String).alias("_key"), pl.col(TARGETS[table].id_column).alias("_id")]


def _to_table_columns_derived(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    types = _spec_types(table)
    return frame.with_columns(pl.lit(None, dtype).alias(n) for n, dtype in types.items() if n not in frame.columns)


def _vocabulary_version(db: Database) -> str:
    found = db.query("SELECT vocabulary_version FROM vocabulary WHERE vocabulary_id = 'None'")
    return str(found.item(0, 0)) if found.height and found.item(0, 0) else "unknown"

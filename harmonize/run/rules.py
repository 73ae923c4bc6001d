"""Evaluate one mapping rule over one source: slot columns, field expressions, lookups and rejects.

A rule turns source rows into rows of internal slot columns (see ``fedomop.harmonize.tables._target.RULE_SLOTS``).
Every row that fails (bad date, unparseable number, unknown person, duplicate id, unmapped code in
quarantine mode) goes to the quarantine with its field, value and reason, and leaves the rule's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from fedomop.harmonize.cdm import load_spec
from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import MappingError
from fedomop.harmonize.ground.parsing import FHIR, ISO, failed, fhir_precision, parse_any_datetime, parse_number
from fedomop.harmonize.mapping.models import (
    CodeExpr,
    ColumnExpr,
    ConceptConstant,
    ConceptFieldExpr,
    ConstantExpr,
    DateExpr,
    Filter,
    MapExpr,
    Mapping,
    Rule,
    Source,
    ValueExpr,
    WideColumn,
)
from fedomop.harmonize.run.datebounds import date_bounds
from fedomop.harmonize.run.quarantine import Quarantine
from fedomop.harmonize.run.shorten import Shortened
from fedomop.harmonize.run.units import UnitConverter
from fedomop.harmonize.tables import DOMAIN_TABLES, TARGETS
from fedomop.harmonize.tables.visit_occurrence import NO_END
from fedomop.harmonize.vocabulary import resolve_codes
from fedomop.harmonize.vocabulary.resolve import ResolutionCache

WIDE_COLUMN = "_wide_column"  # an unpivoted row's source column (named in its quarantine rows)
_WIDE_CODE = CodeExpr(code="_wide_code", vocabulary_column="_wide_vocabulary")
_WIDE_VALUE = ValueExpr(number="_wide_value", unit="_wide_unit")
FIELD_PREFIX = "="  # evaluated ``fields:`` columns travel as "=<omop column>" until the row's table is known
REFERENCE_SLOTS = {
    "visit": "visit_occurrence",
    "provider": "provider",
    "care_site": "care_site",
    "location": "location",
}


@dataclass
class RunContext:
    """What rule evaluation needs from the run: database, mapping, lookups of already-built keyed tables."""

    db: Database
    mapping: Mapping
    mapping_file: str
    quarantine: Quarantine
    units: UnitConverter
    keys: dict[str, pl.DataFrame] = field(default_factory=dict)  # table -> (_key, _id)
    # table -> (_key, reason): keyed rows (a person) the run quarantined, so rows referring to one say why
    refused: dict[str, pl.DataFrame] = field(default_factory=dict)
    codes: ResolutionCache = field(default_factory=ResolutionCache)  # answers shared by the run's chunks
    shortened: Shortened = field(default_factory=lambda: Shortened(""))  # over-long texts, recorded (shorten.py)

    def remember_refused(self, table: str, refused: pl.DataFrame) -> None:
        """Add (_key, _refused) rows: keyed source rows quarantined, with the reason their references will cite."""
        if refused.height:
            known = self.refused.get(table)
            self.refused[table] = refused if known is None else pl.concat([known, refused])


@dataclass
class Problem:
    """A per-row check: rows where ``mask`` holds are quarantined with this field, value and reason."""

    mask: pl.Expr
    field: str
    value: pl.Expr
    reason: pl.Expr | str


_END_BEFORE_START = "implausible date: ends before it starts"


def _missing_code(concept: CodeExpr, source: Source) -> Problem:
    """A record with neither code nor text, where the rule requires one. When the code comes through a
    ``lookup:`` whose reference is set, the reason names the referenced record (a MedicationRequest pointing at a
    Medication the export does not hold, or at a contained one without a code) and the value is the reference,
    so the steward can fix the export."""
    nothing = pl.col(concept.code).is_null()
    if concept.text:
        nothing = nothing & pl.col(concept.text).is_null()
    reason: pl.Expr = pl.lit("missing code")
    value: pl.Expr = pl.lit(None, pl.String)
    for item in source.lookup:
        if concept.code in item.columns:
            referenced = pl.col(item.key).is_not_null()
            why = f"missing code: neither the record nor the {item.source} record it refers to ({item.key}) gives one"
            reason = pl.when(referenced).then(pl.lit(why)).otherwise(reason)
            value = pl.when(referenced).then(pl.col(item.key).cast(pl.String)).otherwise(value)
    return Problem(nothing, concept.code, value, reason)


def filter_mask(when: Filter) -> pl.Expr:
    """True where a row meets every condition of ``when`` (a null value meets no equals/in condition)."""
    column = pl.col(when.column).cast(pl.String)  # a boolean column (exists()) compares as "true"/"false"
    mask = pl.lit(True)
    if when.equals is not None:
        mask = mask & (column == when.equals)
    if when.in_ is not None:
        mask = mask & column.is_in(when.in_)
    if when.not_null:
        mask = mask & column.is_not_null()
    if when.is_null:
        mask = mask & column.is_null()
    for also in when.and_:
        mask = mask & filter_mask(also)
    return mask.fill_null(False)


def excluded_mask(source: Source) -> pl.Expr:
    """True where any of the source's ``exclude`` rules selects the row."""
    return pl.any_horizontal(*(filter_mask(e) for e in source.exclude)) if source.exclude else pl.lit(False)


def _apply_filter(rows: pl.DataFrame, when: Filter | None) -> pl.DataFrame:
    return rows if when is None else rows.filter(filter_mask(when))


def unpivot(rows: pl.DataFrame, columns: dict[str, WideColumn]) -> pl.DataFrame:
    """A wide export made long: one row per (source row, listed column holding a value), carrying the column's
    constant code and vocabulary, its value and unit. An empty cell is a test not done, not a record; the source
    row keeps its ``_ord``, so the reconciliation still counts it once however many rows it gives."""
    parts = []
    for column, wide in columns.items():
        unit = pl.col(wide.unit_column).cast(pl.String) if wide.unit_column else pl.lit(wide.unit, pl.String)
        parts.append(
            rows.filter(pl.col(column).is_not_null()).with_columns(
                pl.lit(column).alias(WIDE_COLUMN),
                pl.lit(wide.code or column).alias("_wide_code"),
                pl.lit(wide.vocabulary).alias("_wide_vocabulary"),
                pl.col(column).cast(pl.String).alias("_wide_value"),
                unit.alias("_wide_unit"),
            )
        )
    return pl.concat(parts)


def _date_format(expr: DateExpr, source: Source) -> str:
    """A FHIR source's dates follow the FHIR grammar (partial dates, offsets) unless the rule names a format."""
    fmt = expr.format or source.date_format
    return FHIR if fmt == ISO and source.format.startswith("fhir") else fmt


def _date_columns(prefix: str, expr: DateExpr, source: Source) -> tuple[list[pl.Expr], list[pl.Expr], Problem]:
    """The parsed date's columns, those derived from them (evaluated after), and its "bad date" problem.

    The text is parsed once, into ``<prefix>_datetime``; the date, the problem and the bound checks read that
    column (eager polars does not share a repeated parse between expressions: each re-parsed every row).
    """
    fmt = _date_format(expr, source)
    parsed = f"{prefix}_datetime"
    columns = [parse_any_datetime(expr.date, fmt).alias(parsed)]
    if fmt == FHIR:  # which parts the source gave (person keeps month/day of birth NULL when absent)
        columns.append(fhir_precision(expr.date).alias(f"{prefix}_precision"))
    derived = [pl.col(parsed).dt.date().alias(f"{prefix}_date")]
    problem = Problem(
        failed(expr.date, pl.col(parsed)), expr.date, pl.col(expr.date), f"bad date: does not match {fmt}"
    )
    return columns, derived, problem


def _constant_value(value: ConceptConstant | int | float | str | None) -> int | float | str | None:
    return value.concept_id if isinstance(value, ConceptConstant) else value


def _field_datatype(table: str, name: str) -> str:
    """The spec type of a ``fields:`` column: this table's, or, for a column only tables its rows may be routed
    to have (value_as_string on a measurement rule, see preflight), the first such table's."""
    spec = load_spec()
    if name in spec.table(table).column_names:
        return spec.table(table).field(name).datatype
    for other in DOMAIN_TABLES.values():
        if name in spec.table(other).column_names:
            return spec.table(other).field(name).datatype
    return spec.table(table).field(name).datatype  # raises SchemaError naming the valid fields


def _field_expr(name: str, expr: object, source: Source, datatype: str) -> tuple[pl.Expr, Problem | None]:
    """A ``fields:`` expression as a polars expression typed for its OMOP column (``datatype`` from the spec)."""
    out = f"{FIELD_PREFIX}{name}"
    if isinstance(expr, ConstantExpr):
        return pl.lit(expr.constant).alias(out), None
    if isinstance(expr, DateExpr):
        fmt = _date_format(expr, source)
        stamp = parse_any_datetime(expr.date, fmt)
        value = stamp if name.endswith("datetime") else stamp.dt.date()
        problem = Problem(failed(expr.date, stamp), expr.date, pl.col(expr.date), f"bad date: does not match {fmt}")
        return value.alias(out), problem
    if isinstance(expr, ConceptFieldExpr):  # the code for now; RuleEvaluator._concept_fields resolves it
        return pl.col(expr.concept).cast(pl.String).alias(out), None
    if isinstance(expr, MapExpr):
        values = {k: _constant_value(v) for k, v in expr.values.items()}
        default = _constant_value(expr.default)
        mapped = pl.col(expr.map).replace_strict(values, default=default)
        return mapped.alias(out), None
    assert isinstance(expr, ColumnExpr)
    if expr.decode == "base64":
        text = pl.col(expr.column).str.decode("base64", strict=False).cast(pl.String, strict=False)
        problem = Problem(
            failed(expr.column, text), expr.column, pl.col(expr.column).str.slice(0, 80), "undecodable base64"
        )
        return text.alias(out), problem
    kind = expr.cast or {"integer": "integer", "float": "float"}.get(datatype, "string")
    if datatype in ("date", "datetime") and not expr.cast:
        return _field_expr(name, DateExpr(date=expr.column), source, datatype)
    if kind in ("integer", "float"):  # typed by the target column, so bad text is quarantined, not nulled
        number = parse_number(expr.column, source.decimal)
        value = number.round(0).cast(pl.Int64) if kind == "integer" else number
        problem = Problem(failed(expr.column, number), expr.column, pl.col(expr.column), "unparseable number")
        return value.alias(out), problem
    return pl.col(expr.column).cast(pl.String).alias(out), None


# a CodeableConcept as JSON text: only what choosing its coding reads (display, text, version are ignored)
_CODEABLE_CONCEPT = pl.Struct({"coding": pl.List(pl.Struct({"system": pl.String, "code": pl.String}))})
_ROW = "__coding_row"


def _decoded_codings(rows: pl.DataFrame, column: str) -> pl.DataFrame:
    """(row index, coding index, system, code) of every coding with a code in the CodeableConcepts of
    ``column``, in document order (rows where the column is empty give none)."""
    given = rows.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias(_ROW), pl.col(column).cast(pl.String))
    given = given.filter(pl.col(column).is_not_null())
    try:
        decoded = given.select(_ROW, pl.col(column).str.json_decode(_CODEABLE_CONCEPT).struct.field("coding"))
    except pl.exceptions.PolarsError as error:
        raise MappingError(
            f"column {column!r} does not hold a CodeableConcept as JSON ({str(error).splitlines()[0]})",
            where=f"concept codings: {column}",
            fix='give codings: a column holding {"coding": [{"system": ..., "code": ...}]} (a FHIR path selecting '
            "a CodeableConcept, e.g. code), or remove codings:",
        ) from None
    return (
        decoded.explode("coding")
        .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over(_ROW).alias("__coding_index"))
        .unnest("coding")
        .filter(pl.col("code").is_not_null())
    )


_KEY_HASH_SEED = 20_261_207
_SHARED_IDS = "_shared_id:"  # prefix of a batch column holding ids joined once for several rules (see below)


def _join_key(rows: pl.DataFrame, column: str, lookup: pl.DataFrame | None, out: str) -> pl.DataFrame:
    """Add the OMOP id of the referenced keyed row (null when the key is absent or unknown)."""
    if lookup is None or lookup.is_empty():
        return rows.with_columns(pl.lit(None, pl.Int64).alias(out))
    # Only the key column goes through the join (joining the whole frame gathered every column: a tenth of the
    # rules' CPU at 1M persons), and on the keys' 64-bit hashes, each match then checked against the key text
    # itself (40% cheaper than joining on the text). The lookup's keys are unique, so the ids line up with the
    # rows; two lookup keys with one hash would add rows, and then the join on the text is used instead.
    keys = rows.select(pl.col(column).cast(pl.String).alias("_wanted"))
    table = lookup.select(pl.col("_key").hash(_KEY_HASH_SEED).alias("_hash"), "_key", "_id")
    found = keys.with_columns(pl.col("_wanted").hash(_KEY_HASH_SEED).alias("_hash")).join(
        table, on="_hash", how="left", maintain_order="left"
    )
    if found.height != rows.height:
        found = keys.join(
            lookup.select("_key", "_id"), left_on="_wanted", right_on="_key", how="left", maintain_order="left"
        ).with_columns(pl.col("_wanted").alias("_key"))
    ids = found.select(pl.when(pl.col("_key") == pl.col("_wanted")).then(pl.col("_id")).alias(out))
    return rows.with_columns(ids.get_column(out))


def _shared_name(table: str, column: str) -> str:
    return f"{_SHARED_IDS}{table}:{column}"


def _references(rule: Rule) -> list[tuple[str, str]]:
    """(source column, keyed table) of each person/visit/provider/... reference the rule makes."""
    slots = [(rule.person, "person")] + [(getattr(rule, slot), table) for slot, table in REFERENCE_SLOTS.items()]
    return [(column, table) for column, table in slots if column is not None]


class RuleEvaluator:
    """Evaluates rules of a mapping against source batches within one run."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def share_reference_joins(self, rules: list[Rule], batches: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
        """The batches, with the ids of every reference that several unfiltered rules make to one keyed table
        joined once for all of them (a column per (table, source column), which ``_join_references`` picks up).

        A join's cost is mostly the hash table of the lookup, built anew for every join: the four event sources of
        site A referring to one chunk's 940k visits paid for four of them (one join of the keys together: half the
        CPU). A rule with a ``when`` asks for no shared join (it may read a small part of its batch); it uses one
        that other rules of its source made, as the ids are the same.
        """
        wanted: dict[str, list[tuple[str, str]]] = {}
        for rule in rules:
            if rule.when is not None or rule.source not in batches:
                continue
            for column, table in _references(rule):
                pairs = wanted.setdefault(table, [])
                if column in batches[rule.source].columns and (rule.source, column) not in pairs:
                    pairs.append((rule.source, column))
        shared = dict(batches)
        for table, pairs in wanted.items():
            if len(pairs) < 2:
                continue
            keys = pl.concat(
                [batches[source].select(pl.col(column).cast(pl.String).alias("_k")) for source, column in pairs]
            )
            ids = _join_key(keys, "_k", self.ctx.keys.get(table), "_id").get_column("_id")
            offset = 0
            for source, column in pairs:
                size = batches[source].height
                shared[source] = shared[source].with_columns(ids.slice(offset, size).alias(_shared_name(table, column)))
                offset += size
        return shared

    def _ids(self, rows: pl.DataFrame, column: str, table: str, out: str) -> pl.DataFrame:
        """``rows`` with the ids its ``column`` refers to in ``table``: joined here, or by ``share_reference_joins``."""
        shared = _shared_name(table, column)
        if shared in rows.columns:
            return rows.with_columns(pl.col(shared).alias(out))
        return _join_key(rows, column, self.ctx.keys.get(table), out)

    def quarantine_rows(self, source: str, rows: pl.DataFrame, problem: Problem) -> None:
        wide = problem.field.startswith("_wide_") and WIDE_COLUMN in rows.columns
        field = pl.col(WIDE_COLUMN) if wide else problem.field  # the wide export's own column, not the engine's
        self.ctx.quarantine.add_rows(source, rows, field, problem.value, problem.reason)

    def _drop_problems(
        self, source: str, rows: pl.DataFrame, problems: list[Problem], table: str | None = None
    ) -> pl.DataFrame:
        """Quarantine rows with any problem (one quarantine row per problem) and keep the rest.

        For the person table, the refused keys and their first reason are remembered (``RunContext.refused``),
        so an event of a refused person is quarantined as "person quarantined: <reason>", not "unknown person".
        """
        if not problems:
            return rows
        flags = rows.with_columns(*(p.mask.fill_null(False).alias(f"_bad{i}") for i, p in enumerate(problems)))
        for i, problem in enumerate(problems):
            self.quarantine_rows(source, flags.filter(pl.col(f"_bad{i}")), problem)
        any_bad = pl.any_horizontal(*(pl.col(f"_bad{i}") for i in range(len(problems))))
        if table == "person" and "_source_key" in flags.columns:
            self._remember_refused(table, flags.filter(any_bad), problems)
        return flags.filter(~any_bad).drop(f"_bad{i}" for i in range(len(problems)))

    def _remember_refused(self, table: str, bad: pl.DataFrame, problems: list[Problem]) -> None:
        if not bad.height:
            return
        first_reason = pl.coalesce(
            *(
                pl.when(pl.col(f"_bad{i}")).then(pl.lit(p.reason) if isinstance(p.reason, str) else p.reason)
                for i, p in enumerate(problems)
            )
        )
        first_field = pl.coalesce(*(pl.when(pl.col(f"_bad{i}")).then(pl.lit(p.field)) for i, p in enumerate(problems)))
        refused = bad.filter(pl.col("_source_key").is_not_null()).select(
            pl.col("_source_key").cast(pl.String).alias("_key"),
            pl.format("{} ({})", first_reason.cast(pl.String), first_field).alias("_refused"),
        )
        self.ctx.remember_refused(table, refused)

    def evaluate(self, table: str, rule_index: int, rule: Rule, frame: pl.DataFrame) -> pl.DataFrame:
        """Slot columns for every accepted row of ``rule`` (lineage columns kept)."""
        source = self.ctx.mapping.sources[rule.source]
        kept = frame.filter(~excluded_mask(source)) if source.exclude else frame
        rows = _apply_filter(kept, rule.when)
        if rule.unpivot is not None:  # each listed column as a coded value, then the rule as any other
            rows = unpivot(rows, rule.unpivot)
            rule = rule.model_copy(update={"concept": _WIDE_CODE, "value": _WIDE_VALUE, "unpivot": None})
        rows = rows.with_columns(
            pl.lit(rule_index).alias("_rule"), pl.lit(rule.source).alias("_source"), pl.lit(table).alias("_declared")
        )
        problems: list[Problem] = []
        exprs: list[pl.Expr] = []
        derived: list[pl.Expr] = []  # read columns of ``exprs``: evaluated after them
        if rule.id:
            exprs.append(pl.col(rule.id).alias("_source_key"))
            problems.append(Problem(pl.col(rule.id).is_null(), rule.id, pl.lit(None), "missing id"))
        for prefix, date in (("_start", rule.start), ("_end", rule.end)):
            if date is not None:
                columns, from_columns, date_problem = _date_columns(prefix, date, source)
                exprs += columns
                derived += from_columns
                problems.append(date_problem)
                problems += self._bounds(table, prefix, date)
        if rule.end is None:
            if TARGETS[table].marks_no_end:  # the table decides what no end means (visit_occurrence: the CDM's)
                exprs.append(pl.lit(True).alias(NO_END))
        elif rule.start is not None and table != "person":  # DQD plausibleStartBeforeEnd: compared as dates
            ends_first = pl.col("_end_datetime").dt.date() < pl.col("_start_datetime").dt.date()
            problems.append(Problem(ends_first, rule.end.date, pl.col(rule.end.date), _END_BEFORE_START))
        if rule.start is not None and table != "person":
            problems.append(Problem(pl.col(rule.start.date).is_null(), rule.start.date, pl.lit(None), "missing date"))
        if rule.value is not None:
            number = parse_number(rule.value.number, source.decimal)
            unit = pl.col(rule.value.unit) if rule.value.unit else pl.lit(rule.value.unit_constant, pl.String)
            exprs += [
                number.alias("_value"),
                unit.alias("_unit_source_value"),
                unit.cast(pl.String).replace(self.ctx.mapping.unit_aliases).alias("_unit_code"),
                pl.coalesce(
                    pl.col(rule.value.number).cast(pl.String),
                    *([pl.col(rule.value.text).cast(pl.String)] if rule.value.text else []),
                ).alias("_value_source_value"),
            ]
            problems.append(
                Problem(
                    failed(rule.value.number, pl.col("_value")),  # the parsed column, not a second parse
                    rule.value.number,
                    pl.col(rule.value.number),
                    "unparseable number",
                )
            )
            if rule.value.required:
                nothing = pl.col(rule.value.number).is_null()  # a coded/string result is a value too
                if rule.value.text:
                    nothing = nothing & pl.col(rule.value.text).is_null()
                problems.append(Problem(nothing, rule.value.number, pl.lit(None), "missing value"))
        if rule.concept is not None and rule.concept.required:
            problems.append(_missing_code(rule.concept, source))
        if rule.type_concept is not None:
            exprs.append(pl.lit(rule.type_concept.constant, pl.Int64).alias("_type_concept_id"))
        for name, expr in rule.fields.items():
            value, problem = _field_expr(name, expr, source, _field_datatype(table, name))
            exprs.append(value)
            if problem:
                problems.append(problem)
        rows = rows.with_columns(exprs) if exprs else rows
        rows = rows.with_columns(derived) if derived else rows
        rows = self._concept_fields(rule, rows)
        rows = self._join_references(rule, rows, problems)
        rows = self._drop_problems(rule.source, rows, problems, table)
        if rule.id:
            rows = self._drop_duplicates(rule, rows)
        if rule.concept is not None:
            rows = self._resolve(rule, rows)
        else:
            rows = rows.with_columns(pl.lit(0, pl.UInt32).alias("_target"))
        if rule.value is not None:
            rows = self._convert_units(rule, rows)
        return rows.select(
            c for c in rows.columns if c.startswith(("_", FIELD_PREFIX)) and not c.startswith(("_wide_", _SHARED_IDS))
        )

    def _bounds(self, table: str, prefix: str, date: DateExpr) -> list[Problem]:
        """Implausible dates (harmonize/run/datebounds.py) as problems: quarantined with their reason.

        The checks read the date parsed once into ``<prefix>_datetime`` (see ``_date_columns``)."""
        checks = date_bounds(
            pl.col(f"{prefix}_datetime"),
            date.date,
            self.ctx.mapping.date_bounds,
            birth=table == "person",
            start=prefix == "_start",
        )
        return [Problem(b.mask, date.date, pl.col(date.date), b.reason) for b in checks]

    def _join_references(self, rule: Rule, rows: pl.DataFrame, problems: list[Problem]) -> pl.DataFrame:
        if rule.person is not None:
            rows = self._ids(rows, rule.person, "person", "_person_id")
            refused = self.ctx.refused.get("person")
            if refused is not None and refused.height:  # the person exists in the extract but was quarantined
                first = refused.unique("_key", keep="first", maintain_order=True)
                rows = rows.with_columns(pl.col(rule.person).cast(pl.String).alias("_join")).join(
                    first, left_on="_join", right_on="_key", how="left", maintain_order="left"
                )
                rows = rows.drop("_join")
            else:
                rows = rows.with_columns(pl.lit(None, pl.String).alias("_refused"))
            contained = pl.col(rule.person).cast(pl.String).str.starts_with("#")  # FHIR '#id': inside the record
            reason = (
                pl.when(pl.col("_refused").is_not_null())
                .then(pl.format("person quarantined: {}", pl.col("_refused")))
                .when(contained)
                .then(pl.lit("unknown person: a resource contained in the record (#id), not a person of the extract"))
                .otherwise(pl.lit("unknown person"))
            )
            problems.append(Problem(pl.col("_person_id").is_null(), rule.person, pl.col(rule.person), reason))
        for slot, table in REFERENCE_SLOTS.items():
            column = getattr(rule, slot)
            if column is not None:
                rows = self._ids(rows, column, table, f"_{slot}_id")
        return rows

    def _drop_duplicates(self, rule: Rule, rows: pl.DataFrame) -> pl.DataFrame:
        order = rows.get_column("_ord")
        # Rules hand over rows in batch order; sorting them anyway moved every column (a second at 1M persons).
        in_order = order.null_count() == 0 and order.is_sorted()
        first = (rows if in_order else rows.sort("_ord")).with_columns(
            pl.col("_source_key").is_first_distinct().alias("_first")
        )
        dupes = first.filter(~pl.col("_first"))
        self.quarantine_rows(
            rule.source, dupes, Problem(pl.lit(True), rule.id or "id", pl.col("_source_key"), "duplicate id")
        )
        return first.filter(pl.col("_first")).drop("_first")

    def _concept_fields(self, rule: Rule, rows: pl.DataFrame) -> pl.DataFrame:
        """``{concept: ...}`` fields: code -> standard concept id (lowest "Maps to" target; 0 unmapped; NULL no code)."""
        for name, expr in rule.fields.items():
            if not isinstance(expr, ConceptFieldExpr) or not rows.height:
                continue
            out = f"{FIELD_PREFIX}{name}"
            code = CodeExpr(
                code=expr.concept,
                vocabulary=expr.vocabulary,
                vocabulary_column=expr.vocabulary_column,
                system_column=expr.system_column,
            )
            keyed = rows.select(
                pl.col("_ord"),
                self._vocabulary_expr(code).alias("vocabulary_id"),
                pl.col(out).alias("source_code"),
                *([pl.col(expr.codings)] if expr.codings else []),
            )
            if expr.codings:
                keyed = self._choose_coding(keyed, expr.codings).drop(expr.codings, "__coding_chosen")
            found = (
                resolve_codes(self.ctx.db, keyed, cache=self.ctx.codes)
                .group_by("_ord", maintain_order=True)
                .agg(pl.col("concept_id").min().alias("__concept"))
            )
            rows = (
                rows.join(found, on="_ord", how="left", maintain_order="left")
                .with_columns(
                    pl.when(pl.col(out).is_null()).then(None).otherwise(pl.col("__concept").fill_null(0)).alias(out)
                )
                .drop("__concept")
            )
        return rows

    def _choose_coding(self, keyed: pl.DataFrame, column: str | None) -> pl.DataFrame:
        """``keyed`` (vocabulary_id, source_code per row), with the rows whose ``column`` holds a CodeableConcept
        set to its chosen coding: the first, in document order, that maps to a standard concept (the site
        source_to_concept_map or "Maps to", as ``resolve_codes`` answers), else its first coding with a code.
        ``__coding_chosen`` is true on those rows. Rows without one keep theirs: the usual single-coding record
        (for which the standard FHIR mapping leaves the column empty) costs one null count."""
        if column is None or keyed.get_column(column).null_count() == keyed.height:
            return keyed.with_columns(pl.lit(False).alias("__coding_chosen"))
        codings = _decoded_codings(keyed, column)
        systems = self.ctx.mapping.vocabulary.fhir_systems
        candidates = codings.select(
            _ROW,
            "__coding_index",
            pl.col("system").replace_strict(systems, default=None, return_dtype=pl.String).alias("vocabulary_id"),
            pl.col("code").alias("source_code"),
        )
        answered = resolve_codes(self.ctx.db, candidates, cache=self.ctx.codes)
        maps = answered.group_by(_ROW, "__coding_index").agg(
            (pl.col("concept_id") != 0).any().alias("__maps"),
            pl.col("vocabulary_id", "source_code").first(),
        )
        chosen = (
            maps.sort(_ROW, pl.col("__maps").not_(), "__coding_index")
            .unique(_ROW, keep="first", maintain_order=True)
            .select(
                _ROW,
                pl.col("vocabulary_id").alias("__coding_vocabulary"),
                pl.col("source_code").alias("__coding_code"),
                pl.lit(True).alias("__coding_chosen"),
            )
        )
        found = keyed.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias(_ROW)).join(
            chosen, on=_ROW, how="left", maintain_order="left"
        )
        picked = pl.col("__coding_chosen").fill_null(False)
        return (
            keyed.with_columns(found.drop(_ROW).get_columns())
            .with_columns(
                pl.when(picked)
                .then(pl.col("__coding_vocabulary"))
                .otherwise(pl.col("vocabulary_id"))
                .alias("vocabulary_id"),
                pl.when(picked).then(pl.col("__coding_code")).otherwise(pl.col("source_code")).alias("source_code"),
                picked.alias("__coding_chosen"),
            )
            .drop("__coding_vocabulary", "__coding_code")
        )

    def _vocabulary_expr(self, code: CodeExpr) -> pl.Expr:
        if code.vocabulary:
            return pl.lit(code.vocabulary, pl.String)
        if code.vocabulary_column:
            return pl.col(code.vocabulary_column)
        systems = self.ctx.mapping.vocabulary.fhir_systems
        assert code.system_column, "the mapping model requires one of vocabulary, vocabulary_column, system_column"
        return pl.col(code.system_column).replace_strict(systems, default=None, return_dtype=pl.String)

    def _resolve(self, rule: Rule, rows: pl.DataFrame) -> pl.DataFrame:
        """Source code -> standard concept(s) in the site vocabulary; one output row per "Maps to" target."""
        code = rule.concept
        assert code is not None
        keyed = rows.with_columns(
            self._vocabulary_expr(code).alias("vocabulary_id"),
            pl.col(code.code).cast(pl.String).alias("source_code"),
            (
                pl.coalesce(pl.col(code.source_value or code.code), pl.col(code.text))
                if code.text
                else pl.col(code.source_value or code.code)
            ).alias("_source_value"),
        )
        if code.codings is not None:  # the source value is the chosen coding's code (unless a column is named)
            keyed = self._choose_coding(keyed, code.codings)
            if code.source_value is None:
                chosen = pl.col("__coding_chosen")
                keyed = keyed.with_columns(
                    pl.when(chosen)
                    .then(pl.col("source_code"))
                    .otherwise(pl.col("_source_value"))
                    .alias("_source_value")
                )
            keyed = keyed.drop("__coding_chosen")
        resolved = resolve_codes(self.ctx.db, keyed, cache=self.ctx.codes).with_columns(
            pl.col("concept_id").fill_null(0).alias("_concept_id"),
            pl.col("source_concept_id").fill_null(0).alias("_source_concept_id"),
            pl.col("domain_id").alias("_domain"),
        )
        if resolved.height == rows.height and WIDE_COLUMN not in rows.columns:  # one target per row (order kept)
            resolved = resolved.with_columns(pl.lit(1, pl.UInt32).alias("_target"))
        else:
            resolved = resolved.with_columns(pl.col("_ord").cum_count().over("_ord").cast(pl.UInt32).alias("_target"))
        unmapped = resolved.filter(pl.col("_concept_id") == 0)
        mode = self.ctx.mapping.on_unmapped
        if mode == "concept_zero" or unmapped.is_empty():
            return resolved.drop(
                "vocabulary_id",
                "source_code",
                "source_concept_id",
                "concept_id",
                "domain_id",
                "concept_name",
                "mapped_via",
            )
        value = pl.format(
            "{} {}", pl.col("vocabulary_id").fill_null("(unknown system)"), pl.col("source_code").fill_null("(none)")
        )
        if mode == "fail":
            first = unmapped.row(0, named=True)
            raise MappingError(
                f"unmapped code {first['vocabulary_id']} {first['source_code']!r} ({unmapped.height} unmapped row(s))",
                where=f"{first['_source_file']} row {first['_source_row']}, field {code.code}",
                fix="add it to the site source_to_concept_map, or set on_unmapped: concept_zero | quarantine",
            )
        self.quarantine_rows(rule.source, unmapped, Problem(pl.lit(True), code.code, value, "unmapped code"))
        mapped = resolved.filter(pl.col("_concept_id") != 0)
        return mapped.drop(
            "vocabulary_id", "source_code", "source_concept_id", "concept_id", "domain_id", "concept_name", "mapped_via"
        )

    def _convert_units(self, rule: Rule, rows: pl.DataFrame) -> pl.DataFrame:
        if "_concept_id" not in rows.columns:
            rows = rows.with_columns(pl.lit(0, pl.Int64).alias("_concept_id"))
        good, bad = self.ctx.units.apply(rows)
        assert rule.value is not None
        self.quarantine_rows(
            rule.source, bad, Problem(pl.lit(True), rule.value.number, pl.col("_value_source_value"), pl.col("_reason"))
        )
        return good

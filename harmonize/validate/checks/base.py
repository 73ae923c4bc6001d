"""The check framework: check instances, the SQL they run, and the registry of check types.

A *check type* (``isRequired``, ``plausibleGender``, or a site's own) is a small
function registered with :func:`register_check`. Given a :class:`CheckContext`
(the database's tables and columns, the catalogue, the SQL dialect) it returns
the SQL to run: either :class:`RowPredicate` objects (a condition on one table's
rows; the runner folds every predicate of a table into one scan) or
:class:`CheckQuery` objects (any SQL returning ``check_key, num_violated_rows,
num_denominator_rows``). Nothing is pulled into Python but those counts.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.validate.catalogue import Catalogue, CheckType, Row, load_catalogue

SEVERITIES = ("fatal", "convention", "characterization")


@dataclass(frozen=True)
class CheckInstance:
    """One check on one table / field / concept, with its threshold (percent of rows allowed to violate)."""

    check: CheckType
    table: str
    field: str | None = None
    concept_id: int | str | None = None  # a str lists several ids ("4090861,4025213")
    unit_concept_id: int | None = None
    threshold: float = 0.0
    description: str = ""

    @property
    def check_id(self) -> str:
        parts = [self.check.name, self.table, self.field, self.concept_id, self.unit_concept_id]
        return ".".join(str(p) for p in parts if p is not None)


@dataclass(frozen=True)
class RowPredicate:
    """Violations are the rows of ``table`` where ``violated`` holds, out of those where ``denominator`` holds."""

    instance: CheckInstance
    violated: str
    denominator: str = "1 = 1"

    def rows_sql(self) -> str:
        """The SQL that lists the violating rows (shown in the QA report and the DQD export's queryText)."""
        return f"SELECT * FROM {q(self.instance.table)} WHERE ({self.denominator}) AND ({self.violated})"


@dataclass(frozen=True)
class CheckQuery:
    """Arbitrary SQL returning ``check_key`` (index into ``instances``), ``num_violated_rows``,
    ``num_denominator_rows``; instances without a row count as 0 of 0."""

    sql: str
    instances: tuple[CheckInstance, ...]
    rows_sql: tuple[str, ...] = ()  # per instance, the SQL listing its violating rows (empty: the counting SQL)


@dataclass(frozen=True)
class Absent:
    """A check that cannot run on this database (its table or field is missing): reported, not silently dropped."""

    instance: CheckInstance
    reason: str


CheckWork = RowPredicate | CheckQuery | Absent
CheckBuilder = Callable[["CheckContext"], Iterable[CheckWork]]


def q(name: str) -> str:
    """Quote an identifier (lower-case OMOP names; the same in DuckDB and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class CheckContext:
    """What a check builder may look at: the live schema, the catalogue, the dialect and today's date."""

    dialect: str
    columns: dict[str, dict[str, str]]  # table -> column -> database type, as found in the database
    catalogue: Catalogue = field(default_factory=load_catalogue)
    today: dt.date = field(default_factory=dt.date.today)

    def catalogue_rows(self, name: str) -> list[tuple[CheckType, Row]]:
        """(check type, parameter row) for each catalogue row the named DQD check applies to."""
        check = self.catalogue.check_types[name]
        return [(check, row) for row in self.catalogue.rows_for(check)]

    def col(self, table: str, column: str | None) -> str:
        """The quoted SQL name of a field as it is in this database."""
        return q(column or "")

    def column_type(self, table: str, column: str) -> str:
        return self.columns.get(table.lower(), {}).get(column.lower(), "")

    def has_table(self, table: str) -> bool:
        return table.lower() in self.columns

    def has_field(self, table: str, column: str) -> bool:
        return column.lower() in self.columns.get(table.lower(), {})

    def instance(
        self,
        check: CheckType,
        row: Row | None = None,
        *,
        concept_id: int | str | None = None,
        unit_concept_id: int | None = None,
    ) -> CheckInstance:
        """A check instance whose threshold is read from ``row[<checkName>Threshold]`` (0 when blank)."""
        threshold = parse_threshold((row or {}).get(f"{check.name}Threshold", ""))
        column = (row or {}).get("cdmFieldName") or None
        return CheckInstance(
            check=check,
            table=str((row or {}).get("cdmTableName", "")).lower(),
            field=str(column).lower() if column else None,
            concept_id=concept_id,
            unit_concept_id=unit_concept_id,
            threshold=threshold,
            description=render_description(check.description, row or {}),
        )

    def missing(self, instance: CheckInstance, *tables_fields: tuple[str, str | None]) -> Absent | None:
        """An :class:`Absent` if any (table, field) the check needs is not in the database."""
        for table, column in tables_fields:
            if not self.has_table(table):
                return Absent(instance, f"table {table} is not in the database")
            if column and not self.has_field(table, column):
                return Absent(instance, f"field {table}.{column} is not in the database")
        return None

    # -- dialect helpers ----------------------------------------------------------------------------------
    def not_integer(self, expression: str) -> str:
        """A predicate true when a non-null value is not a whole number written as digits."""
        text = f"CAST({expression} AS VARCHAR)"
        if self.dialect == "postgresql":
            return f"({expression} IS NOT NULL AND {text} !~ '^-?[0-9]+$')"
        return f"({expression} IS NOT NULL AND NOT regexp_full_match({text}, '-?[0-9]+'))"

    def median(self, expression: str) -> str:
        return f"CAST(percentile_cont(0.5) WITHIN GROUP (ORDER BY {expression}) AS DOUBLE PRECISION)"

    def quantile(self, expression: str, fraction: float) -> str:
        return f"CAST(percentile_cont({fraction}) WITHIN GROUP (ORDER BY {expression}) AS DOUBLE PRECISION)"


def parse_threshold(text: str | None) -> float:
    text = (text or "").strip()
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise ValidationError(
            f"threshold {text!r} is not a number", fix="thresholds are percentages, e.g. 0, 5 or 100"
        ) from None


def render_description(template: str, row: Row) -> str:
    """Fill ``@cdmTableName``-style placeholders of a catalogue description from a parameter row."""
    text = template
    for key in sorted(row, key=len, reverse=True):
        if row[key]:
            text = text.replace(f"@{key}", row[key])
    return text


def birth_date_sql(person_alias: str = "p") -> str:
    """The person's birth date: birth_datetime when given, else built from year/month/day of birth."""
    p = person_alias
    return (
        f"COALESCE(CAST({p}.birth_datetime AS DATE), "
        f"make_date({p}.year_of_birth, COALESCE({p}.month_of_birth, 1), COALESCE({p}.day_of_birth, 1)))"
    )


# -- the registry --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredCheck:
    check: CheckType
    build: CheckBuilder


_REGISTRY: dict[str, RegisteredCheck] = {}


def register_check(
    name: str,
    *,
    level: str | None = None,
    description: str | None = None,
    kahn_context: str | None = None,
    kahn_category: str | None = None,
    kahn_subcategory: str = "",
    severity: str | None = None,
    evaluation_filter: str = "",
) -> Callable[[CheckBuilder], CheckBuilder]:
    """Register a check type. DQD checks take their metadata from the catalogue; a site's own check
    (a name not in the catalogue) must give level, description, Kahn context/category and severity."""

    def decorate(build: CheckBuilder) -> CheckBuilder:
        known = load_catalogue().check_types.get(name)
        if known is None:
            given = {"level": level, "description": description, "kahn_context": kahn_context}
            given |= {"kahn_category": kahn_category, "severity": severity}
            absent = [key for key, value in given.items() if not value]
            if absent:
                raise ValidationError(
                    f"check {name!r} is not in the DQD catalogue and lacks {', '.join(absent)}",
                    where=f"{build.__module__}.{build.__qualname__}",
                    fix="pass level=, description=, kahn_context=, kahn_category= and severity= to register_check",
                )
            if severity not in SEVERITIES:
                raise ValidationError(
                    f"severity {severity!r} of check {name!r} is unknown", fix=f"use one of {', '.join(SEVERITIES)}"
                )
            known = CheckType(
                name=name,
                level=str(level).upper(),
                description=str(description),
                kahn_context=str(kahn_context),
                kahn_category=str(kahn_category),
                kahn_subcategory=kahn_subcategory,
                severity=str(severity),
                evaluation_filter=evaluation_filter,
            )
        _REGISTRY[name] = RegisteredCheck(known, build)
        return build

    return decorate


def unregister_check(name: str) -> None:
    """Remove a check type (tests and sites replacing a DQD check with their own version)."""
    _REGISTRY.pop(name, None)


def registered_checks() -> dict[str, RegisteredCheck]:
    """Every registered check type, DQD catalogue first, then site checks, in registration order."""
    from fedomop.harmonize.validate.checks import concept_checks, field_checks, table_checks, temporal_checks  # noqa: F401

    return dict(_REGISTRY)


def scalar_query(instance: CheckInstance, violated_sql: str, denominator_sql: str, rows_sql: str = "") -> CheckQuery:
    """A one-instance query from two ``SELECT COUNT(...)`` statements; ``rows_sql`` lists what the first counts
    (by default derived from it)."""
    return CheckQuery(
        f"SELECT 0 AS check_key, ({violated_sql}) AS num_violated_rows, ({denominator_sql}) AS num_denominator_rows",
        (instance,),
        rows_sql=(rows_sql or listing_sql(violated_sql),),
    )


_COUNT_HEAD = re.compile(r"^SELECT COUNT\((DISTINCT )?([^()]*)\) FROM ", re.I)


def listing_sql(count_sql: str) -> str:
    """``SELECT COUNT(*) FROM ...`` turned into the query that lists what it counts (``SELECT * FROM ...``;
    ``COUNT(DISTINCT x)`` becomes ``SELECT DISTINCT x``); other SQL is returned as it is."""
    match = _COUNT_HEAD.match(count_sql)
    if not match:
        return count_sql
    rest = count_sql[match.end() :]
    if match[2].strip() != "*":
        what = f"{match[1] or ''}{match[2]}"
    else:  # the checked table's columns only, when it is aliased x and joined to others
        what = "x.*" if re.match(r"^\S+ x\b", rest) else "*"
    return f"SELECT {what} FROM {rest}"

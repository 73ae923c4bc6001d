"""Run registered checks as SQL in the site database and turn the counts into pass/fail results."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, SupportsInt

from fedomop.harmonize.ground.db import Database
from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.validate.catalogue import Catalogue, load_catalogue
from fedomop.harmonize.validate.checks.base import (
    Absent,
    CheckBuilder,
    CheckContext,
    CheckInstance,
    CheckQuery,
    CheckWork,
    RowPredicate,
    q,
    registered_checks,
)

_PREDICATES_PER_SCAN = 100  # keeps the SELECT list well under PostgreSQL's 1,664-column limit
_QUERIES_PER_BATCH = 40  # queries sent as one UNION ALL statement: fewer round trips, parallel plans

STATUSES = ("pass", "fail", "not_applicable", "error")


@dataclass
class CheckResult:
    """The outcome of one check instance: counts, percentage, threshold and pass/fail."""

    check_id: str
    check_name: str
    level: str
    table: str
    field: str | None
    concept_id: int | str | None
    unit_concept_id: int | None
    kahn_context: str
    kahn_category: str
    kahn_subcategory: str
    severity: str
    threshold: float
    description: str
    num_violated_rows: int | None
    num_denominator_rows: int | None
    pct_violated_rows: float | None
    status: str
    reason: str = ""
    query_text: str = ""  # SQL listing the violating rows (or, for grouped concept checks, the counting SQL)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class CheckRun:
    """All results of one run, with how long it took."""

    results: list[CheckResult]
    seconds: float
    queries: int
    dialect: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per check type (table scans: "row scans")


def _result(instance: CheckInstance, violated: int | None, denominator: int | None, reason: str = "") -> CheckResult:
    check = instance.check
    if reason and violated is None:
        status, pct = ("error" if reason.startswith("error") else "not_applicable"), None
    else:
        fraction = (violated or 0) / denominator if denominator else 0.0
        pct = 100.0 * fraction
        status = "fail" if failed(violated or 0, fraction, instance.threshold) else "pass"
    return CheckResult(
        check_id=instance.check_id,
        check_name=check.name,
        level=check.level,
        table=instance.table,
        field=instance.field,
        concept_id=instance.concept_id,
        unit_concept_id=instance.unit_concept_id,
        kahn_context=check.kahn_context,
        kahn_category=check.kahn_category,
        kahn_subcategory=check.kahn_subcategory,
        severity=check.severity,
        threshold=instance.threshold,
        description=instance.description,
        num_violated_rows=violated,
        num_denominator_rows=denominator,
        pct_violated_rows=pct,
        status=status,
        reason=reason,
    )


def failed(violated: int, fraction: float, threshold: float) -> bool:
    """DQD's threshold rule (evaluateThresholds.R): with a 0 (or no) threshold any violating row fails; otherwise
    the violated fraction, times 100 in that order (the float rounding matters at the boundary), must exceed it."""
    if threshold == 0:
        return violated > 0
    return fraction * 100 > threshold


_NA_INPUTS = ("cdmTable", "cdmField", "measureValueCompleteness")


def apply_not_applicable(results: list[CheckResult]) -> None:
    """Mark results not applicable as DQD does (calculateNotApplicableStatus.R), in place.

    With cdmTable, cdmField and measureValueCompleteness among the results: a check on a missing or empty table,
    on a field that is entirely NULL (measureValueCompleteness: every row violates) or on a concept (and unit)
    with no rows is not applicable; measureConditionEraCompleteness only when condition_occurrence is empty.
    Without them (a partial run) DQD computes no not-applicable status at all (``.hasNAchecks``): a check with 0 of 0
    rows passes. Only a check whose table or field is missing from the database (``Absent``) stays not applicable.
    """
    names = {r.check_name for r in results}
    if not all(n in names for n in _NA_INPUTS):
        return
    missing_tables = {r.table for r in results if r.check_name == "cdmTable" and r.status == "fail"}
    missing_fields = {(r.table, r.field) for r in results if r.check_name == "cdmField" and r.status == "fail"}
    completeness = [r for r in results if r.check_name == "measureValueCompleteness" and r.status != "error"]
    empty_tables = {r.table for r in completeness if r.num_denominator_rows == 0}
    empty_fields = {(r.table, r.field) for r in completeness if r.num_violated_rows == r.num_denominator_rows}
    for r in results:
        reason = _not_applicable_reason(r, missing_tables, missing_fields, empty_tables, empty_fields)
        if reason and r.status != "error":
            r.status, r.reason = "not_applicable", reason


def _not_applicable_reason(
    r: CheckResult,
    missing_tables: set[str],
    missing_fields: set[tuple[str, str | None]],
    empty_tables: set[str],
    empty_fields: set[tuple[str, str | None]],
) -> str:
    if r.check_name == "cdmTable":
        return ""
    if r.check_name == "measureConditionEraCompleteness":
        gone = "condition_occurrence" in missing_tables | empty_tables
        return "table condition_occurrence is empty" if gone else ""
    if r.table in missing_tables:
        return r.reason or f"table {r.table} does not exist"
    if r.check_name in ("cdmField", "measurePersonCompleteness"):
        return ""
    if (r.table, r.field) in missing_fields:
        return r.reason or f"field {r.table}.{r.field} does not exist"
    if r.table in empty_tables:
        return f"table {r.table} is empty"
    if r.check_name == "measureValueCompleteness":
        return ""
    if (r.table, r.field) in empty_fields:
        return f"field {r.table}.{r.field} is not populated"
    if r.level == "CONCEPT" and r.num_denominator_rows == 0:
        return f"{r.field}={r.concept_id} has no rows in {r.table}"
    return ""


def inspect_columns(db: Database) -> dict[str, dict[str, str]]:
    """table -> column -> type for the current schema (one catalog query)."""
    frame = db.query(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema()"
    )
    columns: dict[str, dict[str, str]] = {}
    for table, column, kind in frame.iter_rows():
        columns.setdefault(str(table).lower(), {})[str(column).lower()] = str(kind)
    return columns


def _error_text(exc: Exception) -> str:
    return "error: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _count(value: object) -> int:
    """A count from a result row: NULL (SUM over no rows) is 0; PostgreSQL's SUM gives a Decimal."""
    if value is None:
        return 0
    if not isinstance(value, SupportsInt):
        raise TypeError(f"a check query returned {value!r} where a count belongs")
    return int(value)


class _Runner:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.queries = 0
        self.timings: dict[str, float] = {}

    def _timed_query(self, label: str, sql: str) -> list[tuple[Any, ...]]:
        start = time.perf_counter()
        try:
            return list(self.db.query(sql).iter_rows())
        finally:
            self.queries += 1
            self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - start

    def run_query(self, work: CheckQuery) -> list[CheckResult]:
        try:
            rows = self._timed_query(work.instances[0].check.name, work.sql)
        except Exception as exc:  # noqa: BLE001 - one broken check must not stop the others
            return [_result(i, None, None, _error_text(exc)) for i in work.instances]
        counts = {int(k): (_count(v), _count(d)) for k, v, d in rows}
        return [_result(i, *counts.get(k, (0, 0))) for k, i in enumerate(work.instances)]

    def run_queries(self, works: list[CheckQuery]) -> list[CheckResult]:
        """Send queries in UNION ALL batches (check keys offset per query); a failing batch is rerun query by
        query so that one broken check only marks itself as an error."""
        results: list[CheckResult] = []
        for start in range(0, len(works), _QUERIES_PER_BATCH):
            batch = works[start : start + _QUERIES_PER_BATCH]
            offsets, parts, offset = [], [], 0
            for n, work in enumerate(batch):
                offsets.append(offset)
                parts.append(
                    f"SELECT check_key + {offset} AS check_key, num_violated_rows, num_denominator_rows "
                    f"FROM ({work.sql}) AS q{n}"
                )
                offset += len(work.instances)
            try:
                rows = self._timed_query("batched queries", " UNION ALL ".join(parts))
            except Exception:  # noqa: BLE001 - isolate the broken query
                for work in batch:
                    results += self.run_query(work)
                continue
            counts = {int(k): (_count(v), _count(d)) for k, v, d in rows}
            for work, base in zip(batch, offsets, strict=True):
                results += [_result(i, *counts.get(base + k, (0, 0))) for k, i in enumerate(work.instances)]
        return results

    def run_predicates(self, table: str, predicates: list[RowPredicate]) -> list[CheckResult]:
        """Count every predicate of one table in a single scan (chunked), isolating errors per predicate."""
        results: list[CheckResult] = []
        for start in range(0, len(predicates), _PREDICATES_PER_SCAN):
            chunk = predicates[start : start + _PREDICATES_PER_SCAN]
            try:
                results += self._scan(table, chunk)
            except Exception:  # noqa: BLE001 - rerun one by one to find the broken predicate
                for predicate in chunk:
                    try:
                        results += self._scan(table, [predicate])
                    except Exception as exc:  # noqa: BLE001
                        results.append(_result(predicate.instance, None, None, _error_text(exc)))
        return results

    def _scan(self, table: str, predicates: list[RowPredicate]) -> list[CheckResult]:
        columns = []
        for n, p in enumerate(predicates):
            columns.append(f"SUM(CASE WHEN ({p.denominator}) AND ({p.violated}) THEN 1 ELSE 0 END) AS v{n}")
            columns.append(f"SUM(CASE WHEN {p.denominator} THEN 1 ELSE 0 END) AS d{n}")
        (row,) = self._timed_query("row scans", f"SELECT {', '.join(columns)} FROM {q(table)}")
        return [_result(p.instance, _count(row[2 * n]), _count(row[2 * n + 1])) for n, p in enumerate(predicates)]


def build_context(db: Database, *, catalogue: Catalogue | None = None, today: dt.date | None = None) -> CheckContext:
    return CheckContext(
        dialect=db.dialect,
        columns=inspect_columns(db),
        catalogue=catalogue or load_catalogue(),
        today=today or dt.date.today(),
    )


def run_checks(
    db: Database,
    *,
    checks: Iterable[str] | None = None,
    catalogue: Catalogue | None = None,
    today: dt.date | None = None,
) -> CheckRun:
    """Run the registered checks (all, or those named) against ``db``; every instance gets a result."""
    started = time.perf_counter()
    registry = registered_checks()
    names = list(registry) if checks is None else list(checks)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValidationError(
            f"unknown check(s): {', '.join(unknown)}", fix=f"choose from: {', '.join(sorted(registry))}"
        )
    ctx = build_context(db, catalogue=catalogue, today=today)
    runner = _Runner(db)
    results: list[CheckResult] = []
    predicates: dict[str, list[RowPredicate]] = {}
    queries: list[CheckQuery] = []
    query_text: dict[str, str] = {}
    for name in names:
        for work in _build(registry[name].build, ctx, name):
            if isinstance(work, RowPredicate):
                predicates.setdefault(work.instance.table, []).append(work)
                query_text[work.instance.check_id] = work.rows_sql()
            elif isinstance(work, CheckQuery):
                queries.append(work)
                for k, instance in enumerate(work.instances):
                    query_text[instance.check_id] = work.rows_sql[k] if k < len(work.rows_sql) else work.sql
            elif isinstance(work, Absent):
                results.append(_result(work.instance, None, None, work.reason))
            else:
                raise ValidationError(
                    f"check {name!r} returned {type(work).__name__}",
                    fix="a check function yields RowPredicate, CheckQuery or Absent objects",
                )
    results += runner.run_queries(queries)
    for table, table_predicates in predicates.items():
        results += runner.run_predicates(table, table_predicates)
    for r in results:
        r.query_text = query_text.get(r.check_id, "")
    apply_not_applicable(results)
    order = {name: n for n, name in enumerate(names)}
    results.sort(key=lambda r: (order.get(r.check_name, 0), r.table, r.field or "", str(r.concept_id or "")))
    return CheckRun(results, time.perf_counter() - started, runner.queries, db.dialect, runner.timings)


def _build(build: CheckBuilder, ctx: CheckContext, name: str) -> list[CheckWork]:
    try:
        return list(build(ctx))
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - a site's check with a bug is named, not a traceback
        raise ValidationError(
            f"check {name!r} failed to build its SQL: {exc}", fix="fix the check function or unregister it"
        ) from exc

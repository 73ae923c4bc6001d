"""``fedomop validate``: run schemas + checks + profile on a site database and write report.json + report.html.

:func:`validate_database` is the library entry point (a notebook user calls it directly).
The report is built raw (counts wrapped in :class:`Count`), suppressed once by
:func:`~fedomop.harmonize.ground.smallcell.suppress`, and only then written: the JSON and
the HTML hold the same suppressed content.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fedomop import __version__ as fedomop_version
from fedomop.harmonize.ground.db import Database, connect
from fedomop.harmonize.ground.errors import ValidationError
from fedomop.harmonize.ground.smallcell import (
    DEFAULT_THRESHOLD,
    Count,
    assert_suppressed,
    label,
    percent,
    suppress,
)
from fedomop.harmonize.validate import profile
from fedomop.harmonize.validate.checks.runner import CheckResult, build_context, run_checks
from fedomop.harmonize.validate.dqd_export import DQD_FILE, write_dqd_json
from fedomop.harmonize.validate.schemas import DEFAULT_SAMPLE_ROWS, SchemaResult, validate_schemas

REPORT_FORMAT = "fedomop-qa-report/1"
SHAREABLE = "shareable"  # small cells withheld: the only report that leaves the site (--compare reads it)
INTERNAL = "internal"  # exact counts for the site's own stewards; never passed to --compare
KAHN_CATEGORIES = ("Conformance", "Completeness", "Plausibility")


@dataclass(frozen=True)
class ValidateOptions:
    """Knobs of a validation run (defaults are what ``fedomop validate`` uses)."""

    small_cell: int = DEFAULT_THRESHOLD
    sample_rows: int = DEFAULT_SAMPLE_ROWS
    checks: tuple[str, ...] | None = None  # None: every registered check
    site: str | None = None
    profile: profile.ProfileOptions = field(default_factory=profile.ProfileOptions)
    today: dt.date | None = None
    min_coverage: dict[str, float] = field(default_factory=dict)  # the mapping's floors: below them, not green


@dataclass
class ValidationReport:
    """The suppressed report (what leaves the site) and where it was written."""

    data: dict[str, Any]
    json_path: Path | None = None
    html_path: Path | None = None
    internal_html_path: Path | None = None  # the exact internal copy, when written
    dqd_path: Path | None = None  # the same check results for the OHDSI DQD viewer

    @property
    def fatal_failures(self) -> int:
        return int(self.data["overview"]["fatal_failures"])


def _database_label(db: Database) -> str:
    """Backend and database name only: never credentials or host names."""
    url = sa.engine.make_url(db.url)
    return f"{db.dialect}:{Path(url.database or '').name}"


def _check_row(result: CheckResult) -> dict[str, Any]:
    row = result.to_dict()
    row["num_violated_rows"] = None if result.num_violated_rows is None else Count(result.num_violated_rows)
    row["num_denominator_rows"] = None if result.num_denominator_rows is None else Count(result.num_denominator_rows)
    row["pct_violated_rows"] = percent(result.num_violated_rows, result.num_denominator_rows)
    return row


def overview(results: list[CheckResult]) -> dict[str, Any]:
    """Pass/fail/not applicable/error per Kahn category (and per severity), plus the fatal failures."""
    by_category: dict[str, Counter[str]] = {c: Counter() for c in KAHN_CATEGORIES}
    by_severity: dict[str, Counter[str]] = {}
    for r in results:
        by_category.setdefault(r.kahn_category, Counter())[r.status] += 1
        by_severity.setdefault(r.severity, Counter())[r.status] += 1

    def counts(counter: Counter[str]) -> dict[str, int]:
        return {s: counter.get(s, 0) for s in ("pass", "fail", "not_applicable", "error")}

    fatal = [r for r in results if r.severity == "fatal" and r.status == "fail"]
    return {
        "checks": len(results),
        "by_status": counts(Counter(r.status for r in results)),
        "by_kahn_category": [{"category": c, **counts(n)} for c, n in by_category.items()],
        "by_severity": [{"severity": s, **counts(n)} for s, n in sorted(by_severity.items())],
        "fatal_failures": len(fatal),
        "fatal_failed_checks": [r.check_id for r in fatal],
    }


def _schema_row(result: SchemaResult) -> dict[str, Any]:
    return {
        "table": result.table,
        "rows_in_table": Count(result.rows_in_table),
        "rows_checked": Count(result.rows_checked),
        "sampled": result.sampled,
        "status": result.status,
        "failures": [{"column": f.column, "check": f.check, "rows": Count(f.count)} for f in result.failures],
    }


def cdm_source(db: Database) -> dict[str, str | None]:
    """The first cdm_source row, camelCase keys (what DQD puts in its results' Metadata); empty when absent."""
    if not db.has_table("cdm_source"):
        return {}
    frame = db.query("SELECT * FROM cdm_source LIMIT 1")
    rows = list(frame.iter_rows())
    if not rows:
        return {}

    def camel(name: str) -> str:
        head, *rest = name.lower().split("_")
        return head + "".join(part.capitalize() for part in rest)

    return {camel(c): None if v is None else str(v) for c, v in zip(frame.columns, rows[0], strict=True)}


def build_report(db: Database, options: ValidateOptions | None = None) -> dict[str, Any]:
    """The raw report (counts still exact, wrapped in Count): never write this; pass it to :func:`suppress`."""
    options = options or ValidateOptions()
    started = time.perf_counter()
    run = run_checks(db, checks=options.checks, today=options.today)
    checks_done = time.perf_counter()
    schemas = validate_schemas(db, sample_rows=options.sample_rows)
    schemas_done = time.perf_counter()
    ctx = build_context(db, today=options.today)
    profile_options = options.profile
    if profile_options.min_cell != options.small_cell:
        profile_options = profile.ProfileOptions(
            min_cell=options.small_cell,
            top_unmapped=profile_options.top_unmapped,
            key_measurements=profile_options.key_measurements,
            measurement_concepts=profile_options.measurement_concepts,
        )
    coverage = profile.mapping_coverage(db, ctx, profile_options)
    persons = profile.person_count(db, ctx)
    report = {
        "format": REPORT_FORMAT,
        "site": options.site or _database_label(db).split(":", 1)[1].removesuffix(".duckdb") or "site",
        "database": _database_label(db),
        "generated_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "fedomop_version": fedomop_version,
        "cdm_version": "5.4",
        "suppression": {
            "small_cell_threshold": options.small_cell,
            "label": label(options.small_cell),
            "rule": (
                f"every count of persons or records between 1 and {options.small_cell - 1} is shown as "
                f"'{label(options.small_cell)}'; percentages computed from such a count are null; "
                f"measurement quantiles are only computed over at least {options.small_cell} records"
            ),
        },
        "cdm_source": cdm_source(db),
        "persons": persons,
        "table_rows": profile.table_counts(db, ctx),
        "overview": {
            **overview(run.results),
            "coverage_failures": coverage_failures(coverage, options.min_coverage),
            # an empty CDM passes every data check vacuously (DQD: not applicable): the verdict must not be green
            "no_persons": not persons,
        },
        "checks": [_check_row(r) for r in run.results],
        "schemas": {
            "sample_rows": options.sample_rows,
            "note": (
                f"pandera schemas generated from the CDM spec, validated lazily on up to {options.sample_rows:,} "
                "rows per table (in batches); the SQL checks above cover every row"
            ),
            "tables": [_schema_row(s) for s in schemas],
        },
        "mapping_coverage": coverage,
        "reconciliation": profile.reconciliation(db, ctx),
        "quarantine": profile.quarantine(db, ctx),
        "lineage": profile.lineage(db, ctx),
        "records_per_year": profile.records_per_year(db, ctx),
        "measurements": profile.measurement_distributions(db, ctx, profile_options),
    }
    report["timings"] = {
        "checks_seconds": round(checks_done - started, 3),
        "check_queries": run.queries,
        "schemas_seconds": round(schemas_done - checks_done, 3),
        "profile_seconds": round(time.perf_counter() - schemas_done, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "dialect": run.dialect,
    }
    return report


def coverage_failures(coverage: dict[str, Any], minimum: dict[str, float]) -> list[dict[str, Any]]:
    """Tables whose share of mapped records is below the mapping's ``min_coverage`` (a table with no records
    fails too): the report's verdict is then not green, whatever the checks say. Only the table and its floor
    are listed; the share itself stays in the coverage section, suppressed there as every count is."""
    shares = {t["table"]: (int(t["mapped"]), int(t["records"])) for t in coverage["tables"]}
    failed = []
    for table, floor in sorted(minimum.items()):
        mapped, records = shares.get(table, (0, 0))
        if not records or mapped / records < floor:
            failed.append({"table": table, "min_coverage": floor})
    return failed


def write_json(report: dict[str, Any], path: Path) -> Path:
    assert_suppressed(report)
    path.write_text(json.dumps(report, indent=1, default=str, allow_nan=False), encoding="utf-8")
    return path


def validate_database(
    db: Database | str | Path,
    out: Path | str | None = None,
    options: ValidateOptions | None = None,
    *,
    internal: bool = False,
) -> ValidationReport:
    """Validate a site database; with ``out``, write the shareable ``report.json`` and ``report.html`` there, and
    with ``internal`` also ``internal/report.json|html`` with exact counts (for the site's stewards only)."""
    options = options or ValidateOptions()
    if isinstance(db, Path | str) and "://" not in str(db) and not Path(db).exists():
        raise ValidationError(
            "database file not found", where=str(db), fix="pass an existing DuckDB file or a database URL to --db"
        )
    database = db if isinstance(db, Database) else connect(db)
    try:
        if not database.has_table("person"):
            raise ValidationError(
                "the database has no OMOP person table",
                where=repr(database),
                fix="point --db at an OMOP CDM v5.4 database (fedomop cdm create, then fedomop map)",
            )
        raw = build_report(database, options)
    finally:
        if database is not db:
            database.dispose()  # release the file: DuckDB allows one configuration per file per process
    report = write_report(raw, out, options.small_cell)
    if internal and out is not None:
        report.internal_html_path = write_report(raw, Path(out) / INTERNAL, audience=INTERNAL).html_path
    return report


def write_report(
    raw: dict[str, Any], out: Path | str | None, small_cell: int = DEFAULT_THRESHOLD, *, audience: str = SHAREABLE
) -> ValidationReport:
    """Suppress a raw report once and write that same content as report.json and report.html.

    The ``internal`` audience gets every count exact (a threshold of 1 withholds nothing) and says so on its
    face: the site's own steward must see that coverage is 99.4%, not "<10 unmapped"."""
    from fedomop.harmonize.validate.html import render_html

    if audience == INTERNAL:
        raw = {
            **raw,
            "suppression": {
                "small_cell_threshold": 1,
                "label": "none",
                "rule": "internal report: exact counts, nothing withheld; it stays at the site (share report.json)",
            },
        }
    data = suppress(raw, 1 if audience == INTERNAL else small_cell)
    data["audience"] = audience
    report = ValidationReport(data)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        report.json_path = write_json(data, folder / "report.json")
        report.html_path = folder / "report.html"
        report.html_path.write_text(render_html(data), encoding="utf-8")
        report.dqd_path = write_dqd_json(data, folder / DQD_FILE)
    return report


def load_report(path: Path | str) -> dict[str, Any]:
    """Read a report.json written by :func:`validate_database` (checking it is one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValidationError(f"cannot read the report: {exc}", where=str(path), fix="pass a report.json") from exc
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise ValidationError(
            f"not a fedomop QA report (format {data.get('format') if isinstance(data, dict) else None!r})",
            where=str(path),
            fix="pass report.json files written by fedomop validate --db ... --out ...",
        )
    return data

"""pandera (polars) schemas for every OMOP table, generated from the CDM spec.

Each column gets the spec's type, nullability (required fields are not nullable),
``varchar(n)`` length and primary-key uniqueness. Validation is lazy, so every
failure of a batch is collected rather than the first. Tables are validated on a
bounded sample read in batches (the SQL checks cover every row; the schemas are a
second, independent look at the types the database hands back), and the report
says how many rows were looked at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors

from fedomop.harmonize.cdm import FieldSpec, TableSpec, load_spec
from fedomop.harmonize.ground.db import Database

DEFAULT_SAMPLE_ROWS = 100_000
BATCH_ROWS = 50_000

_DTYPES: dict[str, pl.DataType] = {
    "integer": pl.Int64(),
    "float": pl.Float64(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us"),
    "varchar": pl.String(),
}


def column_schema(spec: FieldSpec) -> pa.Column:
    checks = [pa.Check.str_length(max_value=spec.length)] if spec.datatype == "varchar" and spec.length else []
    return pa.Column(
        _DTYPES[spec.datatype],
        checks=checks,
        nullable=not spec.required,
        unique=spec.primary_key,
        required=True,
        description=spec.user_guidance[:200] or None,
    )


@cache
def table_schema(table: str) -> pa.DataFrameSchema:
    """The pandera schema of one OMOP table, straight from the spec (cached)."""
    spec: TableSpec = load_spec().table(table)
    return pa.DataFrameSchema({f.name: column_schema(f) for f in spec.fields}, name=spec.name, strict=False)


def normalise_types(frame: pl.DataFrame) -> pl.DataFrame:
    """Widen what databases legitimately differ on (INT32 vs INT64, timestamp units) before checking types;
    a text column where the spec wants a number stays text and fails the dtype check."""
    casts = []
    for name, dtype in frame.schema.items():
        if dtype.is_integer():
            casts.append(pl.col(name).cast(pl.Int64))
        elif dtype == pl.Float32 or dtype.is_decimal():
            casts.append(pl.col(name).cast(pl.Float64))
        elif isinstance(dtype, pl.Datetime):
            casts.append(pl.col(name).dt.replace_time_zone(None).dt.cast_time_unit("us"))
        elif dtype == pl.Null:
            casts.append(pl.col(name).cast(pl.String))
    return frame.with_columns(casts) if casts else frame


@dataclass
class SchemaFailure:
    """Failures of one kind on one column: counts only (failure values can hold patient data)."""

    column: str
    check: str
    count: int


@dataclass
class SchemaResult:
    table: str
    rows_in_table: int
    rows_checked: int
    sampled: bool
    failures: list[SchemaFailure] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.rows_checked == 0:
            return "empty"
        return "fail" if self.failures else "pass"


def validate_frame(table: str, frame: pl.DataFrame) -> list[SchemaFailure]:
    """Validate a frame lazily against the table's schema; failures grouped by (column, check)."""
    # Columns the spec has but the frame lacks are reported once by pandera; an all-null column is typed here.
    frame = normalise_types(frame)
    try:
        table_schema(table).validate(frame, lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
        grouped = cases.group_by("column", "check").len().sort("column", "check")
        return [SchemaFailure(str(c or table), str(k), int(n)) for c, k, n in grouped.iter_rows()]
    return []


def _merge(into: dict[tuple[str, str], int], failures: list[SchemaFailure]) -> None:
    for f in failures:
        into[(f.column, f.check)] = into.get((f.column, f.check), 0) + f.count


def validate_table(db: Database, table: str, *, sample_rows: int = DEFAULT_SAMPLE_ROWS) -> SchemaResult:
    """Validate up to ``sample_rows`` rows of a table in batches of ``BATCH_ROWS``. Primary-key uniqueness is
    checked within each batch here; across the whole table it is the SQL ``isPrimaryKey`` check's job."""
    spec = load_spec().table(table)
    total = int(db.scalar(f'SELECT COUNT(*) FROM "{table}"') or 0)
    wanted = min(total, sample_rows)
    order = f' ORDER BY "{spec.primary_key.name}"' if spec.primary_key else ""
    merged: dict[tuple[str, str], int] = {}
    checked = 0
    while checked < wanted:
        size = min(BATCH_ROWS, wanted - checked)
        frame = db.query(f'SELECT * FROM "{table}"{order} LIMIT {size} OFFSET {checked}')
        if frame.is_empty():
            break
        _merge(merged, validate_frame(table, frame))
        checked += frame.height
    failures = [SchemaFailure(c, k, n) for (c, k), n in sorted(merged.items())]
    return SchemaResult(table, total, checked, sampled=checked < total, failures=failures)


def validate_schemas(
    db: Database, *, tables: list[str] | None = None, sample_rows: int = DEFAULT_SAMPLE_ROWS
) -> list[SchemaResult]:
    """Validate every CDM table present in the database (or those named) against its spec schema."""
    present = {t.lower() for t in db.table_names()}
    names = tables if tables is not None else [t for t in load_spec().tables if t in present]
    return [validate_table(db, t, sample_rows=sample_rows) for t in names if t in present]

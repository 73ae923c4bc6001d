"""Read and write OMOP CDM tables as CSV files, typed by the spec.

One reader serves every CDM CSV a site meets: the Athena vocabulary download
(tab-delimited, dates as ``YYYYMMDD``, quotes are ordinary characters), the
comma-separated OHDSI exports such as Eunomia (quoted fields, ISO dates), and
a site's own ``source_to_concept_map``. Columns are read as text and cast to
the spec's type column by column, so a bad value is reported with its file,
line and field instead of turning into a null.

Loads replace whole tables atomically: each file goes into an unconstrained
staging table through :meth:`Database.load_arrow` (Arrow ingest / COPY), then
one transaction swaps the staged rows into the real tables, so readers never
see half a vocabulary and a failure leaves the old content intact.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import sqlalchemy as sa

from harmonize.cdm.schema import create_cdm
from harmonize.cdm.spec import FieldSpec, TableSpec, load_spec
from harmonize.db import Database
from harmonize.errors import FedomopError, SourceError

ErrorType = type[FedomopError]

# Formats tried, in order, on a column's first value; the first that parses is used for the whole column.
_DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d")
_DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y%m%d %H:%M:%S",
)
_INT32 = (-(2**31), 2**31 - 1)
_LINE_PROBE_SEPARATOR = "\x1f"  # a byte that never occurs in CDM text, to read a file as whole lines


@dataclass(frozen=True)
class CsvDialect:
    """How one CDM CSV file is written: its delimiter and whether ``"`` quotes fields."""

    delimiter: str
    quoted: bool

    @property
    def label(self) -> str:
        return "tab-delimited (Athena)" if self.delimiter == "\t" else "comma-separated"


# -- reading -------------------------------------------------------------------------------------------


def cdm_csv_files(folder: Path) -> dict[str, Path]:
    """CSV files in a folder whose name (any case, ``.csv``/``.tsv``) is an OMOP CDM table, by table name."""
    spec = load_spec()
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in (".csv", ".tsv") and path.stem.lower() in spec.tables:
            found[path.stem.lower()] = path
    return found


def sniff_dialect(path: Path, header: str) -> CsvDialect:
    """Athena files are tab-delimited and unquoted; everything else is treated as RFC-4180 CSV."""
    if "\t" in header:
        return CsvDialect("\t", quoted=False)
    return CsvDialect(",", quoted=True)


def _read_header(path: Path, error: ErrorType) -> str:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = handle.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(
            f"cannot read the file: {exc}", where=str(path), fix="check the path and that it is UTF-8 text"
        ) from exc
    header = header.rstrip("\r\n")
    if not header.strip():
        raise error("the file is empty (no header line)", where=f"{path} line 1", fix="export the file with its header")
    return header


def _header_columns(header: str, dialect: CsvDialect, table: TableSpec) -> list[str]:
    """Header names as spec field names (the spec writes the reserved word ``offset`` with its quotes)."""
    by_bare_name = {f.name.strip('"'): f.name for f in table.fields}
    names = [name.strip().strip('"').strip().lower() for name in header.split(dialect.delimiter)]
    return [by_bare_name.get(name, name) for name in names]


def _check_columns(columns: list[str], table: TableSpec, path: Path, error: ErrorType) -> None:
    known = set(table.column_names)
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise error(
            f"column {unknown[0]!r} is not a field of OMOP table {table.name!r}",
            where=f"{path} line 1, field {unknown[0]}",
            fix=f"rename it to one of: {', '.join(table.column_names)}",
        )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise error(f"column {duplicated[0]!r} appears twice", where=f"{path} line 1", fix="remove the duplicate")
    missing = [f.name for f in table.fields if f.required and f.name not in columns]
    if missing:
        raise error(
            f"required column {missing[0]!r} of {table.name!r} is missing",
            where=f"{path} line 1",
            fix=f"add the column(s): {', '.join(missing)}",
        )


def _first_ragged_line(path: Path, dialect: CsvDialect, width: int) -> tuple[int, int] | None:
    """Exact (slow) scan for the first record whose field count is not ``width``: only used to explain an error."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if dialect.quoted:
            reader = csv.reader(handle, delimiter=dialect.delimiter)
            for record in reader:
                if len(record) != width and record:
                    return reader.line_num, len(record)
            return None
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line and line.count(dialect.delimiter) + 1 != width:
                return number, line.count(dialect.delimiter) + 1
    return None


def _ragged_error(path: Path, line: int, found: int, width: int, error: ErrorType) -> FedomopError:
    return error(
        f"line has {found} fields, the header has {width}",
        where=f"{path} line {line}",
        fix="every line needs one value per header column (Athena files: tab-separated, no quoting)",
    )


def _check_field_counts(path: Path, dialect: CsvDialect, width: int, error: ErrorType) -> None:
    """Vectorised check that every line has ``width`` fields (polars silently pads short lines with nulls)."""
    try:
        lines = pl.read_csv(
            path,
            has_header=False,
            separator=_LINE_PROBE_SEPARATOR,
            quote_char=None,
            schema={"line": pl.String},
            skip_rows=1,
        )
    except pl.exceptions.PolarsError:
        lines = None
    if lines is not None:
        text = pl.col("line").str.strip_chars_end("\r")
        if dialect.quoted:
            text = text.str.replace_all(r'"[^"]*"', "")
        bad = lines.select(text.str.count_matches(dialect.delimiter, literal=True).alias("n")).filter(
            pl.col("n") != width - 1
        )
        if bad.is_empty():
            return
    ragged = _first_ragged_line(path, dialect, width)
    if ragged is not None:
        raise _ragged_error(path, ragged[0], ragged[1], width, error)


def _read_text_frame(path: Path, dialect: CsvDialect, columns: list[str], error: ErrorType) -> pl.DataFrame:
    try:
        frame = pl.read_csv(
            path,
            separator=dialect.delimiter,
            quote_char='"' if dialect.quoted else None,
            has_header=True,
            new_columns=columns,
            infer_schema=False,
            encoding="utf8",
        )
    except pl.exceptions.PolarsError as exc:
        ragged = _first_ragged_line(path, dialect, len(columns))
        if ragged is not None:
            raise _ragged_error(path, ragged[0], ragged[1], len(columns), error) from exc
        raise error(
            f"cannot parse the file as {dialect.label} CSV: {str(exc).splitlines()[0]}",
            where=str(path),
            fix="check delimiters, quoting and encoding (UTF-8)",
        ) from exc
    # An empty field means "no value" in every CDM export, quoted ("") or not.
    return frame.with_columns(pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in columns)


def _first_failure(raw: pl.Series, parsed: pl.Series) -> int | None:
    failed = raw.is_not_null() & parsed.is_null()
    if not failed.any():
        return None
    return int(failed.arg_true()[0])


def _pick_format(sample: str, formats: Iterable[str], dtype: pl.DataType) -> str | None:
    probe = pl.Series([sample])
    for fmt in formats:
        parsed = (
            probe.str.to_datetime(fmt, strict=False) if dtype == pl.Datetime else probe.str.to_date(fmt, strict=False)
        )
        if parsed[0] is not None:
            return fmt
    return None


def _parse_temporal(raw: pl.Series, datatype: str) -> pl.Series | None:
    """Parse a date/datetime column with the format of its first value (YYYYMMDD, ISO, ISO with time)."""
    sample = raw.drop_nulls()
    if sample.is_empty():
        return pl.Series(raw.name, [None] * len(raw), dtype=pl.Date if datatype == "date" else pl.Datetime("us"))
    first = sample[0]
    if datatype == "date":
        fmt = _pick_format(first, _DATE_FORMATS, pl.Date)
        if fmt is not None:
            return raw.str.to_date(fmt, strict=False)
    fmt = _pick_format(first, _DATETIME_FORMATS + _DATE_FORMATS, pl.Datetime)
    if fmt is None:
        return None
    parsed = raw.str.to_datetime(fmt, strict=False, time_unit="us")
    return parsed.dt.date() if datatype == "date" else parsed


def _parse_integer(raw: pl.Series) -> pl.Series:
    """Integers, accepting ``12.0`` (some exports write integer fields as floats); out-of-int32 values fail."""
    direct = raw.str.strip_chars().cast(pl.Int64, strict=False)
    as_float = raw.str.strip_chars().cast(pl.Float64, strict=False)
    integral = pl.when(as_float == as_float.floor()).then(as_float).otherwise(None)
    values = pl.select(pl.coalesce(pl.lit(direct), integral.cast(pl.Int64, strict=False))).to_series()
    in_range = (values >= _INT32[0]) & (values <= _INT32[1])
    return pl.select(pl.when(in_range).then(values).otherwise(None).cast(pl.Int32)).to_series().alias(raw.name)


def _cast_field(raw: pl.Series, field: FieldSpec) -> pl.Series | None:
    if field.datatype == "integer":
        return _parse_integer(raw)
    if field.datatype == "float":
        return raw.str.strip_chars().cast(pl.Float64, strict=False)
    if field.datatype in ("date", "datetime"):
        return _parse_temporal(raw, field.datatype)
    return raw


def _expected(field: FieldSpec) -> str:
    return {
        "integer": "an integer (32-bit)",
        "float": "a number",
        "date": "a date (YYYY-MM-DD or YYYYMMDD)",
        "datetime": "a date-time (YYYY-MM-DD HH:MM:SS)",
    }.get(field.datatype, "text")


def _typed_column(raw: pl.Series, field: FieldSpec, path: Path, error: ErrorType) -> pl.Series:
    parsed = _cast_field(raw, field)
    failure = 0 if parsed is None else _first_failure(raw, parsed)
    if parsed is None or failure is not None:
        index = failure or 0
        if parsed is None:
            index = int(raw.is_not_null().arg_true()[0])
        raise error(
            f"value {raw[index]!r} is not {_expected(field)}",
            where=f"{path} line {index + 2}, field {field.name}",
            fix=f"{field.table}.{field.name} is {field.datatype} in OMOP CDM v5.4; correct the value",
        )
    if field.required and parsed.null_count():
        index = int(parsed.is_null().arg_true()[0])
        raise error(
            f"required field {field.name!r} is empty",
            where=f"{path} line {index + 2}, field {field.name}",
            fix=f"{field.table}.{field.name} is required in OMOP CDM v5.4; give it a value (0 for unknown concepts)",
        )
    if field.datatype == "varchar" and field.length:
        too_long = parsed.str.len_chars() > field.length
        if too_long.any():
            index = int(too_long.arg_true()[0])
            raise error(
                f"value is {parsed.str.len_chars()[index]} characters, the field allows {field.length}",
                where=f"{path} line {index + 2}, field {field.name}",
                fix="shorten the value or check the delimiter",
            )
    return parsed.alias(field.name)


def read_cdm_csv(path: Path, table: str, *, error: ErrorType = SourceError) -> pl.DataFrame:
    """Read one CDM table's CSV (delimiter and date format detected), typed by the spec, in spec column order.

    Optional columns absent from the file come back as nulls; any malformed line or value raises ``error``
    naming the file, line and field.
    """
    spec = load_spec().table(table)
    header = _read_header(path, error)
    dialect = sniff_dialect(path, header)
    columns = _header_columns(header, dialect, spec)
    _check_columns(columns, spec, path, error)
    _check_field_counts(path, dialect, len(columns), error)
    text = _read_text_frame(path, dialect, columns, error)
    typed = []
    for field in spec.fields:
        raw = (
            text.get_column(field.name)
            if field.name in columns
            else pl.Series(field.name, [None] * text.height, pl.String)
        )
        typed.append(_typed_column(raw, field, path, error))
    frame = pl.DataFrame(typed, height=text.height)
    _check_primary_key(frame, spec, path, error)
    return frame


def _check_primary_key(frame: pl.DataFrame, table: TableSpec, path: Path, error: ErrorType) -> None:
    key = table.primary_key
    if key is None or frame.is_empty():
        return
    duplicated = frame.get_column(key.name).is_duplicated()
    if duplicated.any():
        index = int(duplicated.arg_true()[1] if duplicated.sum() > 1 else duplicated.arg_true()[0])
        raise error(
            f"{key.name} {frame.get_column(key.name)[index]} appears more than once",
            where=f"{path} line {index + 2}, field {key.name}",
            fix=f"{key.name} is the primary key of {table.name}; remove the duplicate rows",
        )


# -- atomic table replacement ---------------------------------------------------------------------------


def _quote(name: str) -> str:
    escaped = name.replace('"', '""')
    return f'"{escaped}"'


@contextmanager
def staging_table(db: Database, like: str, *, columns: str | None = None) -> Iterator[str]:
    """An empty, constraint-free copy of table ``like`` (or, with ``columns``, a new table with that column
    list, e.g. ``"code VARCHAR"``) for bulk loading; dropped afterwards."""
    name = f"fedomop_stage_{like}_{uuid.uuid4().hex[:10]}"
    if columns is None:
        db.execute(f"CREATE TABLE {_quote(name)} AS SELECT * FROM {_quote(like)} WHERE 1 = 0")
    else:
        db.execute(f"CREATE TABLE {_quote(name)} ({columns})")
    try:
        yield name
    finally:
        db.execute(f"DROP TABLE IF EXISTS {_quote(name)}")


def _clear_sql(db: Database, table: str) -> str:
    # TRUNCATE is transactional and much faster on PostgreSQL; DuckDB and SQLite want DELETE.
    return f"TRUNCATE TABLE {_quote(table)}" if db.dialect == "postgresql" else f"DELETE FROM {_quote(table)}"


def replace_tables(db: Database, readers: dict[str, Callable[[], pl.DataFrame]]) -> dict[str, int]:
    """Replace the content of each table with its reader's rows, all tables in one transaction.

    Each reader runs (and its frame is freed) before the next, so memory holds one table at a time;
    nothing in the target tables changes unless every reader and load succeeds.
    """
    create_cdm(db.engine, tables=list(readers))
    counts: dict[str, int] = {}
    with ExitStack() as stack:
        staged: dict[str, str] = {}
        for table, read in readers.items():
            staged[table] = stack.enter_context(staging_table(db, table))
            frame = read()
            counts[table] = db.load_arrow(staged[table], frame)
            del frame
        with db.engine.begin() as connection:
            for table, name in staged.items():
                columns = ", ".join(_quote(c) for c in load_spec().table(table).column_names)
                connection.execute(sa.text(_clear_sql(db, table)))
                connection.execute(
                    sa.text(f"INSERT INTO {_quote(table)} ({columns}) SELECT {columns} FROM {_quote(name)}")
                )
    return counts


# -- folders --------------------------------------------------------------------------------------------


def load_cdm_folder(db: Database, folder: Path, *, tables: list[str] | None = None) -> dict[str, int]:
    """Import an OMOP CDM CSV export (one file per table, e.g. ``PERSON.csv``) into ``db``.

    Every table with a file is replaced by the file's rows. Vocabulary files go through the vocabulary
    loader and a ``SOURCE_TO_CONCEPT_MAP`` file through the site mapping loader (which checks targets).
    Returns rows loaded per table.
    """
    from harmonize.vocabulary.loader import VOCABULARY_TABLES, load_source_to_concept_map, load_vocabulary_files

    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError("not a folder", where=str(folder), fix="point --folder at the CDM CSV export")
    files = cdm_csv_files(folder)
    if tables is not None:
        wanted = {load_spec().table(t).name for t in tables}
        files = {t: p for t, p in files.items() if t in wanted}
    if not files:
        raise SourceError(
            "no CSV file named after an OMOP CDM table",
            where=str(folder),
            fix="name files after their table, e.g. PERSON.csv or concept.csv",
        )
    create_cdm(db.engine)
    counts = load_vocabulary_files(db, {t: p for t, p in files.items() if t in VOCABULARY_TABLES})
    clinical = {t: p for t, p in files.items() if t not in VOCABULARY_TABLES and t != "source_to_concept_map"}
    counts.update(replace_tables(db, {t: _reader(p, t) for t, p in clinical.items()}))
    if "source_to_concept_map" in files:
        db.execute(_clear_sql(db, "source_to_concept_map"))
        counts["source_to_concept_map"] = load_source_to_concept_map(db, files["source_to_concept_map"])
    return counts


def _reader(path: Path, table: str, error: ErrorType = SourceError) -> Callable[[], pl.DataFrame]:
    return lambda: read_cdm_csv(path, table, error=error)


def export_cdm_folder(db: Database, folder: Path) -> dict[str, int]:
    """Write every non-empty CDM table as ``TABLE.csv`` (comma-separated, ISO dates); rows written per table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = set(db.table_names())
    written: dict[str, int] = {}
    for table in load_spec().tables.values():
        if table.name not in existing:
            continue
        columns = ", ".join(_quote(c) for c in table.column_names)
        frame = db.query(f"SELECT {columns} FROM {_quote(table.name)}")
        if frame.is_empty():
            continue
        frame.write_csv(
            folder / f"{table.name.upper()}.csv", date_format="%Y-%m-%d", datetime_format="%Y-%m-%d %H:%M:%S"
        )
        written[table.name] = frame.height
    return written

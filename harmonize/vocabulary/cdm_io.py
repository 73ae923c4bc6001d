"""Read and write OMOP CDM tables as CSV files, typed by the spec.

One reader serves every CDM CSV a site meets: the Athena vocabulary download
(tab-delimited, dates as ``YYYYMMDD``, quotes are ordinary characters), the
comma-separated OHDSI exports such as Eunomia (quoted fields, ISO dates), and
a site's own ``source_to_concept_map``. Columns are read as text and cast to
the spec's type column by column, so a bad value is reported with its file,
line and field instead of turning into a null.

Loads replace whole tables atomically: each file goes, a block of lines at a
time (memory stays bounded on a full Athena download), into an unconstrained
staging table through :meth:`Database.load_arrow` (Arrow ingest / COPY); then
one transaction swaps the staged rows into the real tables, so readers never
see half a vocabulary and a failure leaves the old content intact.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import polars as pl
import sqlalchemy as sa

from fedomop.harmonize.cdm.schema import create_cdm, cycle_closing_foreign_keys
from fedomop.harmonize.cdm.spec import FieldSpec, TableSpec, load_spec
from fedomop.harmonize.ground.db import Database, quote_identifier
from fedomop.harmonize.ground.errors import FedomopError, SourceError

ErrorType = type[FedomopError]

# Date formats: the one that parses a column's first value is tried first, the others only on values it fails.
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
_BLOCK_BYTES = 128 * 2**20  # Athena files are read in blocks of about this size
_LINE_PROBE_SEPARATOR = "\x1f"  # a byte that never occurs in CDM text, to read a file as whole lines


@dataclass(frozen=True)
class CsvDialect:
    """How one CDM CSV file is written: its delimiter and whether ``"`` quotes fields."""

    delimiter: str
    quoted: bool

    @property
    def label(self) -> str:
        return "tab-delimited (Athena)" if self.delimiter == "\t" else "comma-separated"


@dataclass(frozen=True)
class CdmCsv:
    """A CDM CSV file whose header has been checked against its table's spec."""

    path: Path
    table: TableSpec
    dialect: CsvDialect
    columns: tuple[str, ...]
    error: ErrorType

    def fail(self, message: str, line: int | None = None, field: str | None = None, fix: str | None = None) -> NoReturn:
        where = str(self.path) + (f" line {line}" if line is not None else "") + (f", field {field}" if field else "")
        raise self.error(message, where=where, fix=fix)


# -- reading -------------------------------------------------------------------------------------------


def cdm_csv_files(folder: Path) -> dict[str, Path]:
    """CSV files in a folder whose name (any case, ``.csv``/``.tsv``) is an OMOP CDM table, by table name."""
    spec = load_spec()
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in (".csv", ".tsv") and path.stem.lower() in spec.tables:
            found[path.stem.lower()] = path
    return found


def spec_dtype(field: FieldSpec) -> pl.DataType:
    """The polars type a spec datatype is read into (integer is 32-bit, as the CDM's INTEGER columns)."""
    return {
        "integer": pl.Int32(),
        "float": pl.Float64(),
        "date": pl.Date(),
        "datetime": pl.Datetime("us"),
    }.get(field.datatype, pl.String())


def sniff_dialect(header: str) -> CsvDialect:
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


def _header_columns(header: str, dialect: CsvDialect, table: TableSpec) -> tuple[str, ...]:
    """Header names as spec field names (a header may quote a name, as OHDSI's exports do for ``"offset"``)."""
    return tuple(name.strip().strip('"').strip().lower() for name in header.split(dialect.delimiter))


def open_cdm_csv(path: Path, table: str, error: ErrorType = SourceError) -> CdmCsv:
    """Read and check a CDM CSV's header: every column a field of ``table``, every required field present."""
    spec = load_spec().table(table)
    header = _read_header(Path(path), error)
    dialect = sniff_dialect(header)
    source = CdmCsv(Path(path), spec, dialect, _header_columns(header, dialect, spec), error)
    known = set(spec.column_names)
    for column in source.columns:
        if column not in known:
            source.fail(
                f"column {column!r} is not a field of OMOP table {spec.name!r}",
                1,
                column,
                f"rename it to one of: {', '.join(spec.column_names)}",
            )
        if source.columns.count(column) > 1:
            source.fail(f"column {column!r} appears twice", 1, column, "remove the duplicate")
    missing = [f.name for f in spec.fields if f.required and f.name not in source.columns]
    if missing:
        source.fail(
            f"required column {missing[0]!r} of {spec.name!r} is missing", 1, None, f"add: {', '.join(missing)}"
        )
    return source


def _first_ragged_line(source: CdmCsv) -> tuple[int, int] | None:
    """Exact (slow) scan for the first record whose field count differs from the header's: explains errors."""
    width = len(source.columns)
    with source.path.open(encoding="utf-8-sig", newline="") as handle:
        if source.dialect.quoted:
            reader = csv.reader(handle, delimiter=source.dialect.delimiter)
            for record in reader:
                if record and len(record) != width:
                    return reader.line_num, len(record)
            return None
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line and line.count(source.dialect.delimiter) + 1 != width:
                return number, line.count(source.dialect.delimiter) + 1
    return None


def _fail_ragged(source: CdmCsv, line: int, found: int) -> None:
    source.fail(
        f"line has {found} fields, the header has {len(source.columns)}",
        line,
        None,
        "every line needs one value per header column (Athena files: tab-separated, no quoting)",
    )


def _check_field_counts(source: CdmCsv, data: Path | bytes, first_line: int) -> None:
    """Vectorised check that every line has one field per column (polars silently pads short lines with nulls)."""
    try:
        lines = pl.read_csv(
            io.BytesIO(data) if isinstance(data, bytes) else data,
            has_header=False,
            separator=_LINE_PROBE_SEPARATOR,
            quote_char=None,
            schema={"line": pl.String},
            skip_rows=0 if isinstance(data, bytes) else 1,
        )
    except pl.exceptions.PolarsError:
        lines = None
    if lines is not None:
        text = pl.col("line").str.strip_chars_end("\r")
        if source.dialect.quoted:
            text = text.str.replace_all(r'"[^"]*"', "")
        counts = lines.select(text.str.count_matches(source.dialect.delimiter, literal=True) + 1).to_series()
        bad = counts.is_not_null() & (counts != len(source.columns))
        if not bad.any():
            return
        if not source.dialect.quoted:  # unquoted: a line is a record, so the probe is exact
            index = int(bad.arg_true()[0])
            _fail_ragged(source, first_line + index, int(counts[index]))
    ragged = _first_ragged_line(source)
    if ragged is not None:
        _fail_ragged(source, *ragged)


def _text_blocks(source: CdmCsv, block_bytes: int) -> Iterator[tuple[int, Path | bytes]]:
    """(first line number, data) pieces of the file after its header.

    Unquoted (Athena) files are cut at line ends into blocks of about ``block_bytes`` so that memory stays
    bounded on a full vocabulary download; quoted files may hold line breaks inside fields and are read whole.
    """
    if source.dialect.quoted:
        yield 2, source.path
        return
    with source.path.open("rb") as handle:
        handle.readline()
        line, rest = 2, b""
        while chunk := handle.read(block_bytes):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            block, rest = data[:cut], data[cut:]
            if block:
                yield line, block
                line += block.count(b"\n")
        if rest.strip():
            yield line, rest


def _read_text(source: CdmCsv, data: Path | bytes, first_line: int) -> pl.DataFrame:
    """One piece of the file as text columns plus ``__line``; empty fields are nulls, blank lines dropped."""
    _check_field_counts(source, data, first_line)
    try:
        frame = pl.read_csv(
            io.BytesIO(data) if isinstance(data, bytes) else data,
            separator=source.dialect.delimiter,
            quote_char='"' if source.dialect.quoted else None,
            has_header=False,
            skip_rows=0 if isinstance(data, bytes) else 1,
            schema={c: pl.String for c in source.columns},
            encoding="utf8",
        )
    except pl.exceptions.PolarsError as exc:
        ragged = _first_ragged_line(source)
        if ragged is not None:
            _fail_ragged(source, *ragged)
        raise source.error(
            f"cannot parse the file as {source.dialect.label} CSV: {str(exc).splitlines()[0]}",
            where=str(source.path),
            fix="check delimiters, quoting and encoding (UTF-8)",
        ) from exc
    columns = list(source.columns)
    # An empty field means "no value" in every CDM export, quoted ("") or not.
    frame = frame.with_columns(pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c in columns)
    frame = frame.with_columns(pl.int_range(first_line, first_line + frame.height, dtype=pl.Int64).alias("__line"))
    return frame.filter(~pl.all_horizontal(pl.col(c).is_null() for c in columns))


def _parse_as(raw: pl.Series, fmt: str, datatype: str) -> pl.Series:
    if datatype == "date" and fmt in _DATE_FORMATS:
        return raw.str.to_date(fmt, strict=False)
    parsed = raw.str.to_datetime(fmt, strict=False, time_unit="us")
    return parsed.dt.date() if datatype == "date" else parsed


def _parse_temporal(raw: pl.Series, datatype: str) -> pl.Series:
    """Parse a date/datetime column: first with the format of its first value (YYYYMMDD, ISO, ISO with time),
    then, only for values that failed, with the other known formats."""
    formats: tuple[str, ...] = (
        _DATE_FORMATS + _DATETIME_FORMATS if datatype == "date" else _DATETIME_FORMATS + _DATE_FORMATS
    )
    sample = raw.drop_nulls().head(1)
    if not sample.is_empty():
        first = next((f for f in formats if _parse_as(sample, f, datatype)[0] is not None), formats[0])
        formats = (first, *(f for f in formats if f != first))
    parsed = _parse_as(raw, formats[0], datatype)
    for fmt in formats[1:]:
        if not (raw.is_not_null() & parsed.is_null()).any():
            break
        parsed = parsed.fill_null(_parse_as(raw, fmt, datatype))
    return parsed


def _parse_integer(raw: pl.Series) -> pl.Series:
    """Integers, also accepting `` 12 `` and ``12.0`` (some exports write integer fields as floats)."""
    values = raw.cast(pl.Int64, strict=False)
    if (raw.is_not_null() & values.is_null()).any():
        as_float = raw.str.strip_chars().cast(pl.Float64, strict=False)
        integral = pl.select(pl.when(as_float == as_float.floor()).then(as_float)).to_series()
        values = values.fill_null(integral.cast(pl.Int64, strict=False))
    in_range = (values >= _INT32[0]) & (values <= _INT32[1])
    return pl.select(pl.when(in_range).then(values).cast(pl.Int32)).to_series().alias(raw.name)


def _cast_field(raw: pl.Series, field: FieldSpec) -> pl.Series:
    if field.datatype == "integer":
        return _parse_integer(raw)
    if field.datatype == "float":
        return raw.str.strip_chars().cast(pl.Float64, strict=False)
    if field.datatype in ("date", "datetime"):
        return _parse_temporal(raw, field.datatype)
    return raw


_EXPECTED = {
    "integer": "an integer (32-bit)",
    "float": "a number",
    "date": "a date (YYYY-MM-DD or YYYYMMDD)",
    "datetime": "a date-time (YYYY-MM-DD HH:MM:SS)",
}


def _typed_column(source: CdmCsv, raw: pl.Series, field: FieldSpec, lines: pl.Series) -> pl.Series:
    parsed = _cast_field(raw, field)
    failed = raw.is_not_null() & parsed.is_null()
    if failed.any():
        index = int(failed.arg_true()[0])
        source.fail(
            f"value {raw[index]!r} is not {_EXPECTED[field.datatype]}",
            int(lines[index]),
            field.name,
            f"{field.table}.{field.name} is {field.datatype} in OMOP CDM v5.4; correct the value",
        )
    if field.required and parsed.null_count():
        index = int(parsed.is_null().arg_true()[0])
        source.fail(
            f"required field {field.name!r} is empty",
            int(lines[index]),
            field.name,
            f"{field.table}.{field.name} is required in OMOP CDM v5.4; give it a value (0 for unknown concepts)",
        )
    if field.datatype == "varchar" and field.length:
        too_long = parsed.str.len_chars() > field.length
        if too_long.any():
            index = int(too_long.arg_true()[0])
            source.fail(
                f"value is {parsed.str.len_chars()[index]} characters, the field allows {field.length}",
                int(lines[index]),
                field.name,
                "shorten the value or check the delimiter",
            )
    return parsed.alias(field.name)


def _check_cpt4_names(source: CdmCsv, text: pl.DataFrame) -> None:
    """Athena ships CPT4 concepts without names (licence); say how to add them rather than 'field is empty'."""
    if source.table.name != "concept":
        return
    nameless = text.filter(pl.col("concept_name").is_null() & (pl.col("vocabulary_id") == "CPT4"))
    if not nameless.is_empty():
        source.fail(
            f"{nameless.height} CPT4 concept(s) have no concept_name: Athena does not distribute CPT4 names",
            int(nameless.item(0, "__line")),
            "concept_name",
            "run `java -jar cpt4.jar 5 <UMLS API key>` in the download folder (see its readme), "
            "or download the vocabularies again without CPT4",
        )


def _typed_frame(source: CdmCsv, text: pl.DataFrame) -> pl.DataFrame:
    lines = text.get_column("__line")
    _check_cpt4_names(source, text)
    columns = []
    for field in source.table.fields:
        if field.name in source.columns:
            columns.append(_typed_column(source, text.get_column(field.name), field, lines))
        else:
            columns.append(pl.Series(field.name, [None] * text.height, dtype=spec_dtype(field)))
    frame = pl.DataFrame(columns, height=text.height)
    _check_primary_key(source, frame, lines)
    return frame


def _check_primary_key(source: CdmCsv, frame: pl.DataFrame, lines: pl.Series) -> None:
    key = source.table.primary_key
    if key is None or frame.is_empty():
        return
    repeated = ~frame.get_column(key.name).is_first_distinct()
    if repeated.any():
        index = int(repeated.arg_true()[0])
        source.fail(
            f"{key.name} {frame.get_column(key.name)[index]} appears more than once",
            int(lines[index]),
            key.name,
            f"{key.name} is the primary key of {source.table.name}; remove the duplicate rows",
        )


def empty_cdm_frame(table: str) -> pl.DataFrame:
    """A zero-row frame with the table's spec columns and types."""
    return pl.DataFrame(schema={f.name: spec_dtype(f) for f in load_spec().table(table).fields})


def iter_cdm_csv(
    path: Path, table: str, *, error: ErrorType = SourceError, block_bytes: int = _BLOCK_BYTES
) -> Iterator[pl.DataFrame]:
    """Typed frames (spec columns, order and types) from one CDM CSV, a block of lines at a time.

    Delimiter and date format are detected; optional columns absent from the file are nulls; a malformed
    line or value raises ``error`` naming the file, line and field.
    """
    source = open_cdm_csv(path, table, error)
    for first_line, data in _text_blocks(source, block_bytes):
        text = _read_text(source, data, first_line)
        if text.height:
            yield _typed_frame(source, text)


def read_cdm_csv(path: Path, table: str, *, error: ErrorType = SourceError) -> pl.DataFrame:
    """The whole CDM CSV as one typed frame (see :func:`iter_cdm_csv`)."""
    frames = list(iter_cdm_csv(path, table, error=error))
    return pl.concat(frames) if frames else empty_cdm_frame(table)


# -- atomic table replacement ---------------------------------------------------------------------------


@contextmanager
def staging_table(db: Database, like: str, *, columns: str | None = None) -> Iterator[str]:
    """An empty, constraint-free copy of table ``like`` (or, with ``columns``, a new table with that column
    list, e.g. ``"code VARCHAR"``) for bulk loading; dropped afterwards."""
    name = f"fedomop_stage_{like}_{uuid.uuid4().hex[:10]}"
    if columns is None:
        db.execute(f"CREATE TABLE {quote_identifier(name)} AS SELECT * FROM {quote_identifier(like)} WHERE 1 = 0")
    else:
        db.execute(f"CREATE TABLE {quote_identifier(name)} ({columns})")
    try:
        yield name
    finally:
        db.execute(f"DROP TABLE IF EXISTS {quote_identifier(name)}")


def clear_table_sql(db: Database, table: str) -> str:
    """SQL that empties a table inside a transaction (TRUNCATE is transactional and much faster on PostgreSQL)."""
    verb = "TRUNCATE TABLE" if db.dialect == "postgresql" else "DELETE FROM"
    return f"{verb} {quote_identifier(table)}"


def _check_staged_key(db: Database, table: str, stage: str, path: Path, error: ErrorType) -> None:
    """Duplicate primary keys across blocks of a file (each block was checked on its own while reading)."""
    key = load_spec().table(table).primary_key
    if key is None:
        return
    column = quote_identifier(key.name)
    duplicate = db.query(
        f"SELECT {column} FROM {quote_identifier(stage)} GROUP BY {column} HAVING COUNT(*) > 1 LIMIT 1"
    )
    if not duplicate.is_empty():
        raise error(
            f"{key.name} {duplicate.item(0, 0)} appears more than once",
            where=f"{path}, field {key.name}",
            fix=f"{key.name} is the primary key of {table}; remove the duplicate rows",
        )


def dependency_order(tables: list[str]) -> list[str]:
    """Tables with those they reference (by foreign key) first; cycle-closing keys are ignored."""
    spec, skip = load_spec(), cycle_closing_foreign_keys()
    wanted, ordered = set(tables), []

    def visit(table: str) -> None:
        if table in ordered:
            return
        for field in spec.table(table).fields:
            target = field.fk_table
            if target in wanted and target != table and (table, field.name) not in skip and target not in ordered:
                visit(target)
        ordered.append(table)

    for table in tables:
        visit(table)
    return ordered


def _swap_in(db: Database, staged: dict[str, str], error: ErrorType) -> None:
    """One transaction: empty the tables (referencing ones first), then copy the staged rows in (referenced first)."""
    order = dependency_order(list(staged))
    try:
        with db.engine.begin() as connection:
            for table in reversed(order):
                connection.execute(sa.text(clear_table_sql(db, table)))
            for table in order:
                columns = ", ".join(quote_identifier(c) for c in load_spec().table(table).column_names)
                target, stage = quote_identifier(table), quote_identifier(staged[table])
                connection.execute(sa.text(f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {stage}"))
    except sa.exc.DBAPIError as exc:
        raise error(
            f"replacing {', '.join(order)} failed, nothing was changed: {str(exc.orig).splitlines()[0]}",
            where=repr(db),
            fix="with foreign keys (cdm create --constraints all) every referenced row must be loaded and DuckDB "
            "cannot replace referenced rows in one transaction: load into a database created with primary keys only "
            "(the default) and add foreign keys afterwards, as OHDSI does",
        ) from exc


def replace_tables(db: Database, files: dict[str, Path | None], *, error: ErrorType = SourceError) -> dict[str, int]:
    """Replace the content of each table with its file's rows (``None``: no rows), all in one transaction.

    Files are read a block at a time straight into staging tables, so memory holds one block, not a
    vocabulary; nothing in the target tables changes unless every file reads and loads cleanly.
    """
    create_cdm(db.engine, tables=list(files))
    counts: dict[str, int] = {}
    with ExitStack() as stack:
        staged: dict[str, str] = {}
        for table, path in files.items():
            staged[table] = stack.enter_context(staging_table(db, table))
            counts[table] = 0
            if path is None:
                continue
            for frame in iter_cdm_csv(path, table, error=error, block_bytes=_BLOCK_BYTES):
                counts[table] += db.load_arrow(staged[table], frame)
            _check_staged_key(db, table, staged[table], path, error)
        _swap_in(db, staged, error)
    return counts


# -- folders --------------------------------------------------------------------------------------------


def load_cdm_folder(db: Database, folder: Path, *, tables: list[str] | None = None) -> dict[str, int]:
    """Import an OMOP CDM CSV export (one file per table, e.g. ``PERSON.csv``) into ``db``.

    Every table with a file is replaced by the file's rows. Vocabulary files go through the vocabulary
    loader and a ``SOURCE_TO_CONCEPT_MAP`` file through the site mapping loader (which checks targets).
    Returns rows loaded per table.
    """
    from fedomop.harmonize.vocabulary.loader import VOCABULARY_TABLES, load_source_to_concept_map, load_vocabulary_files

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
    counts.update(replace_tables(db, dict(clinical)))
    if "source_to_concept_map" in files:
        stcm = files["source_to_concept_map"]
        counts["source_to_concept_map"] = load_source_to_concept_map(db, stcm, replace=True)
    return counts


def export_cdm_folder(db: Database, folder: Path) -> dict[str, int]:
    """Write every non-empty CDM table as ``TABLE.csv`` (comma-separated, ISO dates); rows written per table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = set(db.table_names())
    written: dict[str, int] = {}
    for table in load_spec().tables.values():
        if table.name not in existing:
            continue
        columns = ", ".join(quote_identifier(c) for c in table.column_names)
        frame = db.query(f"SELECT {columns} FROM {quote_identifier(table.name)}")
        if frame.is_empty():
            continue
        frame.write_csv(
            folder / f"{table.name.upper()}.csv", date_format="%Y-%m-%d", datetime_format="%Y-%m-%d %H:%M:%S"
        )
        written[table.name] = frame.height
    return written

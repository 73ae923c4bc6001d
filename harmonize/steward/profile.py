"""Profile an unmapped extract (WhiteRabbit's scan): what each column holds, before anyone writes a mapping.

Files are scanned lazily with polars (every column read as text, so nothing is lost to type inference), and each
statistic is one aggregate over the whole file: the scan streams, so a file larger than memory can be profiled.
Two outputs exist on purpose: the *internal* profile keeps exact counts and every top value for the steward at the
site; the *shareable* one suppresses small cells and the values of identifier-like columns, because a profile of a
hospital extract is itself patient data.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

import polars as pl

from fedomop.harmonize.ground.errors import SourceError, VocabularyError
from fedomop.harmonize.ground.parsing import parse_number
from fedomop.harmonize.steward.codes_guess import code_domain, guess_code_system
from fedomop.harmonize.steward.fhir_profile import FHIR_SYSTEMS, FhirProfile, fhir_to_dict, is_bundle, profile_fhir
from fedomop.harmonize.vocabulary.cdm_io import cdm_csv_files, read_cdm_csv

DEFAULT_MIN_CELL = 10  # the project's small-cell threshold (validate/suppression.DEFAULT_SMALL_CELL)
TOP_VALUES = 10
SUPPRESSED = "<suppressed>"
# Date formats tried, most specific first; a column is a date when every non-null value parses with one format.
DATE_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y%m%d",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d.%m.%Y",
)
DATE_SHARE = 0.95
_ID_NAME = re.compile(r"(^|_)(id|key|mrn|ssn|nir|ipp)$|^(patient|person|pat|subject|member)_?(id|key|no|num|nr)", re.I)
_DELIMITERS = (",", ";", "\t", "|")


@dataclass
class ColumnProfile:
    name: str
    kind: str  # empty | integer | number | date | text
    rows: int
    nulls: int
    distinct: int
    top_values: list[tuple[str, int]]
    date_format: str | None = None
    date_min: str | None = None
    date_max: str | None = None
    code_system: str | None = None  # ICD10CM, ICD9CM, LOINC, SNOMED, RxNorm, local
    code_system_share: float | None = None
    code_domain: str | None = None  # most frequent domain of the codes the vocabulary knows (Condition, Procedure, ...)
    # a number column's decimal separator, read as `fedomop map` reads a source's `decimal:` ('.' or ','; with ','
    # a dot is only a thousands separator, 1.234,5); None when every value reads the same either way (1.234)
    decimal: str | None = None
    decimal_other: int = 0  # values written with the other separator (a column mixing 87,47 and 87.47)

    @property
    def null_share(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0

    @property
    def identifier_like(self) -> bool:
        """Nearly every row distinct: a person/record id, whose values must not leave the site."""
        filled = self.rows - self.nulls
        return filled >= 20 and self.distinct >= 0.9 * filled


@dataclass
class FileProfile:
    path: str  # relative to the source folder
    format: str  # csv | parquet
    rows: int
    delimiter: str | None = None
    encoding: str | None = None
    columns: list[ColumnProfile] = field(default_factory=list)


@dataclass
class Profile:
    source: str
    min_cell: int
    files: list[FileProfile]
    fhir: FhirProfile | None = None  # resource types and code systems of the FHIR files (NDJSON and Bundles)
    vocabulary: pl.DataFrame | None = field(default=None, repr=False)  # to tell which FHIR codes it lacks
    concept_maps: list[str] = field(default_factory=list)  # source_to_concept_map files: the steward's, not data

    def column(self, file: str, name: str) -> ColumnProfile:
        for profile in self.files:
            if profile.path == file:
                for column in profile.columns:
                    if column.name == name:
                        return column
        raise KeyError(f"{file}:{name}")


# -- reading -------------------------------------------------------------------------------------------


def _sniff(path: Path) -> tuple[str, str]:
    """Encoding and delimiter from the first 64 KiB: UTF-8 if it decodes, else latin-1; the most frequent delimiter."""
    head = path.open("rb").read(65536)
    try:
        text = head.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start > len(head) - 4:  # a multi-byte character cut by the 64 KiB window
            text, encoding = head[: exc.start].decode("utf-8"), "utf-8"
        else:
            text, encoding = head.decode("latin-1"), "latin-1"
    first = text.splitlines()[0] if text else ""
    delimiter = max(_DELIMITERS, key=first.count)
    return encoding, delimiter


def _scan(path: Path, fmt: str, delimiter: str, encoding: str) -> pl.LazyFrame:
    if fmt == "parquet":
        frame = pl.scan_parquet(path)
        return frame.select(_as_text(name, dtype) for name, dtype in frame.collect_schema().items())
    return pl.scan_csv(
        path,
        separator=delimiter,
        infer_schema=False,
        encoding="utf8" if encoding == "utf-8" else "utf8-lossy",
        null_values=[""],
    )


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A Parquet column as the text the profile counts; a native date or timestamp as ISO 8601 text, which the
    profile recognises as a date (cast to text, a timestamp reads ``1908-11-23 00:00:00.000000000``, no format)."""
    if dtype == pl.Date:
        return pl.col(name).dt.strftime("%Y-%m-%d")
    if isinstance(dtype, pl.Datetime):
        return pl.col(name).dt.strftime("%Y-%m-%dT%H:%M:%S")
    return pl.col(name).cast(pl.String)


# -- per column ----------------------------------------------------------------------------------------


def _count_exprs(index: int, name: str) -> list[pl.Expr]:
    """Nulls, distinct values and how many values parse as integer / number / each date format, for one column."""
    value = pl.col(name).str.strip_chars()
    exprs = [
        pl.col(name).null_count().alias(f"{index}:nulls"),
        pl.col(name).n_unique().alias(f"{index}:distinct"),
        value.cast(pl.Int64, strict=False).is_not_null().sum().alias(f"{index}:integer"),
        parse_number(name, ".").is_not_null().sum().alias(f"{index}:number"),  # as the map reads `decimal: "."`
        value.str.contains(",", literal=True).sum().alias(f"{index}:commas"),
    ]
    exprs += [
        value.str.strptime(pl.Datetime, fmt, strict=False).is_not_null().sum().alias(f"{index}:{fmt}")
        for fmt in DATE_FORMATS
    ]
    return exprs


def _kind(counts: dict[str, int], index: int, filled: int) -> tuple[str, str | None]:
    """integer / number / date (with its format) / text: the narrowest type every non-null value fits; a number
    may be written with a decimal comma (87,47), or some values with one separator and some with the other."""
    if filled == 0:
        return "empty", None
    for fmt in DATE_FORMATS:
        if counts[f"{index}:{fmt}"] >= DATE_SHARE * filled:  # a few broken dates do not make a date column text
            return "date", fmt
    if counts[f"{index}:integer"] == filled:
        return "integer", None
    if counts[f"{index}:either"] == filled:
        return "number", None
    return "text", None


def _decimal(counts: dict[str, int], index: int, filled: int) -> tuple[str | None, int]:
    """A number column's decimal separator and how many values are written with the other one: the separator
    that reads most values (with both reading every value, as 1.234 or 1e5 do, neither decides)."""
    point, comma = counts[f"{index}:number"], counts[f"{index}:comma"]
    if point == comma == filled:
        return None, 0
    if comma > point:
        return ",", filled - comma
    return ".", filled - point


def _comma_counts(frame: pl.LazyFrame, names: list[str], counts: dict[str, Any], rows: int) -> None:
    """How many values parse with a decimal comma (as the map reads `decimal: ","`), and with either separator.

    A second pass, only when a column has commas and values that do not read as numbers with a point (most files
    have none, and the thousands-group regex this takes costs CPU on every value of every column), over those
    columns and the number columns (a column of 1.234 reads with either separator: neither decides it)."""
    filled = {i: rows - int(counts[f"{i}:nulls"]) for i in range(len(names))}
    for index in range(len(names)):
        counts[f"{index}:comma"], counts[f"{index}:either"] = 0, counts[f"{index}:number"]
    commas = [i for i in filled if counts[f"{i}:commas"] and counts[f"{i}:number"] < filled[i]]
    if not commas:
        return
    numbers = [i for i in filled if filled[i] and counts[f"{i}:number"] == filled[i] > counts[f"{i}:integer"]]
    exprs = []
    for index in sorted({*commas, *numbers}):
        point, comma = parse_number(names[index], ".").is_not_null(), parse_number(names[index], ",").is_not_null()
        exprs += [comma.sum().alias(f"{index}:comma"), (point | comma).sum().alias(f"{index}:either")]
    counts.update(frame.select(exprs).collect().row(0, named=True))


def _profile_columns(
    frame: pl.LazyFrame, names: list[str], rows: int, vocabulary: pl.DataFrame | None
) -> list[ColumnProfile]:
    """All columns' counts and types in one pass over the file; then top values (and code values) per column."""
    counts = frame.select([e for i, n in enumerate(names) for e in _count_exprs(i, n)]).collect().row(0, named=True)
    _comma_counts(frame, names, counts, rows)
    columns = []
    for index, name in enumerate(names):
        nulls = int(counts[f"{index}:nulls"])
        top = frame.drop_nulls(name).group_by(name).len().sort(["len", name], descending=[True, False]).head(TOP_VALUES)
        column = ColumnProfile(
            name=name,
            kind="text",
            rows=rows,
            nulls=nulls,
            distinct=int(counts[f"{index}:distinct"]) - (1 if nulls else 0),
            top_values=[(str(v), int(n)) for v, n in top.collect().iter_rows()],
        )
        column.kind, column.date_format = _kind(counts, index, rows - nulls)
        if column.kind == "number":
            column.decimal, column.decimal_other = _decimal(counts, index, rows - nulls)
        if column.kind in ("integer", "text") and column.distinct and not _ID_NAME.search(name):
            values = frame.select(pl.col(name).drop_nulls().unique().head(5000)).collect().to_series().to_list()
            column.code_system, column.code_system_share = guess_code_system(values, vocabulary)
            if column.code_system and vocabulary is not None:
                column.code_domain = code_domain(values, column.code_system, vocabulary)
        columns.append(column)
    _date_ranges(frame, [c for c in columns if c.kind == "date"])
    return columns


def _date_ranges(frame: pl.LazyFrame, dates: list[ColumnProfile]) -> None:
    """First and last date of every date column, in one pass."""
    if not dates:
        return
    exprs = []
    for index, column in enumerate(dates):
        parsed = pl.col(column.name).str.strip_chars().str.strptime(pl.Datetime, column.date_format, strict=False)
        exprs += [parsed.min().alias(f"{index}:lo"), parsed.max().alias(f"{index}:hi")]
    bounds = frame.select(exprs).collect().row(0, named=True)
    for index, column in enumerate(dates):
        column.date_min, column.date_max = str(bounds[f"{index}:lo"].date()), str(bounds[f"{index}:hi"].date())


# -- FHIR NDJSON ---------------------------------------------------------------------------------------


def _flatten(value: Any, path: str, out: dict[str, str]) -> None:
    """Element paths (``code.coding.system``; list positions dropped) -> the first value found at each."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else key, out)
    elif isinstance(value, list):
        for item in value:
            _flatten(item, path, out)
    elif value is not None and path not in out:
        out[path] = str(value).lower() if isinstance(value, bool) else str(value)


def read_fhir_ndjson(path: Path) -> pl.DataFrame:
    """One row per resource, one text column per element path (first value of repeated elements).

    The flattened file is held in memory (FHIR bulk files are split per resource type and size by the server).
    """
    rows: list[dict[str, str]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                resource = json.loads(line)
            except ValueError as exc:
                raise SourceError(
                    f"not JSON: {exc}", where=f"{path} line {number}", fix="one resource per line"
                ) from None
            flat: dict[str, str] = {}
            _flatten(resource, "", flat)
            rows.append(flat)
    names = sorted({name for row in rows for name in row})
    return pl.DataFrame(rows, schema=dict.fromkeys(names, pl.String))


def _fhir_code_systems(columns: list[ColumnProfile]) -> None:
    """A coding's ``.code`` takes the vocabulary of its sibling ``.system`` URL (its most frequent value)."""
    by_name = {c.name: c for c in columns}
    for column in columns:
        if not column.name.endswith(".code"):
            continue
        system = by_name.get(column.name[: -len(".code")] + ".system")
        if system is not None and system.top_values:
            url, count = system.top_values[0]
            column.code_system = FHIR_SYSTEMS.get(url, url)
            column.code_system_share = round(count / max(system.rows - system.nulls, 1), 4)


# -- whole extract -------------------------------------------------------------------------------------


def profile_file(path: Path, root: Path, vocabulary: pl.DataFrame | None = None) -> FileProfile:
    """Profile one CSV/TSV/Parquet file (every column) or FHIR NDJSON file (every element path)."""
    suffix = path.suffix.lower()
    fmt = {".parquet": "parquet", ".ndjson": "fhir_ndjson"}.get(suffix, "csv")
    encoding, delimiter = ("utf-8", ",") if fmt != "csv" else _sniff(path)
    frame = read_fhir_ndjson(path).lazy() if fmt == "fhir_ndjson" else _scan(path, fmt, delimiter, encoding)
    try:
        names = frame.collect_schema().names()
        rows = int(frame.select(pl.len()).collect().item())
        columns = _profile_columns(frame, names, rows, vocabulary)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(
            f"cannot be profiled: {str(exc).splitlines()[0]}",
            where=str(path),
            fix="check that it is a CSV/TSV with one header row, or a Parquet file",
        ) from None
    if fmt == "fhir_ndjson":
        _fhir_code_systems(columns)
    if fmt == "parquet":  # a native date/timestamp: fedomop map reads it under the default `iso`, whatever the text
        native = {n for n, t in pl.read_parquet_schema(path).items() if t == pl.Date or isinstance(t, pl.Datetime)}
        for column in columns:
            if column.name in native and column.kind == "date":
                column.date_format = "iso"
    return FileProfile(
        path=path.relative_to(root).as_posix(),
        format=fmt,
        rows=rows,
        delimiter=None if fmt != "csv" else delimiter,
        encoding=None if fmt != "csv" else encoding,
        columns=columns,
    )


@overload
def read_vocabulary_concepts(folder: Path) -> pl.DataFrame: ...
@overload
def read_vocabulary_concepts(folder: Path | None) -> pl.DataFrame | None: ...
def read_vocabulary_concepts(folder: Path | None) -> pl.DataFrame | None:
    """concept_code, vocabulary_id, concept_id, concept_name, domain_id, standard_concept of a vocabulary folder."""
    if folder is None:
        return None
    found = cdm_csv_files(Path(folder)) if Path(folder).is_dir() else {}
    if "concept" not in found:
        raise VocabularyError("no CONCEPT.csv", where=str(folder), fix="point --vocabulary at a vocabulary folder")
    concepts = read_cdm_csv(found["concept"], "concept", error=VocabularyError)
    return concepts.select(
        "concept_id", "concept_name", "domain_id", "vocabulary_id", "standard_concept", "concept_code"
    )


def profile_source(source: Path, vocabulary: Path | None = None, *, min_cell: int = DEFAULT_MIN_CELL) -> Profile:
    """Profile every CSV/TSV/Parquet file under ``source`` (recursively, in name order)."""
    source = Path(source)
    if not source.is_dir():
        raise SourceError("not a folder", where=str(source), fix="point --source at the folder of the extract")
    files = sorted(
        p
        for p in source.rglob("*")
        if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".txt", ".parquet", ".ndjson")
    )
    bundles = sorted(p for p in source.rglob("*.json") if p.is_file() and is_bundle(p))
    if not files and not bundles:
        raise SourceError(
            "no CSV, TSV, Parquet, FHIR NDJSON or Bundle file found", where=str(source), fix="check the --source folder"
        )
    concepts = read_vocabulary_concepts(vocabulary)
    fhir_files = sorted([p for p in files if p.suffix.lower() == ".ndjson"] + bundles)
    maps = [p for p in files if _is_concept_map(p)]  # `codes apply` writes one into the extract folder
    return Profile(
        source=str(source),
        min_cell=min_cell,
        files=[profile_file(p, source, concepts) for p in files if p not in maps],
        fhir=profile_fhir(fhir_files, source) if fhir_files else None,
        vocabulary=concepts,
        concept_maps=[str(p.relative_to(source)) for p in maps],
    )


_CONCEPT_MAP_COLUMNS = {"source_code", "source_vocabulary_id", "target_concept_id", "target_vocabulary_id"}


def _is_concept_map(path: Path) -> bool:
    """A CDM source_to_concept_map table (its header holds the table's key columns): the steward's own work,
    not a hospital file to draft a mapping for."""
    if path.suffix.lower() not in (".csv", ".tsv", ".txt"):
        return False
    with path.open("rb") as handle:
        header = handle.readline().decode("utf-8", errors="replace").lower()
    names = {n.strip().strip('"') for n in header.replace("\t", ",").replace(";", ",").split(",")}
    return _CONCEPT_MAP_COLUMNS <= names


# -- outputs -------------------------------------------------------------------------------------------


def to_dict(profile: Profile, *, shareable: bool) -> dict[str, Any]:
    """The profile as JSON-ready data; ``shareable`` suppresses counts below ``min_cell`` and identifier values."""
    data: dict[str, Any] = {
        "source": profile.source,
        "min_cell": profile.min_cell,
        "files": [asdict(f) for f in profile.files],
        "kind": "shareable" if shareable else "internal",
    }
    if profile.fhir is not None:
        data["fhir"] = fhir_to_dict(profile.fhir, profile.vocabulary, shareable=shareable, min_cell=profile.min_cell)
    id_names = _identifier_names(profile)
    for file_data, file_profile in zip(data["files"], profile.files, strict=True):
        for column_data, column in zip(file_data["columns"], file_profile.columns, strict=True):
            column_data["null_share"] = round(column.null_share, 4)
            column_data["identifier_like"] = column.identifier_like
            column_data["top_values"] = [list(pair) for pair in column.top_values]
            if shareable:
                _suppress_column(column_data, column, profile.min_cell, column.name in id_names)
    return data


def _identifier_names(profile: Profile) -> set[str]:
    """Columns holding ids anywhere: identifier-like in some file (a person's id repeats in event files, where
    it is not unique but still identifies), or named like an id (patient_id, mrn, ...)."""
    names = {c.name for f in profile.files for c in f.columns if c.identifier_like}
    names |= {c.name for f in profile.files for c in f.columns if _ID_NAME.search(c.name)}
    return names


def _small(count: int, min_cell: int) -> bool:
    return 0 < count < min_cell


def _suppress_column(data: dict[str, Any], column: ColumnProfile, min_cell: int, identifier: bool) -> None:
    """Hide what could single out a few records: small null/filled counts (3 filled death dates are 3 deaths,
    recoverable as rows - nulls), the date range of such a column, and rare or identifying values."""
    filled = column.rows - column.nulls
    data["top_values"] = [] if identifier else _shareable_top(column, min_cell)
    if _small(column.nulls, min_cell) or _small(filled, min_cell):
        data["nulls"] = data["null_share"] = None
    if _small(filled, min_cell):
        data["date_min"] = data["date_max"] = None


def _shareable_top(column: ColumnProfile, min_cell: int) -> list[list[Any]]:
    if column.identifier_like:
        return []
    return [[value, count] for value, count in column.top_values if count >= min_cell]


def from_dict(data: dict[str, Any]) -> Profile:
    """Read back a profile JSON (internal or shareable) written by :func:`write_profile`."""
    files = []
    for file_data in data["files"]:
        columns = [
            ColumnProfile(
                **{k: v for k, v in c.items() if k not in ("null_share", "identifier_like", "top_values", "nulls")},
                nulls=c["nulls"] or 0,  # suppressed in a shareable profile: drafting only needs "some"
                top_values=[(str(v), int(n)) for v, n in c["top_values"]],
            )
            for c in file_data["columns"]
        ]
        files.append(FileProfile(**{**file_data, "columns": columns}))
    return Profile(source=data["source"], min_cell=int(data["min_cell"]), files=files)


def load_profile(path: Path) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise SourceError(
            "no such file" if not path.exists() else "not a file",
            where=str(path),
            fix="pass the profile.json that fedomop profile wrote (its --out folder)",
        )
    try:
        return from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(
            f"not a fedomop profile: {exc}", where=str(path), fix="run fedomop profile and pass its JSON"
        ) from None


def render_html(data: dict[str, Any]) -> str:
    """A self-contained HTML page: one table per file, one row per column."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>fedomop profile</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #bbb;padding:2px 6px;font-size:13px;vertical-align:top}</style></head><body>",
        f"<h1>Profile of {esc(data['source'])} ({esc(data['kind'])})</h1>",
        f"<p>Small cells: values seen fewer than {data['min_cell']} times are "
        + ("hidden; identifier-like columns show no values.</p>" if data["kind"] == "shareable" else "shown.</p>"),
    ]
    for file_data in data["files"]:
        parts.append(f"<h2>{esc(file_data['path'])}: {file_data['rows']:,} rows</h2><table>")
        parts.append(
            "<tr><th>column</th><th>type</th><th>null share</th><th>distinct</th><th>dates</th>"
            "<th>code system</th><th>top values</th></tr>"
        )
        for c in file_data["columns"]:
            dates = f"{c['date_min']} .. {c['date_max']} ({c['date_format']})" if c["date_min"] else ""
            nulls = "suppressed" if c["null_share"] is None else f"{c['null_share']:.1%}"
            system = f"{c['code_system']} ({c['code_system_share']:.0%})" if c["code_system"] else ""
            top = "<br>".join(f"{esc(str(v))}: {n:,}" for v, n in c["top_values"])
            kind = c["kind"] + (
                f" (decimal {c['decimal']})" if c.get("decimal") == "," or c.get("decimal_other") else ""
            )
            parts.append(
                f"<tr><td>{esc(c['name'])}</td><td>{esc(kind)}</td><td>{nulls}</td>"
                f"<td>{c['distinct']:,}</td><td>{esc(dates)}</td><td>{esc(system)}</td><td>{top}</td></tr>"
            )
        parts.append("</table>")
    if data.get("fhir"):
        parts.append(_fhir_html(data["fhir"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _fhir_html(fhir: dict[str, Any]) -> str:
    """Resource types, then one row per (resource type, element, code system) with its unmapped codes."""
    esc = html.escape

    def n(value: int | None) -> str:
        return "suppressed" if value is None else f"{value:,}"

    types = "".join(f"<tr><td>{esc(k)}</td><td>{n(v)}</td></tr>" for k, v in fhir["resource_types"].items())
    rows = "".join(
        f"<tr><td>{esc(s['resource_type'])}</td><td>{esc(s['element'])}</td><td>{esc(s['system'])}</td>"
        f"<td>{esc(s['vocabulary'] or 'not an OMOP vocabulary')}</td><td>{n(s['codings'])}</td>"
        f"<td>{n(s['distinct_codes'])}</td><td>{n(s['unmapped_codings'])}</td>"
        f"<td>{'<br>'.join(f'{esc(str(c))}: {k:,}' for c, k in s['top_unmapped'])}</td></tr>"
        for s in fhir["code_systems"]
    )
    checked = "" if fhir["vocabulary_checked"] else " (no --vocabulary given: only systems outside OMOP are counted)"
    return (
        "<h2>FHIR resources</h2><table><tr><th>resource type</th><th>resources</th></tr>" + types + "</table>"
        f"<h2>FHIR code systems</h2><p>Unmapped: codes the site vocabulary does not know{esc(checked)}.</p>"
        "<table><tr><th>resource type</th><th>element</th><th>system</th><th>OMOP vocabulary</th><th>codings</th>"
        "<th>distinct codes</th><th>unmapped codings</th><th>top unmapped codes</th></tr>" + rows + "</table>"
    )


def write_profile(profile: Profile, out: Path) -> dict[str, Path]:
    """Write profile.json/.html (internal, stays at the site) and profile.shareable.json/.html into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for kind, shareable in (("internal", False), ("shareable", True)):
        data = to_dict(profile, shareable=shareable)
        stem = "profile" if kind == "internal" else "profile.shareable"
        (out / f"{stem}.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
        (out / f"{stem}.html").write_text(render_html(data), encoding="utf-8")
        written[kind] = out / f"{stem}.json"
    return written

"""CSV and Parquet sources -> SourceBatch, through polars lazy scans.

Everything is read as text (parsing dates and numbers is the engine's job, so a bad value can be quarantined
with its field). Files in a legacy encoding (latin-1, cp1252) are transcoded first; a file that claims UTF-8
but has invalid bytes loses only the affected rows, which become rejects with reason "encoding error".
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import polars as pl

from fedomop.harmonize.ground.errors import SourceError
from fedomop.harmonize.sources.base import REJECT_SCHEMA, SourceBatch, empty_rejects
from fedomop.harmonize.sources.options import TabularOptions


def read_header(path: Path, options: TabularOptions) -> list[str]:
    """The column names of a file without reading its data (for checking a mapping before a run)."""
    if options.format == "parquet":
        return list(pl.read_parquet_schema(path))
    with path.open("rb") as handle:
        first = handle.readline()
    text = first.decode(options.codec, errors="replace").lstrip("\ufeff").rstrip("\r\n")
    return [c.strip().strip('"') for c in text.split(options.delimiter)]


def _decoded_lines(path: Path, relative: str, codec: str) -> tuple[str, pl.DataFrame, list[int] | None]:
    """Decode a file; if some lines are not valid in ``codec``, drop them as rejects.

    Returns the text, the rejects, and (when lines were dropped) the 1-based data row number of each kept row.
    """
    raw = path.read_bytes()
    try:
        return raw.decode(codec).lstrip("\ufeff"), empty_rejects(), None
    except UnicodeDecodeError:
        pass
    kept: list[str] = []
    numbers: list[int] = []
    rejects: list[dict[str, str]] = []
    for number, line in enumerate(raw.splitlines(keepends=True)):
        try:
            kept.append(line.decode(codec))
            if number:
                numbers.append(number)
        except UnicodeDecodeError as exc:
            if number == 0:
                raise SourceError(
                    f"the header is not valid {codec}: {exc.reason} at byte {exc.start}",
                    where=f"{relative} line 1",
                    fix="declare the file's real encoding (encoding: latin-1 | cp1252 | utf-8) in the mapping",
                ) from None
            rejects.append(
                {
                    "source_file": relative,
                    "source_row": str(number),
                    "field": "*",
                    "value": line.decode(codec, errors="replace").rstrip("\r\n")[:200],
                    "reason": f"encoding error: byte 0x{line[exc.start : exc.start + 1].hex()} at position "
                    f"{exc.start} is not valid {codec}; declare the file's encoding in the mapping",
                }
            )
    return "".join(kept).lstrip("\ufeff"), pl.DataFrame(rejects, schema=REJECT_SCHEMA), numbers


def _scan(path: Path, relative: str, options: TabularOptions) -> tuple[pl.LazyFrame, pl.DataFrame, list[int] | None]:
    if options.format == "parquet":
        return pl.scan_parquet(path).select(pl.all().cast(pl.String)), empty_rejects(), None
    codec = options.codec
    csv_options = {
        "separator": options.delimiter,
        "infer_schema": False,
        "null_values": list(options.null_values),
        "quote_char": '"',
    }
    if codec == "utf-8":
        try:
            path.read_bytes().decode("utf-8")
            return pl.scan_csv(path, **csv_options), empty_rejects(), None
        except UnicodeDecodeError:
            pass
    text, rejects, numbers = _decoded_lines(path, relative, codec)
    try:
        return pl.read_csv(io.StringIO(text), **csv_options).lazy(), rejects, numbers
    except pl.exceptions.PolarsError:  # ragged rows in a transcoded or partly undecodable file
        frame, ragged, kept = _parse_ragged(text, relative, options, numbers)
        return frame.lazy(), pl.concat([rejects, ragged]), kept


def _read_ragged(path: Path, relative: str, options: TabularOptions) -> tuple[pl.DataFrame, pl.DataFrame, list[int]]:
    """Slow path for a UTF-8 CSV polars refuses: rows with the wrong number of fields become rejects, the rest
    load (files in other encodings, or with undecodable lines, take this path inside ``_scan``)."""
    text = path.read_bytes().decode("utf-8").lstrip("\ufeff")
    return _parse_ragged(text, relative, options, None)


def _parse_ragged(
    text: str, relative: str, options: TabularOptions, numbers: list[int] | None
) -> tuple[pl.DataFrame, pl.DataFrame, list[int]]:
    records = list(csv.reader(io.StringIO(text), delimiter=options.delimiter))
    if not records:
        raise SourceError(
            "the CSV file is empty: not even a header row",
            where=relative,
            fix="remove the file from the extract, or export it again with its header",
        )
    header, body = records[0], records[1:]
    kept: list[list[str | None]] = []
    kept_numbers: list[int] = []
    rejects: list[dict[str, str]] = []
    nulls = set(options.null_values)
    for index, record in enumerate(body, start=1):
        number = numbers[index - 1] if numbers and index <= len(numbers) else index
        if len(record) != len(header):
            rejects.append(
                {
                    "source_file": relative,
                    "source_row": str(number),
                    "field": "*",
                    "value": options.delimiter.join(record)[:200],
                    "reason": f"wrong number of fields: {len(record)} instead of {len(header)}; quote values "
                    "that contain the delimiter",
                }
            )
            continue
        kept.append([None if v in nulls else v for v in record])
        kept_numbers.append(number)
    frame = pl.DataFrame(kept, schema={h: pl.String for h in header}, orient="row")
    return frame, pl.DataFrame(rejects, schema=REJECT_SCHEMA), kept_numbers


def read_tabular(name: str, files: list[Path], base_dir: Path, options: TabularOptions) -> SourceBatch:
    """Read every file of a CSV/Parquet source as text with lineage columns (_source_file, _source_row)."""
    frames: list[pl.DataFrame] = []
    rejects: list[pl.DataFrame] = []
    for path in files:
        relative = str(path.relative_to(base_dir))
        scan, bad, numbers = _scan(path, relative, options)
        try:
            frame = scan.collect()
        except pl.exceptions.PolarsError as exc:
            if options.format != "csv":
                raise SourceError(
                    f"cannot parse as {options.format}: {str(exc).splitlines()[0]}",
                    where=relative,
                    fix="check that the file is the format the mapping declares",
                ) from None
            frame, ragged, numbers = _read_ragged(path, relative, options)
            bad = pl.concat([bad, ragged])
        rows = (
            pl.Series("_source_row", numbers, pl.Int64)
            if numbers is not None
            else pl.int_range(1, frame.height + 1, eager=True)
        )
        frame = frame.with_columns(pl.col(c).str.strip_chars() for c in frame.columns).with_columns(
            pl.lit(relative).alias("_source_file"), rows.cast(pl.String).alias("_source_row")
        )
        frames.append(frame)
        rejects.append(bad)
    frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    all_rejects = pl.concat(rejects) if rejects else empty_rejects()
    return SourceBatch(name=name, frame=frame, rejects=all_rejects, seen=frame.height + all_rejects.height)

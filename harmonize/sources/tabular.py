"""CSV and Parquet sources -> SourceBatch, through polars lazy scans.

Everything is read as text (parsing dates and numbers is the engine's job, so a bad value can be quarantined
with its field). Files in a legacy encoding (latin-1, cp1252) are transcoded first; a file that claims UTF-8
but has invalid bytes loses only the affected rows, which become rejects with reason "encoding error".

Rows are checked before polars sees them, because polars fills a short row with nulls (``race = 'Whi'`` from a
truncated last line) and counts a blank line as a record of nulls. The rule (docs/mapping.md, "CSV rows"):

- a row with more or fewer fields than the header is quarantined: "wrong number of fields: F instead of H";
- a blank line is not a record: it is skipped and not counted;
- a row holding NUL or another control character (C0 other than tab, CR, LF; or DEL) is quarantined:
  such bytes are never loaded into codes;
- a file declared latin-1/cp1252 that is valid UTF-8 with non-ASCII bytes is refused (it would load as mojibake);
- header names are trimmed (``a, b, c`` is ``a``, ``b``, ``c``).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import polars as pl

from fedomop.harmonize.ground.errors import SourceError
from fedomop.harmonize.sources.base import REJECT_SCHEMA, SourceBatch, empty_rejects
from fedomop.harmonize.sources.options import TabularOptions

# a 200 KB field is data to quarantine or load, not a reason for the csv module to raise
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

# C0 controls other than tab, LF, CR, plus DEL: never part of a code or a value
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_PATTERN = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"  # the same class, for polars' (Rust) regex
_QUOTED_FIELD = r'"(?:[^"\r]|"")*"'  # a wholly quoted field, quotes inside doubled
LEGACY_CODECS = {"latin-1", "latin1", "iso-8859-1", "cp1252", "windows-1252"}
_PIECE_BYTES = 1 << 19  # the row check's unit of work (see _pieces)


def read_header(path: Path, options: TabularOptions) -> list[str]:
    """The column names of a file without reading its data (for checking a mapping before a run)."""
    if options.format == "parquet":
        return list(pl.read_parquet_schema(path))
    with path.open("rb") as handle:
        first = handle.readline()
    _check_line_endings(first, path.name)
    text = first.decode(options.codec, errors="replace").lstrip("\ufeff").rstrip("\r\n")
    return [c.strip().strip('"') for c in text.split(options.delimiter)]


def _decoded_lines(raw: bytes, relative: str, codec: str) -> tuple[str, pl.DataFrame, list[int] | None]:
    """Decode a file; if some lines are not valid in ``codec``, drop them as rejects.

    Returns the text, the rejects, and (when lines were dropped) the 1-based data row number of each kept row.
    """
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


def _check_declared_encoding(raw: bytes, relative: str, codec: str) -> None:
    """A file declared latin-1/cp1252 whose non-ASCII bytes are valid UTF-8 is almost surely UTF-8: refuse it."""
    if codec.lower() not in LEGACY_CODECS or raw.isascii():
        return
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    raise SourceError(
        f"the file is declared {codec} but is valid UTF-8 with non-ASCII characters: read as {codec} it would "
        "load as mojibake (é as Ã©)",
        where=relative,
        fix="declare 'encoding: utf-8' for this source in the mapping",
    )


def _check_line_endings(raw: bytes, relative: str) -> None:
    """A file whose lines end in a bare CR (classic Mac OS) reads as one huge header line: say so instead."""
    end = raw.find(b"\n")
    first_line = raw if end < 0 else raw[:end]  # (split() would copy the rest of the file too)
    if b"\r" in first_line.rstrip(b"\r"):
        raise SourceError(
            "the file's lines end in a bare CR (classic Mac OS line endings), so it reads as a single line",
            where=f"{relative} line 1",
            fix='convert the file to LF or CRLF line endings (e.g. \'tr "\\r" "\\n"\' or re-export it)',
        )


def _is_regular(text: str, options: TabularOptions, encoded: bytes | None = None) -> bool:
    """True when every record has the header's width and no control characters (polars may read it as is).

    Decided in vectorised passes (the csv module, record by record, took a quarter of a big site's map). A file
    that is not "regular" takes the csv module's exact path (``_parse_ragged``), so this check can only send a
    file to the slow path, never let a bad row through: a quoted field spanning lines, a stray quote, a blank
    line or a lone CR all count as irregular. ``encoded`` is the text as UTF-8 when the caller has it.
    """
    data = encoded if encoded is not None else text.encode("utf-8")
    return _line_shape(data, 0, len(data), options, text) is not None


@dataclass(frozen=True)
class LineShape:
    """What the row check learnt of regular lines: the delimiters on each, and whether any field may begin or
    end with whitespace (if none can, trimming the values would change nothing and is skipped)."""

    width: int
    padded: bool

    def joined(self, other: LineShape | None) -> LineShape | None:
        """The shape of these lines and ``other``'s together (None: their widths differ, or ``other`` failed)."""
        if other is None or other.width != self.width:
            return None
        return LineShape(self.width, self.padded or other.padded)


def regular_file_shape(path: Path, options: TabularOptions, block_bytes: int = 1 << 20) -> LineShape | None:
    """The lines' shape if the file is regular (``_is_regular``), else None; a block of whole lines at a time.

    Blocks are read into one reused buffer and checked in place (reading each block as a new object, then
    joining and re-slicing it, cost as much as checking it). A line never spans two blocks (each block ends at a
    newline), so a blank line at a block's edge still shows as one, and every block must have the first's width.
    The file is read, not memory-mapped: a file cut short while it is read must not kill the run (SIGBUS).
    """
    buffer = bytearray(max(1, block_bytes))
    kept = 0  # bytes at the buffer's start: the start of a line the last read did not finish
    shape: LineShape | None = None
    masks = _Masks()
    start = len(codecs.BOM_UTF8) if _starts_with_bom(path) else 0
    with path.open("rb") as handle:
        while True:
            if kept == len(buffer):  # a line longer than the buffer: room for the rest of it
                buffer.extend(bytes(len(buffer)))
            with memoryview(buffer) as free:
                got = handle.readinto(free[kept:])
            end = kept + got
            stop = buffer.rfind(b"\n", start, end) + 1 if got else end  # whole lines; at the end, all that is left
            if got and stop == 0:
                kept = end
                continue
            if stop > start:
                found = _line_shape(buffer, start, stop, options, None, masks)
                shape = found if shape is None else shape.joined(found)
                if shape is None:
                    return None
            if not got:
                return shape
            kept, start = end - stop, 0
            buffer[:kept] = buffer[stop:end]  # the unfinished line to the front (same size: a move, no resize)


def _starts_with_bom(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8


def _line_shape(
    buffer: bytes | bytearray,
    start: int,
    end: int,
    options: TabularOptions,
    text: str | None,
    masks: _Masks | None = None,
) -> LineShape | None:
    """The number of delimiters on every one of the whole lines in ``buffer[start:end]`` (and whether a field
    may be padded), or None when the lines differ, or one is blank or holds a control character. ``text``: the
    same lines decoded, if the caller has them (used only with a delimiter of several bytes)."""
    if start >= end or buffer.find(b"\x7f", start, end) >= 0:
        return None  # empty, or DEL
    if len(options.delimiter.encode("utf-8")) != 1:
        if text is None:
            try:
                text = buffer[start:end].decode("utf-8")
            except UnicodeDecodeError:
                return None
        width = _line_width_quoted(text, options)
        return None if width is None else LineShape(width, padded=True)
    shape: LineShape | None = None
    masks = masks or _Masks()
    for piece_start, piece_end in _pieces(buffer, start, end):
        octets = np.frombuffer(buffer, dtype=np.uint8, count=piece_end - piece_start, offset=piece_start)
        try:
            found = _piece_shape(
                octets,
                options,
                masks,
                has_cr=buffer.find(b"\r", piece_start, piece_end) >= 0,
                has_quote=buffer.find(b'"', piece_start, piece_end) >= 0,
            )
        finally:
            del octets  # the caller's buffer must have no exported view left when it grows
        shape = found if shape is None else shape.joined(found)
        if shape is None:
            return None
    return shape


def _pieces(buffer: bytes | bytearray, start: int, end: int) -> Iterator[tuple[int, int]]:
    """``buffer[start:end]`` cut at line ends into pieces of about ``_PIECE_BYTES`` (a longer line is a piece).

    numpy's temporaries for a piece (a mask per byte class, the line ends) then stay in the CPU's cache: the
    check of site A's 1 GB observations file took 2.2 CPU s in 64 MiB pieces, 1.1 s in 512 KiB ones.
    """
    while start < end:
        stop = end if end - start <= _PIECE_BYTES else buffer.rfind(b"\n", start, start + _PIECE_BYTES) + 1
        if stop <= start:  # no line end in the piece: it runs to the end of its (long) line
            stop = buffer.find(b"\n", start + _PIECE_BYTES, end) + 1 or end
        yield start, stop
        start = stop


def _piece_shape(
    octets: np.ndarray, options: TabularOptions, masks: _Masks, *, has_cr: bool, has_quote: bool
) -> LineShape | None:
    """``_line_shape`` of one piece, a single-byte delimiter: lines are measured by counting delimiters, except
    lines holding a quote, which are decoded and matched field by field (``_line_width_quoted``) - only those, so
    a file with a few quoted descriptions is not parsed line by line in full."""
    line_ends = octets == 0x0A
    newlines = np.flatnonzero(line_ends)
    returns = int(np.count_nonzero(octets == 0x0D)) if has_cr else 0
    others = int(np.count_nonzero(octets < 0x20)) - len(newlines) - returns  # tabs, else a forbidden control
    if others and others != int(np.count_nonzero(octets == 0x09)):
        return None  # a C0 control character other than tab, CR, LF
    ends = newlines if octets[-1] == 0x0A else np.append(newlines, len(octets))
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    if returns:  # every CR must end a line (CRLF), and is not part of its content
        if np.count_nonzero(octets[newlines[newlines > 0] - 1] == 0x0D) != returns:
            return None
        lengths = lengths - (octets[np.maximum(ends - 1, 0)] == 0x0D)
    if (lengths <= 0).any():
        return None  # a blank line
    # delimiters per line: how many lie before each line's end, differenced (a line starts just after the previous
    # line's newline, which is no delimiter). 9x faster than np.add.reduceat of the mask over the line starts.
    at_delimiter = octets == ord(options.delimiter)
    delimiters = np.flatnonzero(at_delimiter)
    widths = np.diff(np.searchsorted(delimiters, ends), prepend=0)
    if has_quote:
        quoted = np.zeros(len(ends), dtype=bool)
        quoted[np.searchsorted(ends, np.flatnonzero(octets == 0x22))] = True  # the line each quote is on
        try:
            text = octets[np.repeat(quoted, np.diff(starts, append=len(octets)))].tobytes().decode("utf-8")
        except UnicodeDecodeError:
            return None
        width = _line_width_quoted(text, options)
        plain = widths[~quoted]
        if width is None or (len(plain) and not bool((plain == width).all())):
            return None
        return LineShape(width, padded=True)  # (quoted fields are not looked into for padding)
    if not bool((widths == widths[0]).all()):
        return None
    tab_delimited = options.delimiter == "\t"
    padded = _padded(octets, line_ends, at_delimiter, masks, has_cr=has_cr, tab_delimited=tab_delimited)
    return LineShape(int(widths[0]), padded)


class _Masks:
    """Boolean work arrays reused from piece to piece by the padding check (fresh ones for every piece kept the
    allocator returning and re-faulting their pages: three times the check's cost)."""

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []

    def take(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if not self._arrays or len(self._arrays[0]) < size:
            self._arrays = [np.empty(size, dtype=bool) for _ in range(4)]
        first, second, third, fourth = (array[:size] for array in self._arrays)
        return first, second, third, fourth


def _padded(octets: np.ndarray, line_ends: np.ndarray, at_delimiter: np.ndarray, masks: _Masks, *, has_cr: bool,
            tab_delimited: bool) -> bool:  # fmt: skip
    """Whether a field of these (unquoted) lines may begin or end with whitespace: a space or tab next to a
    field's edge (a delimiter or a line end), or, in non-ASCII text, a byte that may start a Unicode White_Space
    character (polars' trim removes those too: U+00A0, U+2003, ...) just after an edge, or any non-ASCII byte
    just before one (conservative). Whole-piece masks: ~0.3 CPU s per GB, against ~1.9 s for trimming every
    value of site A's 1 GB observations file, which has nothing to trim."""
    edges, space, other, pair = masks.take(len(octets))
    np.logical_or(line_ends, at_delimiter, out=edges)
    if has_cr:
        np.logical_or(edges, np.equal(octets, 0x0D, out=other), out=edges)
    np.equal(octets, 0x20, out=space)
    if not tab_delimited:  # (in a tab-delimited file a tab is an edge, never inside a field)
        np.logical_or(space, np.equal(octets, 0x09, out=other), out=space)
    if _touch(edges, space, space, pair):
        return True
    if int(octets.max()) < 0x80:
        return False
    np.greater_equal(octets, 0x80, out=space)  # any non-ASCII byte, just before an edge
    np.logical_and(np.greater_equal(octets, 0xC2, out=other), np.less_equal(octets, 0xE3, out=pair), out=other)
    # ^ lead bytes of U+0085/U+00A0 (C2), U+1680 (E1), U+2000.. (E2), U+3000 (E3), and the others between
    return _touch(edges, other, space, pair)


def _touch(edges: np.ndarray, starts: np.ndarray, ends: np.ndarray, pair: np.ndarray) -> bool:
    """A ``starts`` byte at the piece's first byte or just after an edge, or an ``ends`` byte at its last byte
    or just before an edge (the piece's first and last bytes are a line's edges)."""
    if starts[0] or ends[-1]:
        return True
    return bool(np.logical_and(edges[:-1], starts[1:], out=pair[:-1]).any()) or bool(
        np.logical_and(ends[:-1], edges[1:], out=pair[:-1]).any()
    )


def _line_width_quoted(text: str, options: TabularOptions) -> int | None:
    """The width check for text with quotes, line by line in polars: every line must be one well-formed record
    (fields unquoted, with no quote, delimiter or CR inside, or wholly quoted with doubled quotes)."""
    lines = pl.Series("line", [text]).str.split("\n").explode()
    if lines.len() and lines[-1] == "":
        lines = lines.head(lines.len() - 1)  # the newline that ends the last record
    if not lines.len():
        return None
    lines = lines.str.strip_suffix("\r")
    if (lines == "").any() or lines.str.contains(_CONTROL_PATTERN).any():
        return None
    delimiter = f"\\x{{{ord(options.delimiter):x}}}"
    field = f'(?:[^"{delimiter}\\r]*|{_QUOTED_FIELD})'
    if not lines.str.contains(f"^{field}(?:{delimiter}{field})*$").all():
        return None
    widths = lines.str.replace_all(_QUOTED_FIELD, "").str.count_matches(options.delimiter, literal=True)
    return int(widths[0]) if widths.n_unique() == 1 else None


class _CsvArgs(TypedDict):
    """The keyword arguments polars' scan_csv and read_csv share here (typed, so the checker sees each one)."""

    separator: str
    infer_schema: bool
    null_values: list[str]
    quote_char: str


def _scan(path: Path, relative: str, options: TabularOptions) -> tuple[pl.LazyFrame, pl.DataFrame, list[int] | None]:
    if options.format == "parquet":
        return pl.scan_parquet(path).select(pl.all().cast(pl.String)), empty_rejects(), None
    codec = options.codec
    csv_options = _CsvArgs(
        separator=options.delimiter, infer_schema=False, null_values=list(options.null_values), quote_char='"'
    )
    raw = path.read_bytes()
    _check_declared_encoding(raw, relative, codec)
    _check_line_endings(raw, relative)
    text, rejects, numbers = _decoded_lines(raw, relative, codec)
    encoded = raw.removeprefix(codecs.BOM_UTF8) if codec == "utf-8" else None
    if numbers is None and _is_regular(text, options, encoded):  # dropped lines: row numbers need the slow path
        if codec == "utf-8":
            return pl.scan_csv(path, **csv_options), rejects, None
        try:
            return pl.read_csv(io.StringIO(text), **csv_options).lazy(), rejects, numbers
        except pl.exceptions.PolarsError:
            pass
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
    reader = csv.reader(io.StringIO(text), delimiter=options.delimiter)
    first_line = 1
    records: list[tuple[list[str], int]] = []
    try:
        for record in reader:  # with each record, the kept line it starts on (a quoted field may span lines)
            records.append((record, first_line))
            first_line = reader.line_num + 1
    except csv.Error as exc:
        raise SourceError(
            f"cannot parse as CSV: {exc}", where=relative, fix="check the file's quoting and delimiter"
        ) from None
    if not records:
        raise SourceError(
            "the CSV file is empty: not even a header row",
            where=relative,
            fix="remove the file from the extract, or export it again with its header",
        )
    header, body = [h.strip() for h in records[0][0]], records[1:]
    kept: list[list[str | None]] = []
    kept_numbers: list[int] = []
    rejects: list[dict[str, str]] = []
    nulls = set(options.null_values)
    index = 0
    for record, line in body:
        if not record:
            continue  # a blank line is not a record
        index += 1
        number = numbers[line - 2] if numbers and 2 <= line <= len(numbers) + 1 else index
        reason = _row_problem(record, header)
        if reason:
            rejects.append(
                {
                    "source_file": relative,
                    "source_row": str(number),
                    "field": "*",
                    "value": CONTROL.sub("?", options.delimiter.join(record))[:200],
                    "reason": reason,
                }
            )
            continue
        kept.append([None if v in nulls else v for v in record])
        kept_numbers.append(number)
    frame = pl.DataFrame(kept, schema={h: pl.String for h in header}, orient="row")
    return frame, pl.DataFrame(rejects, schema=REJECT_SCHEMA), kept_numbers


def _row_problem(record: list[str], header: list[str]) -> str | None:
    """Why a parsed CSV record cannot load as is (wrong width, control characters), or None."""
    if len(record) != len(header):
        return (
            f"wrong number of fields: {len(record)} instead of {len(header)}; quote values that contain the "
            "delimiter, or export the row again if it was cut short"
        )
    for name, value in zip(header, record, strict=True):
        found = CONTROL.search(value)
        if found:
            return f"control character U+{ord(found.group()):04X} in field {name!r}; remove it from the export"
    return None


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
        frame = frame.rename({c: c.strip() for c in frame.columns if c != c.strip()})
        frame = frame.with_columns(pl.col(c).str.strip_chars() for c in frame.columns).with_columns(
            pl.lit(relative).alias("_source_file"), rows.cast(pl.String).alias("_source_row")
        )
        frames.append(frame)
        rejects.append(bad)
    frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    all_rejects = pl.concat(rejects) if rejects else empty_rejects()
    return SourceBatch(name=name, frame=frame, rejects=all_rejects, seen=frame.height + all_rejects.height)

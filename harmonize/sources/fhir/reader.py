"""Read FHIR R4 bulk NDJSON files and Bundles into a SourceBatch: one row per accepted resource.

Every resource read ends up in exactly one place: the frame (with ``_source_file`` and ``_source_row``
lineage) or the rejects (with the element path, the value and a reason that says what to fix), so the
engine can prove ``seen == accepted + rejected`` for each source.

Files are streamed line by line and the accepted columns are collected in batches of
``BATCH_SIZE`` resources, so a multi-GB NDJSON file never sits in memory as JSON or as Python objects;
only the requested columns do.

Two validation levels:

* ``structural`` (default, fast): parse + check each line with the compiled R4B structure checker
  (:mod:`fedomop.harmonize.sources.fhir.structure`).
* ``full``: ``json.loads`` then ``model_validate`` with the fhir.resources R4B model of the type.

Both also reject a wrong resourceType, a missing id and a duplicate id within the source.

Speed (``structural``, NDJSON; docs/benchmarks.md has the figures): each line goes through a validator
specialised to the elements this process has seen (the full one decides whatever it refuses, see
:class:`~fedomop.harmonize.sources.fhir.structure.Specialisation`), the resource-level rules are tested in
Python, and the mapping's columns come out of one generated function per row
(:func:`~fedomop.harmonize.sources.fhir.path.row_extractor`). Every fast path is tested against the plain one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import gzip
import importlib
import io
import json
import multiprocessing
import os
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Literal

import polars as pl
import pydantic
import pydantic_core

from fedomop.harmonize.ground.errors import MappingError, SourceError
from fedomop.harmonize.sources.base import REJECT_SCHEMA, SourceBatch, empty_rejects
from fedomop.harmonize.sources.fhir.path import CompiledPath, compile_path, row_extractor
from fedomop.harmonize.sources.fhir.structure import (
    LEARN_FROM,
    StructuralProblem,
    resource_model,
    specialisation,
    structural_validator,
)

BATCH_SIZE = 50_000
_NO_URNS: Mapping[str, str] = {}
_NONE: frozenset[int] = frozenset()
CHUNK_LINES = 10_000  # NDJSON lines per worker task (workers > 1)
MISSES_BEFORE_REBUILD = 1000  # valid resources the specialised validator refused (see Specialisation)
SMALL_BATCH = 1_000  # rows: below this a frame is built row-wise (fixed cost), above column-wise (per-row cost)
PLACE_BITS = 40  # first_seen stores (file index << PLACE_BITS) + line number for ids from the hot loop
VALUE_LIMIT = 200
FORMATS = ("ndjson", "bundle")
VALIDATIONS = ("structural", "full")


@dataclass(frozen=True)
class Each:
    """Read one record per element of ``element`` (e.g. Observation.component) instead of per resource;
    the element's fields named in ``replaces`` stand in for the resource's (see ``_Columns._per_element``)."""

    element: str
    replaces: tuple[str, ...] = ()


class _Rejected(Exception):
    """Internal: a resource that cannot be accepted, with the reject row's field, value and reason."""

    def __init__(self, field: str, value: Any, reason: str, row: str | None = None) -> None:
        super().__init__(reason)
        self.field = field
        self.value = value if isinstance(value, str) else _text(value)
        self.reason = reason
        self.row = row


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\r\n")
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


_PYTHON_TYPES: dict[pl.DataType, tuple[type, ...]] = {
    pl.Float64(): (float, int),
    pl.Int64(): (int,),
    pl.Boolean(): (bool,),
}


class _Columns:
    """Accepted rows, kept as tuples and turned into a polars frame every BATCH_SIZE rows.

    With ``on_frame`` each frame is handed over as soon as it is built (in file order) instead of being
    kept, so a caller that writes them away (chunked runs) holds at most one batch of rows.
    """

    def __init__(
        self,
        paths: Mapping[str, CompiledPath],
        on_frame: Callable[[pl.DataFrame], None] | None = None,
        each: Each | None = None,
    ) -> None:
        self.each = each
        self.extra = 0  # with ``each``: rows emitted minus resources accepted (the records are the elements)
        self.paths = list(paths.items())
        self.schema: dict[str, pl.DataType] = {name: path.dtype for name, path in self.paths}
        self.schema.update({"_source_file": pl.String(), "_source_row": pl.String()})
        self.frames: list[pl.DataFrame] = []
        self.on_frame = on_frame
        self._make_adder = row_extractor([path for _name, path in self.paths])
        self._make_valid_adder = row_extractor([path for _name, path in self.paths], validated=True)
        self._reset()

    def _reset(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.add_row = self._make_adder(self.rows.append)  # (resource, source_file, source_row, urn_ids)
        self.add_valid_row = self._make_valid_adder(self.rows.append)  # only for structurally checked resources
        if self.each is not None:
            self.add_row, self.add_valid_row = self._per_element(self.add_row), self._per_element(self.add_valid_row)

    def _per_element(self, add: Callable[..., None]) -> Callable[..., None]:
        """One row per element of ``each.element`` (e.g. an Observation's components): the element's own
        fields stand in for the resource's (the names in ``each.replaces``; ``value`` covers every value[x]),
        the rest (subject, effective[x], ...) is the resource's. The row id is ``<id>/<element>/<index>``,
        so lineage keeps the parent (the panel) of every row."""
        each = self.each
        assert each is not None
        name, replaced = each.element, tuple(each.replaces)

        def emit(
            resource: dict, source_file: str, row: str, urn_ids: Mapping[str, str], skip: Set[int] = _NONE
        ) -> None:
            elements = resource.get(name) or []
            base = {k: v for k, v in resource.items() if k != name and not _replaced(k, replaced)}
            for index, element in enumerate(elements):
                if index not in skip:  # skipped: quarantined by the caller (a modifierExtension on the element)
                    add({**base, **element}, source_file, f"{row}/{name}/{index}", urn_ids)
            self.extra += len(elements) - 1

        return emit

    def add(
        self, resource: dict, source_file: str, row: str, urn_ids: Mapping[str, str], skip: Set[int] = _NONE
    ) -> None:
        """Add the resource's row (with ``each``: its elements' rows, except the positions in ``skip``)."""
        if skip:
            self.add_row(resource, source_file, row, urn_ids, skip)
        else:
            self.add_row(resource, source_file, row, urn_ids)
        if len(self.rows) >= BATCH_SIZE:
            self.flush()

    def type_problem(self, resource: dict, urn_ids: Mapping[str, str]) -> _Rejected | None:
        """A value that does not fit its typed column ("5.4" for a decimal, which the lenient R4B models
        accept) -- checked in "full" mode so it is rejected, not turned into a silent null."""
        for name, path in self.paths:
            wanted = _PYTHON_TYPES.get(path.dtype)
            if wanted is None:
                continue
            value = path.evaluate(resource, urn_ids)
            if value is not None and (type(value) not in wanted):
                return _Rejected(
                    path.expression,
                    value,
                    f"column '{name}' needs a FHIR {path.result_type.primitive} "
                    f"({'JSON true/false' if path.dtype == pl.Boolean else 'a JSON number'}), got "
                    f"{type(value).__name__} {value!r}; fix the element in the export",
                    row=_row_id(resource),
                )
        return None

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        """Append rows extracted elsewhere (a worker process)."""
        self.rows.extend(rows)
        if len(self.rows) >= BATCH_SIZE:
            self.flush()

    def flush(self) -> None:
        if 0 < len(self.rows) < SMALL_BATCH:  # one constructor call: most of the cost of a small frame
            self._keep(_frame_from_rows(self.rows, self.schema))
        elif self.rows:
            columns = zip(*self.rows, strict=True)
            self._keep(
                pl.DataFrame(
                    [
                        pl.Series(name, list(column), dtype=dtype, strict=True)
                        for (name, dtype), column in zip(self.schema.items(), columns, strict=True)
                    ]
                )
            )
        self._reset()

    def _keep(self, frame: pl.DataFrame) -> None:
        if self.on_frame is None:
            self.frames.append(frame)
        else:
            self.on_frame(frame)

    def frame(self) -> pl.DataFrame:
        self.flush()
        if not self.frames:
            return pl.DataFrame(schema=self.schema)
        return pl.concat(self.frames, how="vertical") if len(self.frames) > 1 else self.frames[0]


def _frame_from_rows(rows: list[tuple[Any, ...]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """A frame of ``rows`` with ``schema``. ``pl.DataFrame(rows, orient="row")`` spends ~0.2 ms in Python
    normalising the schema around polars' row constructor, then casts columns whose type differs (none
    here: the constructor is given every column's type) -- most of reading a small file (a run over the
    HL7 examples reads 14 files of 16 resources). The row constructor is called directly when this polars
    has it (same frame: tests/harmonize/test_fhir_fast_paths.py), else the public constructor."""
    if _PY_DATA_FRAME is None:
        return pl.DataFrame(rows, schema=schema, orient="row")
    return pl.DataFrame._from_pydf(_PY_DATA_FRAME.from_rows(rows, schema=schema, infer_schema_length=100))


def _row_constructor() -> Any:
    """polars' internal row-wise frame constructor (``polars._plr.PyDataFrame``), or None."""
    try:
        return importlib.import_module("polars._plr").PyDataFrame
    except (ImportError, AttributeError):
        return None


_PY_DATA_FRAME = _row_constructor()


def _replaced(key: str, replaced: tuple[str, ...]) -> bool:
    """``key`` is one of ``replaced``, or a choice-type form of one (``value`` -> valueQuantity, valueString...)."""
    return any(key == r or (key.startswith(r) and key[len(r) : len(r) + 1].isupper()) for r in replaced)


class _Rejects:
    def __init__(self) -> None:
        self.rows: dict[str, list[str]] = {name: [] for name in REJECT_SCHEMA}

    def add(self, source_file: str, source_row: str, field: str, value: str, reason: str) -> None:
        self.rows["source_file"].append(source_file)
        self.rows["source_row"].append(source_row)
        self.rows["field"].append(field)
        self.rows["value"].append(value[:VALUE_LIMIT])
        self.rows["reason"].append(reason)

    def frame(self) -> pl.DataFrame:
        if not self.rows["source_row"]:  # the usual case
            return empty_rejects()
        return _frame_from_rows(list(zip(*self.rows.values(), strict=True)), _REJECT_TYPES)


_REJECT_TYPES: dict[str, pl.DataType] = {name: pl.String() for name in REJECT_SCHEMA}


def iter_ndjson(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for each record of an NDJSON file; ``None`` marks a blank line inside the
    file (reported, because a record may have been lost there). Blank lines at the end are ignored."""
    blanks: list[int] = []
    with _open(path) as handle, _corrupt_archive(path):
        for number, line in enumerate(handle, 1):
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line or line.isspace():
                blanks.append(number)
                continue
            if blanks:
                yield from ((blank, None) for blank in blanks)
                blanks.clear()
            yield number, line


@contextlib.contextmanager
def _corrupt_archive(path: Path) -> Iterator[None]:
    """A truncated or corrupt ``.gz`` is a clear SourceError, not an EOFError (which click reports as "Aborted")."""
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise SourceError(
            f"cannot decompress: {error}; the file is truncated or corrupt",
            where=path.name,
            fix="copy or export the file again (gzip -t checks it)",
        ) from None


def _open(path: Path) -> IO[bytes] | gzip.GzipFile:
    """Binary reader with a large buffer; ``.gz`` files (common for bulk exports) are decompressed."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    size = path.stat().st_size  # a small file gets a small buffer: allocating 1 MiB costs more than reading it
    return path.open("rb", buffering=min(1 << 20, max(size, io.DEFAULT_BUFFER_SIZE)))


def _require_files(files: Iterable[Path]) -> list[Path]:
    paths = [Path(f) for f in files]
    for path in paths:
        if not path.is_file():
            raise SourceError(
                "FHIR source file not found",
                where=str(path),
                fix="check the file names and the --source directory in the mapping",
            )
    return paths


def _relative(path: Path, base: str) -> str:
    """``path`` (symlinks resolved) relative to the already resolved ``base``: the lineage's file name."""
    text = os.fspath(path)
    if os.path.islink(text):
        real = os.path.realpath(text)
    else:  # one lstat: the file's folder is resolved once per process, not once per source and file
        real = os.path.join(_real_folder(os.path.dirname(os.path.abspath(text))), os.path.basename(text))
    relative = os.path.relpath(real, base)
    return relative if os.sep == "/" else Path(relative).as_posix()


@lru_cache(maxsize=1024)
def _real_folder(folder: str) -> str:
    """``folder`` with symlinks resolved, remembered: Path.resolve costs ~0.1 ms (an lstat and Python work
    per component), which a run over many small files (the HL7 examples: 14 files, 16 resources each)
    paid twice per file. Only names lineage; which files may be read is decided in run/files.py."""
    return os.path.realpath(folder)


def _summarise(problems: list[StructuralProblem]) -> tuple[str, str, str]:
    first = problems[0]
    reason = first.reason
    if len(problems) > 1:
        others = ", ".join(p.field or "(resource)" for p in problems[1:6])
        reason += f" (+{len(problems) - 1} more: {others})"
    return first.field, first.value, reason


class _Reader:
    """State of one read_fhir call: checks, duplicate ids, accepted columns and rejects."""

    def __init__(
        self,
        resource_type: str,
        paths: Mapping[str, CompiledPath],
        validation: str,
        *,
        in_worker: bool = False,
        on_frame: Callable[[pl.DataFrame], None] | None = None,
        each: Each | None = None,
        understood: frozenset[str] = frozenset(),
    ) -> None:
        self.understood = understood  # modifierExtension URLs the mapping declares it understands
        self.in_worker = in_worker  # duplicates are checked by the parent, which sees every chunk in order
        self.wheres: list[str] = []
        self.resource_type = resource_type
        self.validation = validation
        self.model = resource_model(resource_type)
        self.checker = structural_validator(resource_type)
        self.columns = _Columns(paths, on_frame, each)
        self.scope = _ModifierScope(paths.values(), each)  # which records a modifierExtension changes
        self.rejects = _Rejects()
        self.first_seen: dict[str, str | int] = {}  # id -> "file:line", or a place (see read_lines)
        self.files: list[str] = []  # NDJSON files read so far, for the places in first_seen
        self.blanks: list[int] = []  # blank lines not yet reported (see read_record)
        self.seen = 0

    # -- checks -----------------------------------------------------------------------------------
    def parse_line(self, line: bytes) -> dict:
        """A resource from one NDJSON line, or _Rejected."""
        if self.validation == "structural":
            try:
                return self.checker.parse_json(line)
            except pydantic_core.ValidationError as error:
                raw = self.loads(line)  # raises _Rejected for non-JSON / non-object / wrong type
                raise self.rejected(raw, self.checker.explain(error)) from None
        return self.check(self.loads(line))

    def loads(self, line: bytes) -> dict:
        try:
            raw = json.loads(line)
        except UnicodeDecodeError as error:
            raise _Rejected("", line, f"line is not UTF-8 ({error.reason}); re-export the file as UTF-8") from None
        except ValueError as error:
            raise _Rejected(
                "", line, f"invalid JSON ({error}); the line is truncated or not JSON - re-export this resource"
            ) from None
        self.check_envelope(raw)
        return raw

    def check_envelope(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise _Rejected(
                "",
                raw,
                f"line is a JSON {type(raw).__name__}, not a resource object; NDJSON needs one resource object per line",
            )
        found = raw.get("resourceType")
        if found is None:
            raise _Rejected("resourceType", "", "resource has no resourceType; add it", row=_row_id(raw))
        if found != self.resource_type:
            raise _Rejected(
                "resourceType",
                found,
                f"resourceType '{found}' in a source declared as {self.resource_type}; "
                f"move it to the {found} file or declare a {found} source",
                row=_row_id(raw),
            )

    def check(self, raw: dict) -> dict:
        """Validate an already-parsed resource of the right type at the configured level."""
        if self.validation == "structural":
            problems = self.checker.problems(raw)
            if problems:
                raise self.rejected(raw, problems)
            return raw
        try:
            self.model.model_validate(raw)
        except pydantic.ValidationError as error:
            raise self.rejected(raw, [_model_problem(item) for item in error.errors(include_url=False)]) from None
        except (ValueError, TypeError, KeyError, AttributeError) as error:  # e.g. an unknown contained type
            problem = StructuralProblem(
                "", "", f"the R4B model cannot read this resource ({error!r}); fix the resource"
            )
            raise self.rejected(raw, [problem]) from None
        return raw

    def rejected(self, raw: dict, problems: list[StructuralProblem]) -> _Rejected:
        field, value, reason = _summarise(problems)
        return _Rejected(field, value, reason, row=_row_id(raw))

    # -- bookkeeping ------------------------------------------------------------------------------
    def accept(self, resource: dict, source_file: str, where: str, urn_ids: Mapping[str, str]) -> None:
        resource_id = resource.get("id")
        if not isinstance(resource_id, str) or not resource_id:
            raise _Rejected("id", "", "resource has no id; give every resource a logical id in the export")
        skipped: dict[int, _Rejected] = {}  # with each: records (element positions) a modifierExtension changes
        for element, path, url in unknown_modifiers(resource, self.understood):
            position = self.scope.records(element)
            if position == _ModifierScope.ALL:
                raise _modifier_rejected(self.resource_type, path, url, resource_id, _element_text(element))
            if position is not None and position not in skipped:
                row = f"{resource_id}/{_element_text(element[:1])}/{position}"
                skipped[position] = _modifier_rejected(self.resource_type, path, url, row, _element_text(element))
        if self.validation == "full":
            problem = self.columns.type_problem(resource, urn_ids)
            if problem is not None:
                raise problem
        if self.in_worker:
            self.wheres.append(where)
        else:
            first = self.first_seen.get(resource_id)
            if first is not None:
                raise _duplicate(resource_id, self.where_of(first), where)
            self.first_seen[resource_id] = where
        for problem in skipped.values():
            self.reject(source_file, where, problem)
        self.columns.add(resource, source_file, resource_id, urn_ids, frozenset(skipped))

    def reject(self, source_file: str, where: str, problem: _Rejected) -> None:
        self.rejects.add(source_file, problem.row or where, problem.field, problem.value, problem.reason)

    # -- formats ----------------------------------------------------------------------------------
    def read_ndjson(self, path: Path, source_file: str) -> None:
        self.files.append(source_file)
        with _open(path) as handle, _corrupt_archive(path):
            self.read_lines(source_file, enumerate(handle, 1), (len(self.files) - 1) << PLACE_BITS)

    def read_lines(self, source_file: str, records: Iterable[tuple[int, bytes | None]], place: int = 0) -> None:
        """The hot loop: a valid line with a new id goes straight to the columns; anything else (blank
        lines, a byte-order mark, invalid resources, duplicates) takes read_record.

        ``records`` are (line number, line) -- raw lines of a file, or iter_ndjson's records (None for
        a blank line) in a worker. ``place`` + line number is what first_seen remembers for an id (see
        where_of): cheaper than a "file:line" text for every line, which only a duplicate needs."""
        self.blanks.clear()
        if self.validation != "structural":
            for number, line in records:
                self.read_record(source_file, number, line)
            self.blanks.clear()  # blanks still held are the file's last lines: trailing blanks are fine
            return
        full, rules_hold = self.checker.parse_elements, self.checker.root_rules
        special = specialisation(self.resource_type)
        validate, learning, misses = special.parse or full, special.learning, 0
        check_rules = rules_hold if validate is full else None  # a specialised validator tests them itself
        first_seen = self.first_seen
        wheres = self.wheres if self.in_worker else None
        columns, blanks, batch = self.columns, self.blanks, BATCH_SIZE
        rows, add = columns.rows, columns.add_valid_row
        accepted = 0
        for number, line in records:
            if line is None:  # a blank line in a worker's records: read_record holds it back
                self.read_record(source_file, number, line)
                continue
            try:
                resource = validate(line)
            except pydantic_core.ValidationError:
                if validate is full:
                    self.read_record(source_file, number, line)
                    continue
                try:  # the specialised validator refused it: the full one decides
                    resource = full(line)
                except pydantic_core.ValidationError:
                    self.read_record(source_file, number, line)
                    continue
                if rules_hold is not None and not rules_hold(resource):
                    self.read_record(source_file, number, line)
                    continue
                special.note(resource)  # valid, with elements not seen before
                misses += 1
                if misses >= MISSES_BEFORE_REBUILD:
                    special.build()
                    validate, misses = special.parse or full, 0
                    check_rules = rules_hold if validate is full else None
            if learning:
                special.note(resource)
                if special.examples >= LEARN_FROM:
                    special.build()
                    validate, learning = special.parse or full, False
                    check_rules = rules_hold if validate is full else None
            resource_id = resource.get("id")  # checked: a non-empty id string, or None
            if (
                resource_id is None
                or (check_rules is not None and not check_rules(resource))
                or b'"modifierExtension"' in line  # accept() decides (unknown_modifiers)
            ):
                self.read_record(source_file, number, line)
                continue
            if wheres is None:
                here = place + number
                if first_seen.setdefault(resource_id, here) is not here:  # a duplicate: read_line reports it
                    self.read_record(source_file, number, line)
                    continue
            else:
                wheres.append(f"{source_file}:{number}")
            if blanks:
                self.report_blanks(source_file)
            accepted += 1
            add(resource, source_file, resource_id, _NO_URNS)
            if len(rows) >= batch and wheres is None:
                columns.flush()
                rows, add = columns.rows, columns.add_valid_row
        self.seen += accepted
        blanks.clear()
        if (learning and special.examples >= LEARN_FROM // 10) or misses:
            special.build()  # for the next file: what this one taught (not after a handful of resources)

    def read_record(self, source_file: str, number: int, line: bytes | None) -> None:
        """A line the hot loop did not accept. A blank line is held back and reported only when a
        resource follows it (blank lines at the end of a file are harmless)."""
        if line is not None:
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line or line.isspace():
                self.blanks.append(number)
                return
        self.report_blanks(source_file)
        self.read_line(source_file, number, line)

    def report_blanks(self, source_file: str) -> None:
        blanks = list(self.blanks)
        self.blanks.clear()
        for number in blanks:
            self.read_line(source_file, number, None)

    def where_of(self, place: str | int) -> str:
        """The "file:line" text of a first_seen entry (the hot loop stores file index and line as one int)."""
        if isinstance(place, str):
            return place
        return f"{self.files[place >> PLACE_BITS]}:{place & ((1 << PLACE_BITS) - 1)}"

    def read_line(self, source_file: str, number: int, line: bytes | None) -> None:
        self.seen += 1
        where = f"{source_file}:{number}"
        try:
            if line is None:
                raise _Rejected("", "", "blank line inside NDJSON; remove it (one resource per line, no empty lines)")
            self.accept(self.parse_line(line), source_file, where, {})
        except _Rejected as problem:
            self.reject(source_file, where, problem)

    def read_ndjson_parallel(
        self, paths: list[tuple[Path, str]], workers: int, columns: Mapping[str, str], understood: frozenset[str]
    ) -> None:
        """Validate and extract chunks of lines in worker processes; merge them in file order here.

        At most two chunks per worker are in flight, so memory stays bounded however big the files are.
        """
        # fork: workers inherit the compiled validators and need no importable __main__ (notebooks, scripts);
        # they use no threads and no polars, so forking from a process that has them is safe here.
        context = multiprocessing.get_context("fork")
        init = (self.resource_type, dict(columns), self.validation, understood)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=init) as pool:
            pending: deque[Future] = deque()
            for source_file, chunk in _chunks(paths):
                pending.append(pool.submit(_worker_chunk, source_file, chunk))
                if len(pending) >= 2 * workers:
                    self.merge(*pending.popleft().result())
            while pending:
                self.merge(*pending.popleft().result())

    def merge(
        self, columns: list[tuple[Any, ...]], wheres: list[str], rejects: dict[str, list[str]], seen: int
    ) -> None:
        """Add one worker chunk: its rejects, then its rows minus ids already seen (duplicates)."""
        rows = list(zip(*columns, strict=True))
        self.seen += seen
        for name, column in rejects.items():
            self.rejects.rows[name].extend(column)
        kept: list[tuple[Any, ...]] = []
        for row, where in zip(rows, wheres, strict=True):
            resource_id = row[-1]  # rows end with (_source_file, _source_row)
            first = self.first_seen.get(resource_id)
            if first is None:
                self.first_seen[resource_id] = where
                kept.append(row)
            else:
                self.reject(row[-2], where, _duplicate(resource_id, self.where_of(first), where))
        self.columns.extend(kept)

    def read_bundle(self, path: Path, source_file: str) -> None:
        try:
            bundle = _load_bundle(path)
        except _Rejected as problem:
            self.seen += 1
            self.reject(source_file, source_file, problem)
            return
        entries = bundle.get("entry") or []
        urn_ids = _urn_ids(entries)
        not_current = history_not_current(bundle)
        for index, entry in enumerate(entries):
            resource = _entry_resource(entry)
            if resource is None or resource.get("resourceType") != self.resource_type:
                continue
            self.seen += 1
            where = f"{source_file}:entry[{index}]"
            if index in not_current:  # a history Bundle's older version, or a version of a deleted resource
                self.rejects.add(source_file, where, *not_current[index])
                continue
            try:
                resource = _with_bundle_id(resource, entry.get("fullUrl"))
                self.accept(self.check(resource), source_file, where, urn_ids)
            except _Rejected as problem:
                self.reject(source_file, where, problem)


def history_not_current(bundle: dict) -> dict[int, tuple[str, str, str]]:
    """entry index -> (field, value, reason) for each entry of a history Bundle that is not its resource's current
    state, which nothing loads: every entry of a resource whose newest entry is a DELETE, and the older versions
    of the others (whose newest entry is read as usual). Empty for any other Bundle type.

    FHIR R4 (http.html#history): a history Bundle lists versions newest first, and a DELETE entry records the
    resource's deletion at that point. Entries are grouped by resource type and id (the resource's, or a
    DELETE's request.url); within a resource they are ordered by meta.versionId (response.etag ``W/"n"`` for a
    DELETE) when every entry has a numeric one, else by meta.lastUpdated (response.lastModified) when every entry
    has one, else by their order in the Bundle."""
    if bundle.get("type") != "history":
        return {}
    versions: dict[tuple[str, str], list[tuple[int, dict, dict | None]]] = {}
    for index, entry in enumerate(bundle.get("entry") or []):
        if not isinstance(entry, dict):
            continue
        resource = _entry_resource(entry)
        key = _history_key(entry, resource)
        if key is not None:
            versions.setdefault(key, []).append((index, entry, resource))
    not_current: dict[int, tuple[str, str, str]] = {}
    for (kind, resource_id), found in versions.items():
        if len(found) == 1 and found[0][2] is not None:
            continue
        ordered = _newest_first(found)
        newest, _newest_entry, newest_resource = ordered[0]
        name = f"{kind}/{resource_id}"
        deleted = newest_resource is None  # the newest entry is a DELETE
        if deleted:
            not_current[newest] = (
                "entry.request",
                name,
                f"deleted in this history: {name} is deleted here (its newest entry), so none of its versions is "
                "loaded (not an error)",
            )
        for index, _entry, resource in ordered[1:]:
            what = "version" if resource is not None else "deletion"
            not_current[index] = (
                "id",
                name,
                f"deleted in this history: entry[{newest}] deletes {name} after this {what}, so it is not loaded "
                "(not an error)"
                if deleted
                else f"an older version (history): {name}'s newest version is entry[{newest}], which is loaded; "
                f"this {what} is superseded (not an error)",
            )
    return not_current


def _history_key(entry: dict, resource: dict | None) -> tuple[str, str] | None:
    """(resource type, id) of a history entry: its resource's, or for a DELETE the request.url's last two parts."""
    if resource is not None:
        kind, resource_id = resource.get("resourceType"), _with_bundle_id(resource, entry.get("fullUrl")).get("id")
        if isinstance(kind, str) and isinstance(resource_id, str) and resource_id:
            return kind, resource_id
        return None
    request = entry.get("request")
    if not isinstance(request, dict) or request.get("method") != "DELETE" or not isinstance(request.get("url"), str):
        return None
    parts = request["url"].split("?", 1)[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return (parts[-2], parts[-1]) if len(parts) >= 2 and parts[-2] and parts[-1] else None


def _newest_first(found: list[tuple[int, dict, dict | None]]) -> list[tuple[int, dict, dict | None]]:
    """The entries of one resource, newest first (see :func:`history_not_current`)."""
    versions = [_version_of(entry, resource) for _index, entry, resource in found]
    version_ids = [version[0] if version is not None else "" for version in versions]
    stamps = [version[1] if version is not None else None for version in versions]
    keys: list[int] | list[dt.datetime]
    if all(version_id.isdigit() for version_id in version_ids):
        keys = [int(version_id) for version_id in version_ids]
    elif all(stamp is not None for stamp in stamps):
        keys = [stamp for stamp in stamps if stamp is not None]
    else:
        return found  # the Bundle's order: newest first
    return [found[i] for i in sorted(range(len(found)), key=lambda i: keys[i], reverse=True)]  # stable for ties


def _version_of(entry: dict, resource: dict | None) -> tuple[str, dt.datetime | None] | None:
    """(versionId, lastUpdated) of a history entry: the resource's meta, or a DELETE's response (etag W/"n",
    lastModified); versionId "" when absent. None when it has neither."""
    if resource is not None:
        meta = resource.get("meta")
        version, updated = (meta.get("versionId"), meta.get("lastUpdated")) if isinstance(meta, dict) else (None, None)
    else:
        response = entry.get("response")
        etag, updated = (
            (response.get("etag"), response.get("lastModified")) if isinstance(response, dict) else (None, None)
        )
        version = etag.removeprefix("W/").strip('"') if isinstance(etag, str) else None
    stamp = _instant(updated)
    if not isinstance(version, str) and stamp is None:
        return None
    return (version if isinstance(version, str) else ""), stamp


def _instant(value: Any) -> dt.datetime | None:
    """A FHIR instant as an aware datetime (comparable across time zones), or None."""
    if not isinstance(value, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo is not None else None


def _duplicate(resource_id: str, first: str, where: str) -> _Rejected:
    return _Rejected(
        "id",
        resource_id,
        f"duplicate id, first seen at {first}; remove the repeated resource or give it its own id",
        row=where,
    )


Element = tuple[str | int, ...]  # an element path as keys and list positions: ("component", 1)


def unknown_modifiers(
    resource: Any, understood: frozenset[str] = frozenset(), path: Element = ()
) -> Iterator[tuple[Element, str, str]]:
    """(element, path text, url) of each modifierExtension in ``resource`` whose url is not ``understood``, in
    document order: ``element`` is the element that holds it (``()`` for the resource itself, ``("component", 1)``
    for Observation.component[1], ``("contained", 0)`` for a contained resource), the text its reject field
    (``component[1].modifierExtension``)."""
    if isinstance(resource, dict):
        for key, value in resource.items():
            if key == "modifierExtension" and isinstance(value, list):
                for index, extension in enumerate(value):
                    url = extension.get("url") if isinstance(extension, dict) else None
                    if url not in understood:
                        here = (*path, key) if len(value) == 1 else (*path, key, index)
                        yield path, _element_text(here), str(url)
            elif isinstance(value, dict | list):
                yield from unknown_modifiers(value, understood, (*path, key))
    elif isinstance(resource, list):
        for index, item in enumerate(resource):
            yield from unknown_modifiers(item, understood, (*path, index))


def _element_text(element: Element) -> str:
    text = ""
    for part in element:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _ModifierScope:
    """Which records a modifierExtension changes (FHIR R4 Extensibility, BackboneElement.modifierExtension: the
    meaning of the element that holds it and of its descendants; only DomainResource.modifierExtension changes
    the whole resource).

    * at the resource, or anywhere in a contained resource (which the resource uses through its references):
      every record of the resource;
    * on an element: the records whose columns read a path at or under it (or above it: a where() over the list);
      with ``each``, an extension on the element's own item (``component[1]``) only that item's record, and one
      on an element of the resource that the items replace (``referenceRange``) none of them."""

    ALL = -1

    def __init__(self, paths: Iterable[CompiledPath], each: Each | None) -> None:
        self.read = frozenset(path for compiled in paths for path in compiled.read_paths())
        self.each = each

    def reads(self, names: tuple[str | int, ...]) -> bool:
        return any(path[: len(names)] == names[: len(path)] for path in self.read)

    def records(self, element: Element) -> int | None:
        """ALL (every record), a position of ``each.element`` (that record only) or None (no record)."""
        if not element or element[0] == "contained":
            return self.ALL
        names = tuple(part for part in element if isinstance(part, str))
        each = self.each
        if each is None:
            return self.ALL if self.reads(names) else None
        if names[0] == each.element:
            position = element[1] if len(element) > 1 and isinstance(element[1], int) else self.ALL
            return position if len(names) == 1 or self.reads(names[1:]) else None
        if _replaced(names[0], tuple(each.replaces)):
            return None  # the items' own element stands in for the resource's
        return self.ALL if self.reads(names) else None


def _modifier_rejected(resource_type: str, path: str, url: str, row: str | None, element: str = "") -> _Rejected:
    what = "the resource" if not element else f"{resource_type}.{element}, which this source reads,"
    return _Rejected(
        path,
        url,
        f"unknown modifierExtension '{url}' at {resource_type}.{path}: it may change what {what} means, "
        "so it is not loaded as if the extension were absent (FHIR R4 Extensibility); have the export drop or "
        "resolve it, or list the url under fhir_understood_modifier_extensions when the mapping handles it",
        row=row,
    )


def _chunks(paths: list[tuple[Path, str]]) -> Iterator[tuple[str, list[tuple[int, bytes | None]]]]:
    for path, source_file in paths:
        chunk: list[tuple[int, bytes | None]] = []
        for record in iter_ndjson(path):
            chunk.append(record)
            if len(chunk) >= CHUNK_LINES:
                yield source_file, chunk
                chunk = []
        if chunk:
            yield source_file, chunk


_WORKER: _Reader | None = None


def _worker_init(resource_type: str, columns: dict[str, str], validation: str, understood: frozenset[str]) -> None:
    global _WORKER
    paths = {name: compile_path(expression, resource_type) for name, expression in columns.items()}
    _WORKER = _Reader(resource_type, paths, validation, in_worker=True, understood=understood)


def _worker_chunk(
    source_file: str, chunk: list[tuple[int, bytes | None]]
) -> tuple[list[tuple[Any, ...]], list[str], dict[str, list[str]], int]:
    """Check and extract one chunk of lines in a worker: (columns, "file:line" of each row, rejects, seen)."""
    reader = _WORKER
    assert reader is not None
    reader.seen = 0
    reader.wheres = []
    reader.rejects = _Rejects()
    reader.columns._reset()
    reader.read_lines(source_file, chunk)
    # columns, not row tuples: a few long lists pickle much faster than thousands of small tuples
    return list(zip(*reader.columns.rows, strict=True)), reader.wheres, reader.rejects.rows, reader.seen


def _row_id(raw: Any) -> str | None:
    resource_id = raw.get("id") if isinstance(raw, dict) else None
    return resource_id if isinstance(resource_id, str) and resource_id else None


def _model_problem(item: Any) -> StructuralProblem:
    loc = [part for part in item["loc"] if part not in ("__root__",)]
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + str(part)
    value = item.get("input")
    shown = value if isinstance(value, str) else _text(value)
    return StructuralProblem(path, shown[:VALUE_LIMIT], f"{item['msg']}; fix the element (fhir.resources R4B model)")


def _load_bundle(path: Path) -> dict:
    """The Bundle in ``path``. A file that cannot be read whole stops the run (SourceError, like a corrupt .gz
    NDJSON file): unlike a bad NDJSON line, it holds an unknown number of records, so none can be accounted."""
    with _corrupt_archive(path):
        with _open(path) as handle:
            text = handle.read()
    try:
        bundle = json.loads(text)
    except UnicodeDecodeError as error:
        raise SourceError(
            f"Bundle file is not UTF-8 ({error.reason} at byte {error.start}); its records cannot be counted",
            where=path.name,
            fix="export the file again as UTF-8",
        ) from None
    except json.JSONDecodeError as error:
        raise SourceError(
            f"Bundle file is not valid JSON: {error.msg} at line {error.lineno} column {error.colno} "
            f"(character {error.pos} of {len(text)}); the file is truncated or corrupt and its records cannot be "
            "counted",
            where=path.name,
            fix="copy or export the file again (python -m json.tool checks it)",
        ) from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        found = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise _Rejected("resourceType", found, "file is not a FHIR Bundle; declare it as ndjson or fix the export")
    if not isinstance(bundle.get("entry", []), list):
        raise _Rejected("entry", bundle.get("entry"), "Bundle.entry must be a JSON array of entries")
    return bundle


def _urn_ids(entries: list[Any]) -> dict[str, str]:
    """fullUrl -> logical id of each entry, so 'urn:uuid:...' references resolve inside the Bundle."""
    mapping: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("fullUrl"), str):
            continue
        resource = entry.get("resource")
        resource_id = resource.get("id") if isinstance(resource, dict) else None
        full_url = entry["fullUrl"]
        if isinstance(resource_id, str) and resource_id:
            mapping[full_url] = resource_id
        elif full_url.startswith("urn:uuid:"):
            mapping[full_url] = full_url[len("urn:uuid:") :]
    return mapping


def _with_bundle_id(resource: dict, full_url: Any) -> dict:
    """Transaction Bundles often omit ids and name entries by 'urn:uuid:<uuid>': use that uuid as the id."""
    if "id" not in resource and isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
        return {**resource, "id": full_url[len("urn:uuid:") :]}
    return resource


def _compile_columns(name: str, resource_type: str, columns: Mapping[str, str]) -> dict[str, CompiledPath]:
    compiled: dict[str, CompiledPath] = {}
    for column, expression in columns.items():
        if column in ("_source_file", "_source_row"):
            raise MappingError(
                f"column name '{column}' is reserved for lineage", where=f"source {name}", fix="rename the column"
            )
        try:
            compiled[column] = compile_path(expression, resource_type)
        except MappingError as error:
            raise MappingError(error.message, where=f"source {name}, column {column}", fix=error.fix) from None
    return compiled


def read_fhir(
    name: str,
    files: list[Path],
    base_dir: Path,
    resource_type: str,
    columns: Mapping[str, str],
    *,
    fmt: Literal["ndjson", "bundle"],
    validation: Literal["structural", "full"] = "structural",
    workers: int = 1,
    on_frame: Callable[[pl.DataFrame], None] | None = None,
    each: Each | None = None,
    understood: Iterable[str] = (),
) -> SourceBatch:
    """Read the resources of ``resource_type`` from NDJSON files or Bundles into a SourceBatch.

    ``columns`` maps output column -> path expression (:mod:`fedomop.harmonize.sources.fhir.path`).
    Raises MappingError for a bad expression, format or resource type (before reading any data) and
    SourceError for a missing file; everything wrong *inside* the files becomes a reject row.

    ``workers``: NDJSON only -- with N > 1, chunks of CHUNK_LINES lines are checked and extracted in N
    forked worker processes and merged here in file order (for multi-GB exports on many cores). The result
    is the same as with 1, except that a duplicate id's reject row comes after the other rejects of its chunk.

    ``on_frame``: accepted rows are handed to it as frames of about BATCH_SIZE rows, in file order, as
    they are read, instead of being kept; the returned batch then has an empty frame (with the columns'
    schema) and its rejects and ``seen`` as usual. What stays in memory is one id per resource (for the
    duplicate check), not the columns.

    ``understood``: modifierExtension URLs the caller handles. Any other modifierExtension rejects the records it
    changes, naming the URL and its path: all of the resource's for one on the resource or in a contained
    resource; for one on an element, only records whose columns read at or under it (see :class:`_ModifierScope`;
    with ``each``, one on an item changes that item's record only).

    A Bundle file that cannot be read whole (not JSON, not UTF-8, a corrupt .gz) raises SourceError: how many
    records it held is unknown, so it cannot be accounted for record by record.
    """
    if fmt not in FORMATS:
        raise MappingError(f"unknown FHIR format {fmt!r}", where=f"source {name}", fix=f"use one of {FORMATS}")
    if validation not in VALIDATIONS:
        raise MappingError(
            f"unknown FHIR validation {validation!r}", where=f"source {name}", fix=f"use one of {VALIDATIONS}"
        )
    try:
        resource_model(resource_type)
    except SourceError as error:
        raise MappingError(error.message, where=f"source {name}", fix=error.fix) from None
    paths = _compile_columns(name, resource_type, columns)
    known = frozenset(understood)
    reader = _Reader(resource_type, paths, validation, on_frame=on_frame, each=each, understood=known)
    base = _real_folder(os.path.abspath(base_dir))
    sources = [(path, _relative(path, base)) for path in _require_files(files)]
    if not isinstance(workers, int) or workers < 1:
        raise MappingError(f"workers must be a whole number >= 1, got {workers!r}", where=f"source {name}")
    processes = workers if fmt == "ndjson" and each is None else 1  # elements are expanded in this process
    with _collector_paused():
        if processes > 1:
            reader.read_ndjson_parallel(sources, processes, columns, known)
        for path, source_file in sources if processes == 1 else []:
            if fmt == "ndjson":
                reader.read_ndjson(path, source_file)
            else:
                reader.read_bundle(path, source_file)
        frame = reader.columns.frame()
    return SourceBatch(name=name, frame=frame, rejects=reader.rejects.frame(), seen=reader.seen + reader.columns.extra)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while reading. The reader keeps up to BATCH_SIZE row
    tuples and an id per resource -- millions of objects without reference cycles -- which the
    collector would otherwise scan again and again (about 7% of the read on site-B-style NDJSON).
    Memory is still freed as usual (reference counting); the previous setting is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def count_fhir_resources(files: Iterable[Path], fmt: Literal["ndjson", "bundle"]) -> dict[str, int]:
    """resourceType -> number of records in ``files``, to account for every resource a site exported.

    Records that are not a resource are counted as ``(invalid)`` (unparseable line or Bundle, no
    resourceType) and ``(blank)`` (an empty line inside an NDJSON file), matching what read_fhir rejects.
    """
    counts: Counter[str] = Counter()
    for path in _require_files(files):
        if fmt == "ndjson":
            for _number, line in iter_ndjson(path):
                counts[_kind(line)] += 1
            continue
        try:
            bundle = _load_bundle(path)
        except _Rejected:
            counts["(invalid)"] += 1
            continue
        for entry in bundle.get("entry") or []:
            resource = _entry_resource(entry)
            if resource is not None:
                kind = resource.get("resourceType")
                counts[kind if isinstance(kind, str) else "(invalid)"] += 1
    return dict(counts)


def _entry_resource(entry: Any) -> dict | None:
    """The data resource of a Bundle entry: None for an entry without a resource object and for a searchset's
    ``search.mode: outcome`` entry (an OperationOutcome about the search, not data; see _entry_not_data)."""
    if not isinstance(entry, dict):
        return None
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        return None
    search = entry.get("search")
    if isinstance(search, dict) and search.get("mode") == "outcome":
        return None
    return resource


def _entry_not_data(entry: Any) -> tuple[str, str, str]:
    """(field, value, reason) for a Bundle entry that holds no data resource (``_entry_resource`` is None)."""
    if not isinstance(entry, dict):
        return "entry", _text(entry), "bundle entry is not a JSON object; fix the export"
    search = entry.get("search")
    if isinstance(search, dict) and search.get("mode") == "outcome":
        kind = entry["resource"].get("resourceType", "")
        return (
            "entry.search.mode",
            str(kind),
            "search outcome entry: the server's messages about the search (search.mode outcome), not data",
        )
    request = entry.get("request")
    method = request.get("method") if isinstance(request, dict) else None
    target = str(request.get("url", "")) if isinstance(request, dict) else ""
    if method == "DELETE":
        return (
            "entry.request",
            target,
            "DELETE request: the entry removes a resource and carries none, so there is nothing to load (not an error)",
        )
    if method in ("GET", "HEAD"):
        return "entry.request", target, f"{method} request: the entry asks for data and carries none (not an error)"
    if isinstance(method, str):
        return (
            "entry.resource",
            target,
            f"{method} request without its resource: the entry is incomplete; export it again with its resource",
        )
    if isinstance(entry.get("response"), dict):
        return "entry.response", "", "response entry without a resource: a server's reply, not data (not an error)"
    return (
        "entry.resource",
        str(entry.get("fullUrl", "")),
        "bundle entry has no resource (only a fullUrl, or resource null): the entry is empty; export it again "
        "with its resource",
    )


def untyped_bundle_entries(files: Iterable[Path], base_dir: Path) -> pl.DataFrame:
    """Reject rows for Bundle entries that no resource-type source can read: an entry without a data resource
    (a request or response only, a search outcome, an empty entry), or a resource without a resourceType. Each is
    accounted (file, ``entry[i]``) with what it is instead of vanishing."""
    rejects = _Rejects()
    base = _real_folder(os.path.abspath(base_dir))
    for path in _require_files(files):
        try:
            bundle = _load_bundle(path)
        except _Rejected:
            continue  # the whole file is rejected by the sources that read it
        source_file = _relative(path, base)
        not_current = history_not_current(bundle)
        for index, entry in enumerate(bundle.get("entry") or []):
            resource = _entry_resource(entry)
            where = f"{source_file}:entry[{index}]"
            if resource is None:
                rejects.add(source_file, where, *(not_current.get(index) or _entry_not_data(entry)))
            elif not isinstance(resource.get("resourceType"), str):
                rejects.add(
                    source_file,
                    where,
                    "resourceType",
                    str(resource.get("id", "")),
                    "bundle entry resource has no resourceType; add it",
                )
    return rejects.frame()


def _kind(line: bytes | None) -> str:
    if line is None:
        return "(blank)"
    try:
        raw = pydantic_core.from_json(line)
    except ValueError:
        return "(invalid)"
    kind = raw.get("resourceType") if isinstance(raw, dict) else None
    return kind if isinstance(kind, str) else "(invalid)"

"""The files a run reads, resolved once before anything is read, and kept inside the folder the user named.

Every source's ``files:`` glob (and every ``fhir_inventory`` glob) is matched here, once per run; planning,
pre-flight checks, chunking and the readers all take the result instead of globbing again. A pattern is
relative to ``--source``: an absolute pattern, a ``..`` step, or a match that resolves (through a symlink)
outside that folder is refused before any byte of it is read, and the error never shows such a file's content.

A source whose files are missing is *absent*: a Bulk Data export has files only for the resource types it
holds, so an absent source counts 0 records and is named in the run summary. ``required: true`` makes it an
error; so does a ``files:`` that names one file (no glob character) unless ``required: false`` says it may be
missing, because a missing named file is a typo or a failed export, not an empty one. A folder where no source
finds a file at all is an error too (a wrong ``--source``).

A Bulk Data ``$export`` manifest (``manifest.json`` in the source folder: ``transactionTime`` and ``output``)
is the export's own list of files: when present, each NDJSON source reads the ``output`` files of its resource
type (the last segment of each ``url``, found in the folder), not what its glob matches, so a stale file from an
earlier export is not read and the ``error`` files (OperationOutcomes) are not data.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlparse

from fedomop.harmonize.ground.errors import MappingError, SourceError
from fedomop.harmonize.mapping.models import Mapping


@dataclass(frozen=True)
class SiteFiles:
    """What one run reads: the files of each source and of each FHIR inventory glob, in a repeatable order."""

    source_dir: Path
    sources: dict[str, list[Path]]
    inventory: list[list[Path]] = field(default_factory=list)  # one list per mapping.fhir_inventory entry
    absent: tuple[str, ...] = ()  # sources with no file (counted as 0 records)
    manifest: Path | None = None  # the Bulk Data manifest the NDJSON files were taken from

    def of(self, name: str) -> list[Path]:
        return self.sources[name]

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.source_dir))

    def read_types(self, mapping: Mapping, fmt: str) -> dict[Path, set[str]]:
        """Each file (resolved) that sources of format ``fmt`` read -> the resource types they read from it."""
        found: dict[Path, set[str]] = {}
        for name, source in mapping.sources.items():
            if source.format == fmt:
                for path in self.sources.get(name, []):
                    found.setdefault(path.resolve(), set()).add(source.resource_type or "")
        return found

    def unread_inventory(self, mapping: Mapping) -> list[str]:
        """Inventory files (``fhir_inventory``) that no source reads: their resources are quarantined, and the
        run summary names them (a renamed ``patients.ndjson`` is otherwise only a count of unknown persons)."""
        unread: list[str] = []
        for item, item_files in zip(mapping.fhir_inventory, self.inventory, strict=True):
            read = self.read_types(mapping, item.format)
            unread.extend(self.relative(path) for path in item_files if path.resolve() not in read)
        return sorted(set(unread))


def check_pattern(pattern: str, where: str) -> None:
    """A mapping's file pattern must stay inside the source folder: relative, and without ``..`` steps."""
    posix, windows = PurePosixPath(pattern), PureWindowsPath(pattern)
    if posix.is_absolute() or windows.is_absolute() or windows.drive:
        raise MappingError(
            f"the file pattern {pattern!r} is an absolute path",
            where=where,
            fix="write it relative to the source folder (--source), e.g. 'patients*.csv'",
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise MappingError(
            f"the file pattern {pattern!r} steps out of the source folder ('..')",
            where=where,
            fix="put the files under the source folder (--source) and name them relative to it",
        )


def inside(path: Path, folder: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies in ``folder`` (symlinks resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def match_files(source_dir: Path, pattern: str, where: str) -> list[Path]:
    """Files matching a glob under ``source_dir``, sorted so runs are repeatable; each checked to stay inside."""
    check_pattern(pattern, where)
    files = sorted(p for p in source_dir.glob(pattern) if p.is_file())
    for path in files:
        if not inside(path, source_dir):
            raise MappingError(
                f"{path.relative_to(source_dir)} matches {pattern!r} but links to a file outside the source folder",
                where=where,
                fix="copy the file into the source folder instead of linking to it",
            )
    return files


def contained_file(folder: Path, name: str, where: str) -> Path:
    """A single file named relative to ``folder`` (e.g. the site's source_to_concept_map), kept inside it."""
    check_pattern(name, where)
    path = folder / name
    if path.exists() and not inside(path, folder):
        raise MappingError(
            f"{name} links to a file outside the source folder",
            where=where,
            fix="copy the file into the source folder instead of linking to it",
        )
    return path


MANIFEST = "manifest.json"


def read_manifest(source_dir: Path) -> dict[str, list[Path]] | None:
    """The ``output`` files of a Bulk Data manifest in ``source_dir``, by resource type (None: no manifest)."""
    path = source_dir / MANIFEST
    if not path.is_file() or not inside(path, source_dir):
        return None
    where = str(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"the Bulk Data manifest is not JSON: {exc}", where=where, fix="fix or remove it") from None
    if not isinstance(manifest, dict) or "output" not in manifest or "transactionTime" not in manifest:
        return None  # some other manifest.json: the globs decide
    by_type: dict[str, list[Path]] = {}
    for index, item in enumerate(manifest.get("output") or []):
        kind = item.get("type") if isinstance(item, dict) else None
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(kind, str) or not isinstance(url, str):
            raise SourceError(
                f"output[{index}] has no type and url", where=where, fix="each output entry names {type, url}"
            )
        name = PurePosixPath(urlparse(url).path).name
        local = source_dir / name
        if not name or not local.is_file() or not inside(local, source_dir):
            raise SourceError(
                f"the manifest lists {name or url!r} ({kind}) but the folder has no such file",
                where=where,
                fix="download every output file of the export into the source folder, or remove the manifest",
            )
        by_type.setdefault(kind, []).append(local)
    return {kind: sorted(files) for kind, files in by_type.items()}


def _no_file(pattern: str, named: bool, source_dir: Path, where: str) -> SourceError:
    """The error for a source that must exist and has no file; for a file name, the folder's closest names."""
    if not named:
        return SourceError(
            f"no file matches {pattern!r} and the source is required",
            where=f"{where} (in {source_dir})",
            fix="check the source folder (--source) and the files: glob, or drop 'required: true'",
        )
    present = [p.name for p in source_dir.iterdir() if p.is_file()] if source_dir.is_dir() else []
    close = difflib.get_close_matches(PurePosixPath(pattern).name, present, n=3, cutoff=0.6)
    return SourceError(
        f"no file named {pattern!r}" + (f" (the folder has {', '.join(map(repr, close))})" if close else ""),
        where=f"{where} (in {source_dir})",
        fix="correct the file name in the mapping or the folder (--source); if this file may be missing from an "
        "extract, write 'required: false' for the source (it then counts 0 records)",
    )


def resolve_files(mapping: Mapping, source_dir: Path, mapping_file: str = "mapping") -> SiteFiles:
    """Match every source and inventory glob once; absent sources are named, required ones must exist."""
    sources: dict[str, list[Path]] = {}
    absent: list[str] = []
    missing: list[SourceError] = []  # sources that must exist and have no file (after the wrong-folder check)
    manifest = read_manifest(source_dir)
    for name, source in mapping.sources.items():
        where = f"{mapping_file}: sources.{name}.files"
        listed_by_manifest = manifest is not None and source.format == "fhir_ndjson"
        if listed_by_manifest:
            check_pattern(source.files, where)
            files = manifest.get(source.resource_type or "", []) if manifest is not None else []
        else:
            files = match_files(source_dir, source.files, where)
        if not files:
            if bool(source.required) if listed_by_manifest else source.must_exist:
                missing.append(
                    _no_file(source.files, source.names_one_file and source.required is None, source_dir, where)
                )
            absent.append(name)
        sources[name] = files
    listed = sorted(f for files in (manifest or {}).values() for f in files)
    inventory = [
        listed
        if manifest is not None and item.format == "fhir_ndjson"
        else match_files(source_dir, item.files, f"{mapping_file}: fhir_inventory[{index}].files")
        for index, item in enumerate(mapping.fhir_inventory)
    ]
    if len(absent) == len(sources) and sources:
        raise SourceError(
            "no file in the source folder matches any source of the mapping",
            where=str(source_dir),
            fix="point --source at the extract folder, or check the mapping's files: globs",
        )
    if missing:
        raise missing[0]
    return SiteFiles(
        source_dir, sources, inventory, tuple(absent), source_dir / MANIFEST if manifest is not None else None
    )

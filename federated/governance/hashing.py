"""Content hashes of federated code, so a site approves exactly the code it reviewed.

Flower's ``--trusted-entities`` only trusts apps signed through Flower Hub; a site
that reviews code offline approves it by this hash instead. The hash is independent
of the machine (sorted relative POSIX paths, file bytes, no timestamps) and ignores
byte-code caches, so the hash a reviewer computes on a checkout equals the hash the
SuperNode computes on the installed app.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedomop.federated.errors import PolicyError

_IGNORED_DIRS = {"__pycache__", ".git", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
_IGNORED_SUFFIXES = {".pyc", ".pyo"}


def _ignored(relative: str) -> bool:
    parts = relative.split("/")
    return any(part in _IGNORED_DIRS for part in parts[:-1]) or Path(parts[-1]).suffix in _IGNORED_SUFFIXES


def _directory_entries(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and not _ignored(relative):
            yield relative, path.read_bytes()


def _bundle_entries(bundle: Path) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(bundle) as archive:
        for info in archive.infolist():
            if not info.is_dir() and not _ignored(info.filename):
                yield info.filename, archive.read(info)


def _digest(entries: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over (path, size, content) in path order; lengths make the framing unambiguous."""
    digest = hashlib.sha256(b"fedomop-app-hash-v1\n")
    for relative, content in sorted(entries):
        name = relative.encode("utf-8")
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def app_hash(path: Path | str) -> str:
    """sha256 of an app directory, a single file, or a zip bundle such as a Flower ``.fab``."""
    path = Path(path)
    if path.is_dir():
        return _digest(_directory_entries(path))
    if path.is_file() and zipfile.is_zipfile(path):
        return _digest(_bundle_entries(path))
    if path.is_file():
        return _digest([(path.name, path.read_bytes())])
    raise PolicyError("cannot hash: no such file or directory", where=str(path), fix="pass the app directory or .fab")


def study_app_hash(study_file: Path | str, code: Path | str) -> str:
    """sha256 of a study file together with the model code that runs it (what a site reviews)."""
    study_file, code = Path(study_file), Path(code)
    if not study_file.is_file():
        raise PolicyError("study file not found", where=str(study_file), fix="pass the study YAML")
    entries = [("study/" + study_file.name, study_file.read_bytes())]
    if code.is_dir():
        entries += [("code/" + name, content) for name, content in _directory_entries(code)]
    elif code.is_file():
        entries.append(("code/" + code.name, code.read_bytes()))
    else:
        raise PolicyError("model code not found", where=str(code), fix="pass the model code directory or file")
    return _digest(entries)

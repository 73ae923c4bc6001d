"""Content hashes of federated code, so a site approves exactly the code it reviewed.

Flower's ``--trusted-entities`` only trusts apps signed through Flower Hub; a site
that reviews code offline approves it by this hash instead. The hash is independent
of the machine (sorted relative POSIX paths, file bytes, no timestamps).

A *bundle* (a zip such as a Flower ``.fab``) is hashed over every entry it holds: Flower
extracts all of them and puts the folder first on ``sys.path``, so any byte the hash skipped
could be imported. A bundle that holds compiled code (``.pyc``/``.pyo`` byte code, ``.so``/
``.pyd`` extension modules, anything under ``__pycache__``) is refused as not approvable:
nobody reviews byte code, and Python imports a sourceless ``fedomop/__init__.pyc`` exactly as it
imports the source. A Flower-built FAB holds sources only (``flwr build`` leaves ``__pycache__``
out and includes ``*.py``, ``*.toml``, ``*.md``, ``*.yaml``, ``*.json``... by default).

A *directory* (a reviewer's checkout, the site's installed package) leaves out the byte-code
caches Python keeps for its sources (``__pycache__``) and tool caches (``.git``, ``.mypy_cache``...),
so the hash of a checkout does not change when its tests ran; compiled files outside
``__pycache__`` are refused there too.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedomop.federated.errors import PolicyError

_IGNORED_DIRS = {"__pycache__", ".git", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
CACHE_DIR = "__pycache__"
COMPILED_SUFFIXES = frozenset(
    {".pyc", ".pyo", ".so", ".pyd", ".dylib", ".dll"}
    | {"." + suffix.rsplit(".", 1)[-1] for suffix in importlib.machinery.all_suffixes()}
) - {".py", ".pyw"}
"""Files Python (or an extension loader) runs that are not source a reviewer reads."""


def compiled(relative: str) -> bool:
    """Whether ``relative`` (a POSIX path inside an app) is compiled code or inside a byte-code cache."""
    parts = relative.split("/")
    return CACHE_DIR in parts[:-1] or Path(parts[-1]).suffix.lower() in COMPILED_SUFFIXES


def _ignored_in_directory(relative: str) -> bool:
    return any(part in _IGNORED_DIRS for part in relative.split("/")[:-1])


def _refuse_compiled(names: Iterable[str], where: str) -> None:
    found = sorted(name for name in names if compiled(name))
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise PolicyError(
            f"the app holds compiled code that cannot be reviewed ({shown}); such an app is not approvable",
            where=where,
            fix="build the bundle from sources only (flwr build leaves __pycache__ and compiled files out)",
        )


def _directory_entries(root: Path) -> Iterator[tuple[str, bytes]]:
    files = [(path.relative_to(root).as_posix(), path) for path in root.rglob("*") if path.is_file()]
    kept = [(relative, path) for relative, path in files if not _ignored_in_directory(relative)]
    _refuse_compiled((relative for relative, _ in kept), str(root))
    for relative, path in kept:
        yield relative, path.read_bytes()


def zip_entries(archive: zipfile.ZipFile, where: str) -> list[tuple[str, bytes]]:
    """Every file entry of a bundle (nothing skipped); PolicyError when one is compiled code."""
    infos = [info for info in archive.infolist() if not info.is_dir()]
    _refuse_compiled((info.filename for info in infos), where)
    return [(info.filename, archive.read(info)) for info in infos]


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
        with zipfile.ZipFile(path) as archive:
            return _digest(zip_entries(archive, str(path)))
    if path.is_file():
        _refuse_compiled([path.name], str(path))
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
        _refuse_compiled([code.name], str(code))
        entries.append(("code/" + code.name, code.read_bytes()))
    else:
        raise PolicyError("model code not found", where=str(code), fix="pass the model code directory or file")
    return _digest(entries)

"""The feature matrix of one run at one site, kept between the messages of that run (site executor only).

Why: fedomop's executor runs every message in its own process, forked from a server that preloaded the
installed ClientApp, so the ClientApp's in-process cache never sees a second message. Each message of a
histogram-XGBoost run (describe, sketch, histogram, local, evaluate) rebuilt the same matrix from the
database: one SQL pass per message for rows that do not change. The executor now gives its tasks a private
folder (:data:`CACHE_ENV`, mode 0700, removed when the executor stops); the first message of a run stores the
matrix there and the others of the same run read it.

The key is the run id, the database and the study text, so

* one run sees one snapshot of the site's data, even when the steward re-maps in the middle of it (every
  reply of the run names the same ``data_version``, and the train/test split cannot move between messages);
* a new run reads the database again.

The file is numpy's ``.npz`` without pickled objects; the matrix's digest is stored beside it and checked on
reading, so a torn or altered file is rebuilt from the database, never used. Nothing in the folder leaves the
site; it holds what the database already holds, readable by the executor's user only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

from fedomop.federated.features import SiteData

CACHE_ENV = "FEDOMOP_FEATURE_CACHE"
SUFFIX = ".features.npz"


def folder() -> Path | None:
    """The executor's cache folder for this task, or None (simulation, stock Flower, notebooks: no cache)."""
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else None


def cache_key(run_id: int, db: str, study_text: str) -> str:
    digest = hashlib.sha256()
    for part in (str(run_id), db, study_text):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def load(where: Path, key: str) -> SiteData | None:
    """The stored matrix, or None when there is none or it does not match its digest."""
    path = where / f"{key}{SUFFIX}"
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    try:
        data = SiteData(
            X=arrays["X"],
            y=arrays["y"],
            person_id=arrays["person_id"],
            feature_names=[str(name) for name in arrays["feature_names"]],
            time=arrays.get("time"),
            status=arrays.get("status"),
        )
    except KeyError:
        return None
    if data.digest() != str(arrays["digest"]):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # last use: what pruning goes by
    return data


def store(where: Path, key: str, data: SiteData) -> None:
    """Write the matrix atomically (a concurrent reader sees the old file or the whole new one, never half)."""
    arrays: dict[str, np.ndarray] = {
        "X": data.X,
        "y": data.y,
        "person_id": data.person_id,
        "feature_names": np.array(data.feature_names, dtype=str),
        "digest": np.array(data.digest()),
    }
    if data.time is not None:
        arrays["time"] = data.time
    if data.status is not None:
        arrays["status"] = data.status
    temporary: str | None = None
    try:
        handle, temporary = tempfile.mkstemp(dir=where, suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)  # type: ignore[arg-type]
        os.replace(temporary, where / f"{key}{SUFFIX}")
    except OSError as error:  # a full disk or a removed folder costs the cache, never the message
        if temporary:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        print(
            f"fedomop: the run's feature matrix could not be kept in {where} ({error}); "
            "this run's later messages read the database again",
            file=sys.stderr,
        )


def prune(where: Path, idle_s: float) -> int:
    """Delete matrices unused for ``idle_s`` seconds (runs that ended); returns how many."""
    cutoff = time.time() - idle_s
    removed = 0
    for path in where.glob(f"*{SUFFIX}"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed

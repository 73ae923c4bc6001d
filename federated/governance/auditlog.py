"""Append-only, hash-chained audit log of every request a site received and what left it.

One JSON object per line. Each record carries ``seq`` and ``prev`` (the sha256 of the
previous line's bytes), so editing, deleting or reordering any record breaks the chain
at that point. A sidecar ``<log>.head`` holds the sequence number and hash of the last
record; :func:`verify` compares it with the log, which catches records cut off the end.
An empty or missing log is refused when the site's state files beside it (the lock file,
the cohort and member ledgers, the DP budget ledger) show that it had records.

The chain is *unkeyed*: anyone who can write the log and its head file can rebuild a
consistent chain (or delete every file beside it, which looks like a new site). Against
that, publish the head hash elsewhere -- every reply carries it into the hub's result.json
and model card -- and check with ``verify(expected_head=...)`` (``verify-log --head``);
:data:`GENESIS` is refused as an anchor, since every log starts from it.

Records name sizes and aggregate/parameter names, never values.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedomop.federated.errors import PolicyError

GENESIS = "0" * 64


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


STATE_SUFFIXES = (".cohorts.json", ".members.json", ".dp_budget.json")
"""Ledgers a site writes beside its log only after a request was accepted (and audited)."""


def beside(audit_log: Path | str, suffix: str) -> Path:
    """A site ledger kept (and archived) with its audit log: ``<log><suffix>``."""
    log = Path(audit_log)
    return log.with_name(log.name + suffix)


@contextmanager
def updating(ledger: Path, *, indent: int | None = 2) -> Iterator[dict[str, Any]]:
    """A JSON ledger under the log's lock, for one read-modify-write: the block gets its content (``{}`` when
    new) and, unless it raised, the content is written back atomically (a temporary file, then a rename)."""
    with _locked(ledger):
        content: dict[str, Any] = json.loads(ledger.read_text(encoding="utf-8")) if ledger.exists() else {}
        yield content
        tmp = ledger.with_name(ledger.name + ".tmp")
        tmp.write_text(json.dumps(content, indent=indent, sort_keys=True), encoding="utf-8")
        tmp.replace(ledger)


def history_evidence(path: Path | str, *, include_lock: bool = True) -> list[Path]:
    """The site's state files beside the log that exist only once records were appended to it: the lock file
    (created by the first append) and the ledgers of :data:`STATE_SUFFIXES`. An empty or missing log with any of
    them was emptied or deleted, not new."""
    path = Path(path)
    found = [beside(path, suffix) for suffix in STATE_SUFFIXES]
    if include_lock:
        found.insert(0, _lock_path(path))
    return [candidate for candidate in found if candidate.exists()]


@contextmanager
def _locked(path: Path, *, create: bool = True) -> Iterator[None]:
    """An exclusive lock shared by every process appending to the same log. With ``create=False`` (readers) a
    missing lock file is not made: no append ever ran, and the lock file's presence is evidence of history."""
    if not create and not _lock_path(path).exists():
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(_lock_path(path), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _last_line(path: Path) -> bytes | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        block, data = 4096, b""
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            data = handle.read(end - start) + data
            end = start
            if data.rstrip(b"\n").count(b"\n") >= 1:
                break
        return data.rstrip(b"\n").rsplit(b"\n", 1)[-1]


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def append(path: Path | str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Append one record (adds ``seq``, ``time`` and ``prev``) under the lock; returns what was written."""
    path = Path(path)
    appended_before = _lock_path(path).exists()  # only an append makes the log's lock file (readers do not)
    with _locked(path):
        last = _last_line(path)
        _require_head_matches(path, last)
        if last is None and not _head_path(path).exists() and appended_before:
            _require_no_history(path, include_lock=True)  # the ledgers alone may precede the first record
        if last is None:
            seq, prev = 1, GENESIS
        else:
            seq, prev = json.loads(last)["seq"] + 1, _line_hash(last)
        entry = {"seq": seq, "time": datetime.now(UTC).isoformat(timespec="microseconds"), "prev": prev, **record}
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")
        with open(path, "ab") as handle:
            handle.write(line + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        head = {"seq": seq, "sha256": _line_hash(line)}
        head_path = _head_path(path)
        tmp = head_path.with_name(head_path.name + ".tmp")
        tmp.write_text(json.dumps(head), encoding="utf-8")
        os.replace(tmp, head_path)
    return entry


def _head_update_lost(head_path: Path, head: dict[str, Any], last: bytes | None) -> bool:
    """True (and the head brought forward) when the log is exactly one whole record ahead of its head, chained to
    it: the site was killed between writing that record and replacing the head file. Accepting it hides nothing:
    an edited, removed or cut record still breaks the chain or the head; only a completed append is recognised.
    """
    if last is None:
        return False
    try:
        record = json.loads(last)
    except ValueError:
        return False  # a torn or altered line
    if record.get("prev") != head.get("sha256") or record.get("seq") != head.get("seq", 0) + 1:
        return False
    tmp = head_path.with_name(head_path.name + ".tmp")
    tmp.write_text(json.dumps({"seq": record["seq"], "sha256": _line_hash(last)}), encoding="utf-8")
    os.replace(tmp, head_path)
    return True


def _require_head_matches(path: Path, last: bytes | None) -> None:
    """Refuse to append to a log whose last record is not the one the head file names.

    A cheap check on every append (one line read): a log whose tail was edited, cut or
    extended behind the site's back is not silently continued; one whole record chained to the head
    is an append whose head update a kill interrupted (``_head_update_lost``), and is continued.
    """
    head_path = _head_path(path)
    if not head_path.exists():
        return
    head = json.loads(head_path.read_text(encoding="utf-8"))
    actual = None if last is None else _line_hash(last)
    if actual != head.get("sha256") and not _head_update_lost(head_path, head, last):
        raise PolicyError(
            "audit log was changed since its last record was written (its end differs from the head file)",
            where=str(path),
            fix="treat the log as tampered: run `fedomop governance verify-log`, investigate, archive it "
            "and start a new log",
        )


def _require_no_history(path: Path, *, include_lock: bool) -> None:
    evidence = history_evidence(path, include_lock=include_lock)
    if evidence:
        raise PolicyError(
            f"audit log is empty or missing, but the site's state beside it ({', '.join(p.name for p in evidence)}) "
            "shows it had records: it was emptied or deleted",
            where=str(path),
            fix="treat the log as tampered: restore it from a backup, or investigate and archive the state files "
            "with it before starting a new log",
        )


def head(path: Path | str) -> dict[str, Any]:
    """The log's current head: its last record's sequence number and hash (``GENESIS`` when empty).

    Sent with every reply and written into result.json and the model card, so the site's
    log can later be checked against a head it published (``verify-log --head``).
    """
    path = Path(path)
    with _locked(path, create=False):
        last = _last_line(path)
    if last is None:
        return {"seq": 0, "sha256": GENESIS}
    return {"seq": int(json.loads(last)["seq"]), "sha256": _line_hash(last)}


@dataclass
class Verification:
    """The outcome of :func:`verify`: ok, records checked, the head hash, and every problem found."""

    ok: bool
    records: int
    head: str
    problems: list[str] = field(default_factory=list)


def verify(path: Path | str, *, expected_head: str | None = None) -> Verification:
    """Walk the chain; report edited, removed, reordered or truncated records.

    ``expected_head`` is a head published earlier (result.json, model card): it must be
    the hash of one of the log's records, which anchors every record up to it; a log that
    has grown since still verifies.
    """
    path = Path(path)
    problems: list[str] = []
    prev, seq = GENESIS, 0
    hashes: set[str] = set()  # GENESIS anchors nothing: every log, also an emptied one, starts from it
    if not path.exists():
        return Verification(False, 0, GENESIS, [f"{path}: audit log does not exist"])
    if expected_head == GENESIS:
        problems.append(f"{path}: the published head is the genesis value, which every log starts from: it anchors "
                        "nothing (pass the head of a record: result.json or model_card.json of a run)")  # fmt: skip
    evidence = history_evidence(path)
    with _locked(path, create=False):
        lines = path.read_bytes().split(b"\n")
        head_file = _head_path(path)
        head_record = json.loads(head_file.read_text(encoding="utf-8")) if head_file.exists() else None
    if not lines or lines == [b""]:
        if head_record is None and evidence:
            problems.append(
                f"{path}: audit log is empty and its head file is missing, but the site's state beside it "
                f"({', '.join(p.name for p in evidence)}) shows it had records: it was emptied"
            )
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        problems.append(f"{path}: last line is incomplete (truncated write)")
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            problems.append(f"{path}:{number}: not a JSON record")
            prev = _line_hash(line)
            hashes.add(prev)
            continue
        if entry.get("prev") != prev:
            problems.append(f"{path}:{number}: chain broken (record edited, removed or reordered before it)")
        if entry.get("seq") != seq + 1:
            problems.append(f"{path}:{number}: sequence {entry.get('seq')} where {seq + 1} was expected")
        seq = entry.get("seq", seq + 1) if isinstance(entry.get("seq"), int) else seq + 1
        prev = _line_hash(line)
        hashes.add(prev)
    if head_record is None and lines:
        problems.append(f"{head_file}: head file missing, cannot check for truncation")
    elif head_record is not None and (head_record.get("seq"), head_record.get("sha256")) != (seq, prev):
        problems.append(
            f"{path}: log ends at record {seq} but the head file says {head_record.get('seq')} (records cut off or added)"
        )
    if expected_head is not None and expected_head != GENESIS and expected_head not in hashes:
        problems.append(
            f"{path}: the published head {expected_head} is not a record of this log "
            "(records before it were rewritten, or it belongs to another log)"
        )
    return Verification(not problems, len(lines), prev, problems)


def read(path: Path | str) -> list[dict[str, Any]]:
    """Every record, oldest first (no verification: call :func:`verify` for that)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def who() -> str:
    """A default requester name for local actions: user@host."""
    try:
        user = getpass.getuser()
    except OSError:
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def require_valid(path: Path | str) -> Verification:
    """verify() that raises a PolicyError listing the problems."""
    result = verify(path)
    if not result.ok:
        raise PolicyError(
            "audit log failed verification: " + "; ".join(result.problems[:5]),
            where=str(path),
            fix="treat the log as tampered: investigate, archive it and start a new log",
        )
    return result

"""Issue 19 item 6 without a network: fast failures naming the path, tamper-evident logs, published heads.

The CLI is run as a real process (``python -m fedomop``) so exit codes are the ones a shell sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import auditlog
from fedomop.federated.governance.startup import published_head, require_credentials

from .conftest import policy_dict, write_policy


def fedomop(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-m", "fedomop", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def _rewrite(log: Path, index: int, **changes: object) -> None:
    """Edit one record and re-chain every record after it, head file included: a careful forger."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records[index].update(changes)
    prev, lines = auditlog.GENESIS, []
    for record in records:
        record["prev"] = prev
        line = json.dumps(record, sort_keys=True, separators=(",", ":"))
        prev = hashlib.sha256(line.encode()).hexdigest()
        lines.append(line)
    log.write_text("\n".join(lines) + "\n")
    log.with_name(log.name + ".head").write_text(json.dumps({"seq": len(records), "sha256": prev}))


def test_a_wrong_certs_folder_fails_in_seconds_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-certs"
    started = time.monotonic()
    result = fedomop("site", "start", "--db", "site_a.duckdb", "--certs", str(missing), cwd=tmp_path)
    assert result.returncode != 0 and time.monotonic() - started < 30
    assert str(missing) in result.stdout + result.stderr
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "ca.crt").write_text("x")
    with pytest.raises(PolicyError, match=r"partial lacks site_a.key"):
        require_credentials(tmp_path / "partial", ("ca.crt", "site_a.key"))


def test_a_site_refuses_to_start_on_a_tampered_log(tmp_path):
    policy = write_policy(tmp_path, policy_dict())
    log = tmp_path / "audit.jsonl"
    for i in range(3):
        auditlog.append(log, {"action": "request", "i": i})
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0].replace('"i":0', '"i":7'), *lines[1:]]) + "\n")
    result = fedomop("site", "start", "--db", "site_a.duckdb", "--policy", str(policy), cwd=tmp_path)
    assert result.returncode != 0  # FedomopError: 2, before any SuperNode is spawned
    assert "audit log failed verification" in result.stdout + result.stderr


def test_appending_to_a_log_whose_end_was_changed_is_refused(tmp_path):
    log = tmp_path / "audit.jsonl"
    auditlog.append(log, {"i": 0})
    auditlog.append(log, {"i": 1})
    log.write_text(log.read_text().splitlines()[0] + "\n")  # the last record cut off
    with pytest.raises(PolicyError, match="changed since its last record"):
        auditlog.append(log, {"i": 2})


def test_verify_log_exits_1_on_a_break_and_checks_the_published_head(tmp_path):
    log = tmp_path / "audit.jsonl"
    for i in range(3):
        auditlog.append(log, {"site": "site_a", "i": i})
    published = auditlog.head(log)
    assert published["seq"] == 3
    result_json = tmp_path / "result.json"
    result_json.write_text(json.dumps({"audit_heads": {"site_a": published}}))
    auditlog.append(log, {"site": "site_a", "i": 3})  # the log grows after the run: still verifies
    ok = fedomop("governance", "verify-log", str(log), "--head", str(result_json), cwd=tmp_path)
    assert ok.returncode == 0 and "ok: 4 records" in ok.stdout
    assert published_head(str(result_json), log) == published["sha256"]

    _rewrite(log, 0, i=99)  # chain and head file consistent again: only the published head catches it
    unanchored = fedomop("governance", "verify-log", str(log), cwd=tmp_path)
    assert unanchored.returncode == 0 and "not anchored" in unanchored.stdout
    anchored = fedomop("governance", "verify-log", str(log), "--head", str(result_json), cwd=tmp_path)
    assert anchored.returncode == 1 and "is not a record of this log" in anchored.stdout

    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    broken = fedomop("governance", "verify-log", str(log), cwd=tmp_path)
    assert broken.returncode == 1 and "chain broken" in broken.stdout


def _emptied(log: Path) -> None:
    """The red team's cheapest forgery: empty the log and delete its head file."""
    log.write_bytes(b"")
    log.with_name(log.name + ".head").unlink()


def test_an_emptied_log_without_its_head_file_is_refused_by_its_lock_file(tmp_path):
    log = tmp_path / "audit.jsonl"
    for i in range(3):
        auditlog.append(log, {"site": "site_a", "i": i})
    _emptied(log)
    result = auditlog.verify(log)
    assert not result.ok and "it was emptied" in result.problems[0] and "audit.jsonl.lock" in result.problems[0]
    cli = fedomop("governance", "verify-log", str(log), cwd=tmp_path)
    assert cli.returncode == 1 and "it was emptied" in cli.stdout


def test_a_site_does_not_start_afresh_on_an_emptied_or_deleted_log(tmp_path):
    policy = write_policy(tmp_path, policy_dict())
    log = tmp_path / "audit.jsonl"
    auditlog.append(log, {"site": "site_a", "i": 0})
    log.with_name(log.name + ".cohorts.json").write_text("{}")  # the site had accepted a study
    _emptied(log)
    with pytest.raises(PolicyError, match="emptied or deleted"):
        auditlog.append(log, {"site": "site_a", "i": 1})  # the running site does not restart its chain
    started = fedomop("site", "start", "--db", "site_a.duckdb", "--policy", str(policy), cwd=tmp_path)
    assert started.returncode != 0 and "it was emptied" in started.stdout + started.stderr
    log.unlink()
    log.with_name(log.name + ".lock").unlink()  # only the cohort ledger is left
    started = fedomop("site", "start", "--db", "site_a.duckdb", "--policy", str(policy), cwd=tmp_path)
    assert started.returncode != 0 and "it was deleted" in started.stdout + started.stderr


def test_a_new_log_is_still_new(tmp_path):
    log = tmp_path / "audit.jsonl"
    log.touch()  # created empty by the operator, no state beside it
    assert auditlog.verify(log).ok
    assert auditlog.head(log) == {"seq": 0, "sha256": auditlog.GENESIS}
    assert not log.with_name(log.name + ".lock").exists()  # reading makes no evidence of history
    assert auditlog.append(log, {"i": 0})["seq"] == 1 and auditlog.verify(log).ok


def test_the_genesis_value_anchors_nothing(tmp_path):
    log = tmp_path / "audit.jsonl"
    auditlog.append(log, {"site": "site_a", "i": 0})
    result = auditlog.verify(log, expected_head=auditlog.GENESIS)  # untampered, but the anchor proves nothing
    assert not result.ok and "genesis" in result.problems[0]
    with pytest.raises(PolicyError, match="genesis"):
        published_head(auditlog.GENESIS, log)
    cli = fedomop("governance", "verify-log", str(log), "--head", auditlog.GENESIS, cwd=tmp_path)
    assert cli.returncode != 0 and "genesis" in cli.stdout + cli.stderr

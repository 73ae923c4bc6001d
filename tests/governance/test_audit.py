"""The audit log: hash chain, tamper/truncation detection, concurrent appends."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import auditlog as audit_log
from fedomop.federated.governance import load_policy, verify
from fedomop.federated.governance.enforce import audit


def _fill(path, n=5):
    for i in range(n):
        audit_log.append(path, {"action": "train", "round": i, "sent": {"arrays.w": 100 + i}})


def test_records_chain_and_verify(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path)
    records = audit_log.read(path)
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0]["prev"] == audit_log.GENESIS
    result = verify(path)
    assert result.ok, result.problems
    assert result.records == 5 and len(result.head) == 64
    assert verify(path, expected_head=result.head).ok
    assert not verify(path, expected_head="f" * 64).ok


def test_editing_a_record_is_detected(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path)
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["sent"]["arrays.w"] = 1
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    result = verify(path)
    assert not result.ok
    assert any(":3: chain broken" in p for p in result.problems)


def test_deleting_and_truncating_are_detected(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # remove record 3
    assert any("chain broken" in p for p in verify(path).problems)

    path.write_text("\n".join(lines[:4]) + "\n")  # cut the last record off
    problems = verify(path).problems
    assert problems and "head file says 5" in problems[0]

    path.write_text("\n".join(lines)[:-10])  # a torn final write
    assert any("incomplete" in p for p in verify(path).problems)


def _append_many(path, worker):
    for i in range(25):
        audit_log.append(path, {"worker": worker, "i": i})


def test_concurrent_appends_from_processes_keep_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    result = verify(path)
    assert result.ok, result.problems
    assert result.records == 100


def test_audit_refuses_values_in_sent(policy_path):
    import pytest

    from fedomop.federated.errors import PolicyError

    policy = load_policy(policy_path)
    with pytest.raises(PolicyError, match="byte sizes"):
        audit(policy, requester="r", study="s", app_hash="h", action="train", outcome="sent", sent={"auc": 0.71})
    entry = audit(policy, requester="r", study="s", app_hash="h", action="train", outcome="sent", sent={"arrays.w": 40})
    assert entry["bytes_sent"] == 40 and entry["site"] == "site_a"
    assert verify(policy.audit_log).ok


def test_a_site_killed_between_writing_a_record_and_its_head_continues_its_log(tmp_path):
    """SIGKILL after the record's fsync and before the head file's replace leaves the log one whole, chained record
    ahead of its head (seen in a test that kills a site mid-message): that is a completed append, not tampering."""
    path = tmp_path / "audit.jsonl"
    _fill(path)
    head = tmp_path / "audit.jsonl.head"
    before = head.read_text()
    audit_log.append(path, {"event": "written; head update lost"})
    head.write_text(before)  # as if killed before os.replace of the head
    written = audit_log.append(path, {"event": "after restart"})
    assert written["seq"] == 7 and not verify(path).problems
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # the last record cut off: still tampering
    with pytest.raises(PolicyError, match="its end differs from the head file"):
        audit_log.append(path, {"event": "refused"})

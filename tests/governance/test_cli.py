"""`fedomop governance ...` through the real CLI entry point."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.federated.governance import app_hash, auditlog, study_app_hash

runner = CliRunner()


def test_hash_prints_the_app_hash(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "model.py").write_text("w = 1\n")
    (tmp_path / "study.yaml").write_text("name: s\n")
    result = runner.invoke(app, ["governance", "hash", str(tmp_path / "code")])
    assert result.exit_code == 0 and result.stdout.strip() == app_hash(tmp_path / "code")
    result = runner.invoke(app, ["governance", "hash", str(tmp_path / "code"), "--study", str(tmp_path / "study.yaml")])
    assert result.stdout.strip() == study_app_hash(tmp_path / "study.yaml", tmp_path / "code")


def test_check_policy_summarises_and_refuses_bad_files(policy_path, tmp_path):
    result = runner.invoke(app, ["governance", "check-policy", str(policy_path)])
    assert result.exit_code == 0 and "policy of site 'site_a' is valid" in result.stdout
    out = " ".join(result.stdout.split())
    assert "bone_metastasis: 0 approval(s) (app + study + requester), 1 approved app hash(es)" in out
    # the governed site checks approvals only: a policy without them is flagged, not reported as fine
    assert "study 'bone_metastasis' has no approvals: a governed site (fedomop site start) refuses every run" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: x\naudit_log: a.jsonl\nstudies: {s: {tables: {nope: '*'}}}\n")
    result = runner.invoke(app, ["governance", "check-policy", str(bad)])
    assert result.exit_code != 0 and "'nope' is not an OMOP CDM v5.4 table" in str(result.exception)


def test_verify_log_exit_code_follows_the_chain(tmp_path):
    log = tmp_path / "audit.jsonl"
    for i in range(3):
        auditlog.append(log, {"i": i})
    result = runner.invoke(app, ["governance", "verify-log", str(log)])
    assert result.exit_code == 0 and "ok: 3 records" in result.stdout
    lines = log.read_text().splitlines()
    record = json.loads(lines[0])
    record["i"] = 9
    log.write_text("\n".join([json.dumps(record, sort_keys=True, separators=(",", ":")), *lines[1:]]) + "\n")
    result = runner.invoke(app, ["governance", "verify-log", str(log)])
    assert result.exit_code == 1 and "chain broken" in result.stdout

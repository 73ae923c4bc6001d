"""governance_mod on real Flower Messages: refusals, small-cell blocking, local DP, audit records."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedomop.federated.governance import auditlog, load_policy, verify
from fedomop.federated.governance.mods import (
    BLOCKED_CODE,
    REFUSED_CODE,
    SITE_RECORD,
    governance_mod,
    resolve_study,
    running_app_hash,
)

STUDY = "bone_metastasis"


@pytest.fixture(autouse=True)
def task_identity():
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 77, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _policy(tmp_path, *, approved=None, drop_table=None, **study_extra):
    spec, study_file = resolve_study(STUDY)
    tables = {t: cols for t, cols in spec.tables().items() if t != drop_table}
    concepts = sorted({(c.vocabulary, c.code) for c in spec.all_concepts()})
    data = {
        "site": "site_a",
        "audit_log": "audit.jsonl",
        "studies": {
            STUDY: {
                "approved_apps": [{"sha256": approved or running_app_hash(study_file)}],
                "tables": tables,
                "concept_sets": [{"vocabulary": v, "code": c} for v, c in concepts],
                "min_cohort_size": 20,
                "small_cell_threshold": 10,
                **study_extra,
            }
        },
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _message(weights):
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.asarray(weights, dtype=np.float32))})})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN, group_id="3")


def _context(policy_path):
    node_config = {"policy": str(policy_path)} if policy_path else {}
    return Context(run_id=77, node_id=1, node_config=node_config, state=RecordDict(), run_config={"study": STUDY})


def _app(weights, n=120, calls=None):
    def app(message, context):
        if calls is not None:
            calls.append(message.metadata.message_type)
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(np.asarray(weights, dtype=np.float32))}),
                "metrics": MetricRecord({"num-examples": n, "auroc": 0.7}),
            }
        )
        return Message(content, reply_to=message)

    return app


def _log(policy_path):
    return auditlog.read(load_policy(policy_path).audit_log)


def test_approved_request_is_answered_tagged_and_audited(tmp_path):
    policy_path = _policy(tmp_path)
    reply = governance_mod()(_message([0, 0, 0]), _context(policy_path), _app([1, 2, 3]))
    assert not reply.has_error()
    assert reply.content[SITE_RECORD]["site"] == "site_a"
    accepted, sent = _log(policy_path)
    assert (accepted["outcome"], sent["outcome"]) == ("accepted", "sent")
    assert sent["sent"]["arrays.w"] >= 12 and sent["sent"]["metrics.num-examples"] == 8
    # the metric's value (0.7) is never logged; the timestamp is left out of the look (it may read "...10.7...")
    assert sent["round"] == "3" and "0.7" not in str({k: v for k, v in sent.items() if k != "time"})
    assert verify(load_policy(policy_path).audit_log).ok


def test_unapproved_code_is_refused_before_the_app_runs(tmp_path):
    policy_path = _policy(tmp_path, approved="c" * 64)
    calls: list[str] = []
    reply = governance_mod()(_message([0]), _context(policy_path), _app([1], calls=calls))
    assert reply.has_error() and reply.error.code == REFUSED_CODE
    assert "is not approved" in reply.error.reason and calls == []
    [record] = _log(policy_path)
    assert record["outcome"] == "refused" and record["app_hash"] != "c" * 64


def test_table_outside_policy_is_refused(tmp_path):
    policy_path = _policy(tmp_path, drop_table="measurement")
    calls: list[str] = []
    reply = governance_mod()(_message([0]), _context(policy_path), _app([1], calls=calls))
    assert reply.error.code == REFUSED_CODE and "table 'measurement' is not allowed" in reply.error.reason
    assert calls == [] and _log(policy_path)[0]["outcome"] == "refused"


def test_site_without_policy_refuses_everything():
    reply = governance_mod()(_message([0]), _context(None), _app([1]))
    assert reply.error.code == REFUSED_CODE and "no governance policy" in reply.error.reason


def test_small_cell_in_a_reply_is_blocked(tmp_path):
    policy_path = _policy(tmp_path)
    reply = governance_mod()(_message([0]), _context(policy_path), _app([1], n=3))
    assert reply.error.code == BLOCKED_CODE and "metrics.num-examples" in reply.error.reason
    assert not reply.has_content()
    assert [r["outcome"] for r in _log(policy_path)] == ["accepted", "blocked"]


def test_local_dp_clips_the_update_and_reports_epsilon(tmp_path):
    dp = {"epsilon": 1.0e6, "delta": 1.0e-5, "clipping_norm": 1.0}
    policy_path = _policy(tmp_path, differential_privacy=dp)
    reply = governance_mod()(_message([0, 0, 0, 0]), _context(policy_path), _app([6, 8, 0, 0]))
    sent = reply.content["arrays"]["w"].numpy()
    assert np.linalg.norm(sent) == pytest.approx(1.0, abs=1e-3)  # norm 10 update clipped to 1
    assert sent[0] / sent[1] == pytest.approx(0.75, abs=1e-2)
    assert reply.content[SITE_RECORD]["dp_epsilon"] == 1.0e6
    assert _log(policy_path)[-1]["dp_epsilon"] == 1.0e6


def test_dp_required_but_nothing_to_protect_blocks(tmp_path):
    dp = {"epsilon": 1.0, "delta": 1.0e-5, "clipping_norm": 1.0}
    policy_path = _policy(tmp_path, differential_privacy=dp)

    def tree_app(message, context):
        booster = ArrayRecord({"model": Array(np.frombuffer(b"serialized-trees", dtype=np.uint8))})
        return Message(
            RecordDict({"arrays": booster, "metrics": MetricRecord({"num-examples": 100})}), reply_to=message
        )

    reply = governance_mod()(_message([0]), _context(policy_path), tree_app)
    assert reply.error.code == BLOCKED_CODE and "no float model update" in reply.error.reason

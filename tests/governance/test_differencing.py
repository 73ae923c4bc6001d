"""Differencing across overlapping cohorts: two releases whose cohorts differ by 1..threshold-1 persons are refused.

The issue's attack: studies differing only in ``max_age`` gave 4 and 2 persons over 90, so the 2 persons
aged 90-95 were singled out by subtraction. One-definition-per-study cannot see two *names*; this can.
"""

from __future__ import annotations

import re

import pytest

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import auditlog
from fedomop.federated.governance.disclosure import check_difference, enforce_min_difference
from fedomop.federated.governance.policy import load_policy
from fedomop.federated.study import load_study

from .conftest import policy_dict, write_policy

THRESHOLD = 10


def test_a_cohort_a_few_persons_away_from_a_released_one_is_refused(tmp_path):
    log = tmp_path / "audit.jsonl"
    check_difference(log, "older", "d1", range(100), THRESHOLD)
    with pytest.raises(PolicyError, match="differs from it by fewer than 10 persons") as info:
        check_difference(log, "younger", "d2", range(97), THRESHOLD)  # the 3 oldest singled out
    assert " 3 " not in str(info.value)  # the small difference itself is never stated
    with pytest.raises(PolicyError):
        check_difference(log, "plus_two", "d3", range(102), THRESHOLD)  # a superset by 2 as well
    with pytest.raises(PolicyError):
        check_difference(log, "shifted", "d4", [*range(5, 100), *range(200, 205)], THRESHOLD)  # 5 out, 5 in


def test_far_enough_disjoint_or_the_same_definition_is_released(tmp_path):
    log = tmp_path / "audit.jsonl"
    check_difference(log, "all", "d1", range(100), THRESHOLD)
    check_difference(log, "most", "d2", range(80), THRESHOLD)  # 20 apart
    check_difference(log, "elsewhere", "d3", range(1000, 1004), THRESHOLD)  # no overlap: nothing to subtract
    check_difference(log, "all", "d1", range(100), THRESHOLD)  # the same cohort again
    assert (tmp_path / "audit.jsonl.members.json").exists()
    # salted hashes, not person ids (a hex digest may contain "999" by chance: compare whole tokens)
    tokens = set(re.findall(r"[0-9a-f]+", (tmp_path / "audit.jsonl.members.json").read_text()))
    assert not tokens & {str(i) for i in [*range(100), *range(1000, 1004)]}


def test_the_refusal_is_audited_with_the_requester(tmp_path):
    policy = load_policy(write_policy(tmp_path, policy_dict(small_cell_threshold=THRESHOLD)))
    study = load_study("bone_metastasis")
    enforce_min_difference(policy, study, range(50), requester="alice", app_hash="a" * 64)
    narrower = study.model_copy(update={"covariates": study.covariates[:1]})
    with pytest.raises(PolicyError):
        enforce_min_difference(policy, narrower, range(48), requester="alice", app_hash="a" * 64)
    (record,) = auditlog.read(policy.audit_log)
    assert record["outcome"] == "refused" and record["requester"] == "alice"
    assert "too few persons" in record["reason"]

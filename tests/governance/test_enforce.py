"""enforce_request: every refusal and every acceptance is audited."""

from __future__ import annotations

import pytest

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import auditlog as audit_log
from fedomop.federated.governance import data_request, enforce_request, load_policy, verify

from .conftest import APPROVED

STUDY = {
    "name": "bone_metastasis",
    "cohort": {"table": "condition_occurrence", "concepts": [{"vocabulary": "SNOMED", "code": "94222008"}]},
    "covariates": [
        {"table": "person", "columns": ["gender_concept_id", "year_of_birth"]},
        {"table": "measurement", "concept": {"vocabulary": "LOINC", "code": "2857-1"}},
    ],
}


def _records(policy_path):
    return audit_log.read(load_policy(policy_path).audit_log)


def test_data_request_walks_the_study():
    request = data_request(STUDY)
    assert request.tables == {
        "condition_occurrence": set(),
        "person": {"gender_concept_id", "year_of_birth"},
        "measurement": set(),
    }
    assert request.concepts == {("SNOMED", "94222008"), ("LOINC", "2857-1")}


def test_approved_request_is_accepted_and_logged(policy_path):
    policy = enforce_request(policy_path, STUDY, APPROVED, "researcher@hub", cohort_size=30)
    assert policy.site == "site_a"
    [record] = _records(policy_path)
    assert record["outcome"] == "accepted" and record["requester"] == "researcher@hub"
    assert record["app_hash"] == APPROVED and record["study"] == "bone_metastasis"


def test_unapproved_hash_is_refused_and_logged(policy_path):
    with pytest.raises(PolicyError, match="app hash b+ is not approved"):
        enforce_request(policy_path, STUDY, "b" * 64, "mallory")
    [record] = _records(policy_path)
    assert record["outcome"] == "refused" and "not approved" in record["reason"] and record["requester"] == "mallory"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"extra": {"table": "note", "columns": ["note_text"]}}, "table 'note' is not allowed"),
        ({"extra": {"table": "person", "columns": ["person_source_value"]}}, "person_source_value of person"),
        ({"extra": {"vocabulary": "SNOMED", "code": "254637007"}}, "concept(s) outside the approved concept sets"),
        ({"name": "other_study"}, "study not listed"),
    ],
)
def test_out_of_policy_requests_are_refused_and_logged(policy_path, change, reason):
    with pytest.raises(PolicyError) as info:
        enforce_request(policy_path, {**STUDY, **change}, APPROVED, "r")
    assert reason in str(info.value)
    [record] = _records(policy_path)
    assert record["outcome"] == "refused" and reason in record["reason"]


def test_small_cohort_is_refused(policy_path):
    with pytest.raises(PolicyError, match="cohort below the minimum size 30"):
        enforce_request(policy_path, STUDY, APPROVED, "r", cohort_size=29)
    assert verify(load_policy(policy_path).audit_log).ok


def test_pydantic_study_objects_are_understood(policy_path):
    from pydantic import BaseModel

    class Spec(BaseModel):
        name: str
        tables: dict[str, list[str]]

    spec = Spec(name="bone_metastasis", tables={"drug_exposure": ["drug_concept_id"]})
    with pytest.raises(PolicyError, match="table 'drug_exposure' is not allowed"):
        enforce_request(policy_path, spec, APPROVED, "r")


def test_release_blocks_small_cells_and_audits_what_is_sent(policy_path):
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from fedomop.federated.governance import release

    policy = load_policy(policy_path)
    context = {"requester": "r", "study": "bone_metastasis", "app_hash": APPROVED, "action": "query.describe"}
    small = RecordDict({"counts": MetricRecord({"n-train": 120, "n-positive-train": 4})})
    with pytest.raises(PolicyError, match=r"1 count\(s\) below the small-cell threshold 10: counts.n-positive-train"):
        release(policy, small, **context)
    fine = RecordDict(
        {"counts": MetricRecord({"n-train": 120, "n-positive-train": 0}), "site": ConfigRecord({"site": "a"})}
    )
    record = release(policy, fine, **context)
    assert record["outcome"] == "sent" and record["sent"]["counts.n-train"] == 8 and record["sent"]["site.site"] == 1
    blocked, sent = _records(policy_path)
    assert (
        blocked["outcome"] == "blocked"
        and "n-positive-train" in blocked["reason"]
        and "4" not in blocked["reason"][-3:]
    )
    assert verify(policy.audit_log).ok

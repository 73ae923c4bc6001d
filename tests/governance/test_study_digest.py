"""The study digest an approval binds covers everything that changes what a site computes or releases."""

from __future__ import annotations

import pytest
import yaml

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance.approval import Request, check_approved, study_digest
from fedomop.federated.governance.policy import SitePolicy
from fedomop.federated.study import STUDIES_DIR, parse_study

BUNDLED = (STUDIES_DIR / "bone_metastasis.yaml").read_text()


def _variant(**changes: object) -> str:
    document = yaml.safe_load(BUNDLED)
    document.update(changes)
    return yaml.safe_dump(document)


def _digest(text: str) -> str:
    return study_digest(parse_study(text))


@pytest.mark.parametrize(
    "changes",
    [
        {"seed": 7},
        {"test_fraction": 0.85},  # the red team's variant: a site trained on 18 persons under the 0.3 approval
        {"min_outcome_count": 0},
        {"allow_absent_covariates": ["psa"]},
        {"small_cell": 1},
        {"min_cohort_size": 1},
        {"version": "2"},
    ],
)
def test_every_setting_that_changes_the_computation_changes_the_digest(changes):
    assert _digest(_variant(**changes)) != _digest(BUNDLED)


def test_cohort_outcome_and_covariates_still_count():
    document = yaml.safe_load(BUNDLED)
    document["cohort"]["max_age"] = 80
    assert _digest(yaml.safe_dump(document)) != _digest(BUNDLED)
    document = yaml.safe_load(BUNDLED)
    document["covariates"] = document["covariates"][:-1]
    document["allow_absent_covariates"] = [
        a for a in document.get("allow_absent_covariates", []) if a != "bone_protective"
    ]
    assert _digest(yaml.safe_dump(document)) != _digest(BUNDLED)


def test_descriptive_fields_key_order_and_spelled_out_defaults_do_not():
    document = yaml.safe_load(BUNDLED)
    same = _digest(BUNDLED)
    assert _digest(yaml.safe_dump({**document, "name": "renamed", "description": "reworded"})) == same
    relabelled = yaml.safe_load(BUNDLED)
    relabelled["cohort"]["concepts"][0]["label"] = "another label"
    assert _digest(yaml.safe_dump(relabelled)) == same
    reordered = dict(reversed(list(document.items())))
    assert _digest(yaml.safe_dump(reordered, sort_keys=False)) == same
    implicit = {k: v for k, v in document.items() if k != "test_fraction"}
    explicit = {**implicit, "test_fraction": 0.3}  # the default, written out
    assert _digest(yaml.safe_dump(implicit)) == _digest(yaml.safe_dump(explicit))


def test_an_approval_of_the_study_refuses_its_changed_split():
    policy = SitePolicy.model_validate(
        {
            "site": "site_a",
            "audit_log": "audit.jsonl",
            "studies": {
                "bone_metastasis": {
                    "approvals": [{"app_sha256": "a" * 64, "study_digest": _digest(BUNDLED), "requester": "alice"}]
                }
            },
        }
    )
    check_approved(policy, Request("a" * 64, "bone_metastasis", _digest(BUNDLED), "alice"))
    for changed in (_variant(test_fraction=0.85), _variant(seed=7, small_cell=1, min_cohort_size=1)):
        with pytest.raises(PolicyError, match="not the approved definition"):
            check_approved(policy, Request("a" * 64, "bone_metastasis", _digest(changed), "alice"))

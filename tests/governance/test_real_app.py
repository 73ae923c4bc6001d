"""The project's own federated app (federated/client_app.py) on a real SuperLink + SuperNodes, under site policies.

site_a approves the running code; site_b's policy lists another hash. site_b must refuse
before touching its database and log the refusal; the hub learns why.
"""

from __future__ import annotations

import pytest
import yaml

from fedomop.federated.governance import auditlog, verify
from fedomop.harmonize.ground.errors import FedomopError

pytestmark = pytest.mark.slow


def _policy(folder, site, approved, study):
    data = {
        "site": site,
        "audit_log": f"{site}.audit.jsonl",
        "studies": {
            study.name: {
                "approved_apps": [{"sha256": approved}],
                "tables": study.tables(),
                "concept_sets": [{"vocabulary": c.vocabulary, "code": c.code} for c in study.all_concepts()],
                "min_cohort_size": 20,
            }
        },
    }
    path = folder / f"{site}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_real_client_app_refuses_unapproved_code_and_logs_it(tmp_path):
    from fedomop.federated.client_app import code_hash
    from fedomop.federated.deploy import LocalDeployment
    from fedomop.federated.runner import run_deployment
    from fedomop.federated.study import load_study
    from fedomop.federated.testing import DEFAULT_SITES, build_sites

    study_file = tmp_path / "study.yaml"
    study_file.write_text(load_study("bone_metastasis").to_yaml())
    study = load_study(study_file)
    sites = build_sites(tmp_path / "sites", DEFAULT_SITES[:2], scale=0.2)
    unapproved = "f" * 64
    policies = {
        "site_a": _policy(tmp_path, "site_a", code_hash(), study),
        "site_b": _policy(tmp_path, "site_b", unapproved, study),
    }
    with LocalDeployment(
        tmp_path / "deploy", {k: str(v) for k, v in sites.items()}, policies={k: str(v) for k, v in policies.items()}
    ) as hub:
        with pytest.raises(FedomopError) as info:
            run_deployment(
                study_file, hub.connection, out=tmp_path / "out", flwr_home=hub.flwr_home,
                model="xgboost-bagging", rounds=1, min_nodes=2, timeout_s=300,
            )  # fmt: skip
    assert "finished:failed" in str(info.value)
    assert "site_b" in str(info.value) and "is not approved" in str(info.value)
    refused = [r for r in auditlog.read(tmp_path / "site_b.audit.jsonl") if r["outcome"] == "refused"]
    assert refused and "is not approved" in refused[0]["reason"] and refused[0]["study"] == "bone_metastasis"
    assert not [r for r in auditlog.read(tmp_path / "site_b.audit.jsonl") if r["outcome"] == "sent"]
    assert verify(tmp_path / "site_b.audit.jsonl").ok

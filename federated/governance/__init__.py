"""Site governance: policy, approved code by hash, audit log, small-cell suppression, certificates.

The public API a ClientApp uses::

    policy = enforce_request(policy_path, study, app_hash, requester)   # raises PolicyError, audited
    assert_no_small_cells(reply.content, policy.small_cell(study_name))
    audit(policy, requester=..., study=..., app_hash=..., action="train", outcome="sent", sent=outgoing_sizes(...))

or, simpler, ``ClientApp(..., mods=[governance_mod()])`` from :mod:`fedomop.federated.governance.mods`.
"""

from fedomop.federated.governance.auditlog import Verification, verify
from fedomop.federated.governance.enforce import (
    DataRequest,
    audit,
    data_request,
    enforce_cohort,
    enforce_request,
    release,
    study_name,
)
from fedomop.federated.governance.hashing import app_hash, study_app_hash
from fedomop.federated.governance.policy import DifferentialPrivacy, SitePolicy, StudyPolicy, load_policy
from fedomop.federated.governance.suppression import (
    SmallCell,
    assert_no_small_cells,
    check_outgoing,
    is_count_key,
    outgoing_sizes,
    require_min_persons,
    suppress_counts,
)

__all__ = [
    "DataRequest",
    "DifferentialPrivacy",
    "SitePolicy",
    "SmallCell",
    "StudyPolicy",
    "Verification",
    "app_hash",
    "assert_no_small_cells",
    "audit",
    "check_outgoing",
    "data_request",
    "enforce_cohort",
    "enforce_request",
    "is_count_key",
    "load_policy",
    "outgoing_sizes",
    "release",
    "require_min_persons",
    "study_app_hash",
    "study_name",
    "suppress_counts",
    "verify",
]

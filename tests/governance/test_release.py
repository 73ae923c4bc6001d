"""Release control (issue 19 item 4): one test per leak the issue reports.

Expected values are computed by hand from the data each test writes.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedomop.federated import client_app
from fedomop.federated.errors import PolicyError, StudyError
from fedomop.federated.features import SiteData, build_features
from fedomop.federated.governance import auditlog, load_policy
from fedomop.federated.governance.disclosure import coarse_quantiles, enforce_one_cohort
from fedomop.federated.models.xgb_histogram import quantile_levels, site_sketch
from fedomop.federated.study import load_study

from .conftest import policy_dict, write_policy
from .test_faults import task_identity  # noqa: F401 - autouse: Flower messages need a task identity


def _prepared(X: np.ndarray, **release: object) -> client_app.Prepared:
    y = np.array([0.0, 1.0] * (len(X) // 2) + [0.0] * (len(X) % 2))
    data = SiteData(X, y, np.arange(len(X)), [f"f{j}" for j in range(X.shape[1])])
    site = client_app.Site("site_a", "unused.duckdb")
    return client_app.Prepared(site, load_study("bone_metastasis"), data, data, "v1", **release)  # type: ignore[arg-type]


def test_moments_of_a_9_person_feature_are_withheld():
    # feature 0 observed in 9 of 30 persons, feature 1 in all 30; the site's release minimum is 20
    X = np.full((30, 2), np.nan)
    X[:9, 0] = np.arange(1.0, 10.0)
    X[:, 1] = 2.0
    prep = _prepared(X, small_cell=5, release_min=20)
    moments = client_app._moments(prep, Message(RecordDict(), dst_node_id=1, message_type="query"))["moments"]
    assert moments["count"].numpy().tolist() == [0, 30]
    assert moments["sum"].numpy().tolist() == [0.0, 60.0]  # 30 x 2.0; the 9-person sum 45 is not sent
    assert moments["sumsq"].numpy().tolist() == [0.0, 120.0]


def test_the_sketch_of_9_values_is_withheld_and_larger_ones_reveal_only_bin_boundaries():
    X = np.full((12, 2), np.nan)
    X[:9, 0] = np.arange(1.0, 10.0)
    X[:, 1] = np.arange(10.0, 130.0, 10.0)  # 12 values: 10, 20, ..., 120
    sketch = site_sketch(X, small_cell=5)
    counts, quantiles = sketch["counts"].numpy(), sketch["quantiles"].numpy()
    assert counts[0] == 0 and np.isnan(quantiles[0]).all()  # 9 // 5 = 1 bin: nothing to release
    # 12 // 5 = 2 bins of 6: only their boundary, the median (60 + 70) / 2, leaves the site
    assert counts[1] == 12 and np.unique(quantiles[1]).tolist() == [65.0]
    # 256 uncoarsened levels would have carried every value (the curve's knots)
    assert len(np.unique(np.round(np.quantile(X[:, 1], quantile_levels()), 6))) > 12


def test_coarse_quantiles_keep_at_least_threshold_values_per_bin():
    values = np.arange(100.0)
    released = coarse_quantiles(values, quantile_levels(), threshold=10)
    boundaries = np.unique(released)
    assert len(boundaries) == 9  # 10 bins of 10
    bins = np.histogram(values, np.concatenate([[-np.inf], boundaries, [np.inf]]))[0]
    assert bins.min() >= 10


def test_a_site_alone_model_stays_at_the_site_unless_the_policy_releases_it():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 3))
    config = ConfigRecord({"model": "xgboost-bagging", "local-total": 2})
    message = Message(RecordDict({"config": config}), dst_node_id=1, message_type="train.local")
    kept = client_app._train_local(_prepared(X, release_local_model=False), message)
    assert "model" not in kept.array_records and "auroc" in kept["metrics"]  # metrics only
    released = client_app._train_local(_prepared(X, release_local_model=True), message)
    assert "model" in released.array_records


def test_a_cohort_error_never_states_the_count(tmp_path):
    from fedomop.federated.testing import DEFAULT_SITES, build_sites

    db = build_sites(tmp_path, DEFAULT_SITES[:1], scale=0.1)["site_a"]
    study = load_study("bone_metastasis").model_copy(update={"min_cohort_size": 1_000_000})
    with pytest.raises(StudyError) as info:
        build_features(str(db), study)
    first_line = str(info.value).splitlines()[0]
    assert first_line.endswith(": cohort below the study's minimum of 1000000 persons")
    assert " has " not in first_line


def test_a_second_cohort_definition_under_one_approval_is_refused(tmp_path):
    """The max_age attack: two studies differing only in max_age give the persons over 90 by subtraction."""
    policy = load_policy(write_policy(tmp_path, policy_dict()))
    study = load_study("bone_metastasis")
    narrower = study.model_copy(update={"cohort": study.cohort.model_copy(update={"max_age": 90})})
    enforce_one_cohort(policy, study, requester="r", app_hash="a" * 64)
    enforce_one_cohort(policy, study.model_copy(update={"description": "reworded"}), requester="r", app_hash="a" * 64)
    with pytest.raises(PolicyError, match="approved here for one cohort definition"):
        enforce_one_cohort(policy, narrower, requester="r", app_hash="a" * 64)
    outcomes = [(r["action"], r["outcome"]) for r in auditlog.read(policy.audit_log)]
    assert outcomes == [("bind-cohort", "bound"), ("request", "refused")]


def test_describe_withholds_a_positive_count_under_the_site_policys_stricter_threshold():
    # the positive count sits between the study's threshold and the site policy's stricter one (found by a
    # governed 20-site benchmark: the reply met the release gate and the whole run failed)
    study_threshold = load_study("bone_metastasis").small_cell
    positives = study_threshold + 2  # releasable under the study's rule alone
    X = np.zeros((2 * positives, 1))
    prep = _prepared(X, small_cell=positives + 1)  # the site policy's threshold is stricter than the study's
    message = Message(RecordDict(), dst_node_id=1, message_type="query.describe")
    counts = client_app._describe(prep, message)["counts"]
    assert int(prep.train.y.sum()) == positives
    assert "n-positive-train" not in counts  # withheld, never a false 0
    assert counts["n-train"] == 2 * positives
    loose = client_app._describe(_prepared(X, small_cell=0), message)["counts"]
    assert loose["n-positive-train"] == positives  # the study's rule alone releases it

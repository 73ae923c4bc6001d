"""Tree models a site releases hold no leaf with 1 to threshold - 1 of its persons (red team: 7 of 25 leaves of
the bagging model held 7 persons under threshold 10)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict

from fedomop.federated import client_app
from fedomop.federated.errors import PolicyError
from fedomop.federated.features import SiteData
from fedomop.federated.governance import auditlog, load_policy
from fedomop.federated.models import registry, xgb_bagging, xgb_common, xgb_cyclic
from fedomop.federated.study import load_study

from .conftest import policy_dict, write_policy

THRESHOLD = 10


def _data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0.8).astype(float)
    return X, y


def _sizes(record, X, first_tree=0):
    raw, _ = xgb_common.from_record(record)
    sizes = xgb_common.leaf_sizes(raw, X, first_tree)
    return sizes[sizes > 0]


def test_leaf_sizes_count_rows_per_leaf():
    X, y = _data()
    raw = xgb_common.train_plain(X, y, 1, {"max_depth": 1})  # one split: two leaves
    sizes = xgb_common.leaf_sizes(raw, X)
    assert sizes.sum() == len(X) and len(sizes) == 2
    assert xgb_common.count_small_leaves(raw, X, threshold=int(sizes.min()) + 1) == 1
    assert xgb_common.count_small_leaves(raw, X, threshold=int(sizes.min())) == 0


def test_without_a_minimum_the_site_grows_small_leaves_and_with_its_threshold_none():
    X, y = _data()
    loose = xgb_bagging.site_train(xgb_common.to_record(b""), X, y, local_rounds=5)
    assert (_sizes(loose, X) < THRESHOLD).any()  # the red team's finding, on synthetic rows
    tight = xgb_bagging.site_train(xgb_common.to_record(b""), X, y, local_rounds=5, min_leaf=THRESHOLD)
    assert _sizes(tight, X).min() >= THRESHOLD
    on_top = xgb_bagging.site_train(tight, X, y, local_rounds=3, min_leaf=THRESHOLD)  # a later round
    assert _sizes(on_top, X).min() >= THRESHOLD
    cyclic = xgb_cyclic.site_train(tight, X, y, local_rounds=3, min_leaf=THRESHOLD)
    assert _sizes(cyclic, X, first_tree=5).min() >= THRESHOLD
    plain = registry.get("xgboost-hist").train_plain(X, y, 5, min_leaf=THRESHOLD)
    assert _sizes(plain, X).min() >= THRESHOLD


@pytest.mark.parametrize("model", [xgb_bagging, xgb_cyclic])
@pytest.mark.parametrize("crafted", [{"scale_pos_weight": 1000.0}, {"max_depth": 12, "scale_pos_weight": 1e4}])
def test_a_hub_model_carrying_its_own_training_parameters_does_not_shrink_the_sites_leaves(model, crafted):
    """Red team (second pass): a booster the hub sends keeps its parameters (scale_pos_weight=1000), and the site
    continuing it grew leaves of one person (then refused to release: every round blocked). The site's own
    parameters are all written out, so they replace the hub's."""
    rng = np.random.default_rng(0)  # rare, unpredictable outcomes: a 1000x weight isolates single positives
    X, y = rng.normal(size=(200, 6)), (rng.random(200) < 0.05).astype(float)
    hub = xgb_common.to_record(xgb_common.train_plain(X[:40], y[:40], 1, crafted))
    first_new = xgb_common.load_booster(xgb_common.from_record(hub)[0]).num_boosted_rounds()
    reply = model.site_train(hub, X, y, local_rounds=3, min_leaf=THRESHOLD)
    assert _sizes(reply, X, first_tree=first_new).min() >= THRESHOLD


def _prepared(tmp_path, X, y):
    policy = load_policy(write_policy(tmp_path, policy_dict()))
    site_data = SiteData(X, y, np.arange(len(y)), [f"f{i}" for i in range(X.shape[1])])
    study = load_study("bone_metastasis")
    prep = client_app.Prepared(client_app.Site("site_a", "x.duckdb"), study, site_data, site_data, "v")
    return replace(prep, small_cell=THRESHOLD, policy=policy, requester="alice")


def _message(model: str, record) -> Any:
    """What the train handler reads of a Flower message: its content."""
    config = ConfigRecord({"model": model, "local-rounds": 5, "n-sites": 1, "site-min-leaf-persons": 0})
    return SimpleNamespace(content=RecordDict({"config": config, "arrays": record}))


@pytest.mark.parametrize("model", ["xgboost-bagging", "xgboost-cyclic"])
def test_the_site_trains_with_its_own_threshold_whatever_the_hub_sends(tmp_path, model):
    X, y = _data()
    prep = _prepared(tmp_path, X, y)
    reply = client_app._train(prep, _message(model, xgb_common.to_record(b"")))  # the hub asked for 0
    assert _sizes(reply["arrays"], X).min() >= THRESHOLD


def test_a_model_with_a_small_leaf_is_blocked_and_audited(tmp_path, monkeypatch):
    X, y = _data()
    prep = _prepared(tmp_path, X, y)
    monkeypatch.setattr(xgb_common, "leaf_params", lambda min_leaf: {"min_child_weight": 0.0})  # a weaker trainer
    with pytest.raises(PolicyError, match=r"blocked its model: .* fewer than 10 of this site's persons"):
        client_app._train(prep, _message("xgboost-bagging", xgb_common.to_record(b"")))
    (record,) = auditlog.read(tmp_path / "audit.jsonl")
    assert record["outcome"] == "blocked" and record["action"] == "train" and record["sent"] == {}

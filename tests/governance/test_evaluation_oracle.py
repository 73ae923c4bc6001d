"""The evaluate handler is an oracle on the site's held-out outcomes (red team: 35/35 patients from pairs of
crafted models): a site scores only what the run's plan needs, on a held-out set of at least its threshold,
and releases rounded metrics."""

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
from fedomop.federated.models import xgb_common
from fedomop.federated.study import load_study

from .conftest import policy_dict, write_policy


def _prepared(tmp_path, n_test: int = 40):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n_test, 3))
    y = (X[:, 0] > 0).astype(float)
    test = SiteData(X, y, np.arange(n_test), ["a", "b", "c"])
    policy = load_policy(write_policy(tmp_path, policy_dict()))
    prep = client_app.Prepared(client_app.Site("site_a", "x.duckdb"), load_study("bone_metastasis"), test, test, "v")
    return replace(prep, small_cell=10, policy=policy, requester="alice")


def _model(X, y) -> Any:
    return xgb_common.to_record(xgb_common.train_plain(X, y, 3))


def _message(run_id: int, records: dict, **config: Any) -> Any:
    content = RecordDict({"config": ConfigRecord({"model": "xgboost-bagging", **config}), **records})
    return SimpleNamespace(content=content, metadata=SimpleNamespace(run_id=run_id))


def test_released_metrics_are_rounded_to_three_decimals(tmp_path):
    prep = _prepared(tmp_path)
    metrics = client_app._held_out_metrics(prep, "xgboost-bagging", _model(prep.test.X, prep.test.y))
    for key, value in metrics.items():
        if key != "num-examples":
            assert value == round(value, 3), key


def test_a_held_out_set_below_the_threshold_is_not_scored(tmp_path):
    prep = _prepared(tmp_path, n_test=9)
    with pytest.raises(PolicyError, match="fewer than 10 persons"):
        client_app._held_out_metrics(prep, "xgboost-bagging", _model(prep.test.X, prep.test.y))


def test_a_run_gets_one_evaluation_per_round_and_one_final_comparison(tmp_path):
    prep = _prepared(tmp_path)
    model = _model(prep.test.X, prep.test.y)
    for _ in range(2):  # the plan: rounds = 2
        client_app._evaluate(prep, _message(5, {"arrays": model}, rounds=2))
    with pytest.raises(PolicyError, match="evaluation budget of run 5 spent"):
        client_app._evaluate(prep, _message(5, {"arrays": model}, rounds=50))  # the hub cannot raise it later
    client_app._evaluate(prep, _message(6, {"arrays": model}, rounds=2))  # another run, its own budget
    final = {"model.federated": model, "model.site_a": model}
    client_app._evaluate_many(prep, _message(7, final))
    with pytest.raises(PolicyError, match="many: 1 of 1"):
        client_app._evaluate_many(prep, _message(7, final))
    refused = [r for r in auditlog.read(tmp_path / "audit.jsonl") if r["outcome"] == "refused"]
    assert [r["action"] for r in refused] == ["evaluate", "many"]

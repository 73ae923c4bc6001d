"""Bounded run settings (issue 19 item 5): unknown keys and out-of-bound values are refused."""

from __future__ import annotations

import pytest

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import load_policy
from fedomop.federated.governance.bounds import check_message_config, check_settings
from fedomop.federated.governance.policy import SettingsLimits

from .conftest import policy_dict, write_policy


def test_the_issues_bad_values_are_each_refused_by_name():
    # rounds=10^9, epochs=10^7 and local-rounds=-3 were all accepted (issue 19); defaults cap at 200/50/50.
    bad = {"rounds": 10**9, "epochs": 10**7, "local-rounds": -3}
    with pytest.raises(PolicyError) as info:
        check_settings(bad)
    message = str(info.value)
    assert "rounds: must be at most 200" in message
    assert "epochs: must be at most 50" in message
    assert "local-rounds: must be at least 0" in message


def test_unknown_keys_are_refused_not_ignored():
    with pytest.raises(PolicyError, match=r"(?s)epoch: unknown setting.*fix: .*epochs"):
        check_settings({"epoch": 3})


def test_types_are_checked_and_values_converted():
    assert check_settings({"rounds": "12", "proximal_mu": 0.5, "compare-local": "false"}) == {
        "rounds": 12,
        "proximal-mu": 0.5,
        "compare-local": False,
    }
    with pytest.raises(PolicyError, match="rounds: must be an integer"):
        check_settings({"rounds": 2.5})
    with pytest.raises(PolicyError, match="model: 'resnet' is not one of"):
        check_settings({"model": "resnet"})
    with pytest.raises(PolicyError, match="out: must not climb"):
        check_settings({"out": "../../etc"})


def test_the_site_policy_sets_the_ceilings(tmp_path):
    data = policy_dict()
    data["limits"] = {"max_rounds": 5, "max_epochs": 2, "max_depth": 3, "max_local_rounds": 4, "wall_time_s": 30}
    policy = load_policy(write_policy(tmp_path, data))
    assert policy.limits == SettingsLimits(max_rounds=5, max_epochs=2, max_depth=3, max_local_rounds=4, wall_time_s=30)
    assert check_settings({"rounds": 5, "epochs": 2, "max-depth": 3}, policy) == {
        "rounds": 5,
        "epochs": 2,
        "max-depth": 3,
    }
    with pytest.raises(PolicyError, match=r"rounds: must be at most 6|max-depth: must be at most 3 \(set by the site"):
        check_settings({"max-depth": 4}, policy)
    with pytest.raises(PolicyError, match=r"round-timeout: must be at most 30"):
        check_settings({"round-timeout": 600}, policy)


def test_a_site_checks_the_settings_each_message_carries(tmp_path):
    data = policy_dict()
    data["limits"] = {"max_epochs": 2}
    policy = load_policy(write_policy(tmp_path, data))
    config = {"study": "x", "model": "mlp", "epochs": 2, "server-round": 3, "local-total": 30, "requester": "r"}
    assert check_message_config(config, policy)["epochs"] == 2
    with pytest.raises(
        PolicyError, match="settings sent by the hub.*epochs: must be at most 2|epochs: must be at most 2"
    ):
        check_message_config({**config, "epochs": 10**7}, policy)


def test_limits_in_the_policy_are_validated(tmp_path):
    data = policy_dict()
    data["limits"] = {"max_rounds": 0, "max_trees": 3}
    with pytest.raises(PolicyError, match=r"limits.max_rounds.*limits.max_trees|limits.max_trees.*limits.max_rounds"):
        load_policy(write_policy(tmp_path, data))

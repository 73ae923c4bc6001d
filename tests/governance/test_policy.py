"""Site policy parsing: strict keys, spec-checked tables/columns, clear errors."""

from __future__ import annotations

import pytest

from fedomop.federated.errors import PolicyError
from fedomop.federated.governance import load_policy

from .conftest import APPROVED, policy_dict, write_policy


def test_policy_loads_and_resolves_audit_log_relative_to_file(policy_path):
    policy = load_policy(policy_path)
    assert policy.site == "site_a"
    assert policy.audit_log == (policy_path.parent / "audit.jsonl").resolve()
    assert policy.studies["bone_metastasis"].approves(APPROVED.upper())
    assert policy.min_cohort("bone_metastasis") == 30
    assert policy.small_cell("bone_metastasis") == 10
    assert policy.studies["bone_metastasis"].allowed_columns("measurement") is None


def test_unknown_key_is_refused_with_file_key_and_choices(tmp_path):
    data = policy_dict()
    data["studies"]["bone_metastasis"]["tabels"] = {}
    path = write_policy(tmp_path, data)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert str(path) in message and "studies.bone_metastasis.tabels" in message
    assert "approved_apps, approvals, tables, concept_sets" in message


def test_table_outside_the_omop_spec_is_refused(tmp_path):
    path = write_policy(tmp_path, policy_dict(tables={"persons": ["person_id"]}))
    with pytest.raises(PolicyError, match=r"'persons' is not an OMOP CDM v5.4 table.*person"):
        load_policy(path)


def test_unknown_column_is_refused_naming_valid_columns(tmp_path):
    path = write_policy(tmp_path, policy_dict(tables={"person": ["person_id", "shoe_size"]}))
    with pytest.raises(PolicyError, match=r"unknown column\(s\) shoe_size.*year_of_birth"):
        load_policy(path)


def test_malformed_hash_and_dp_settings_are_refused(tmp_path):
    path = write_policy(tmp_path, policy_dict(approved="not-a-hash"))
    with pytest.raises(PolicyError, match="64 hex digits"):
        load_policy(path)
    dp = {"epsilon": 0, "delta": 1e-5, "clipping_norm": 1.0}
    path = write_policy(tmp_path, policy_dict(differential_privacy=dp))
    with pytest.raises(PolicyError, match="differential_privacy.epsilon"):
        load_policy(path)


def test_dp_noise_follows_the_gaussian_mechanism(tmp_path):
    dp = {"epsilon": 2.0, "delta": 1e-5, "clipping_norm": 0.5}
    policy = load_policy(write_policy(tmp_path, policy_dict(differential_privacy=dp)))
    settings = policy.studies["bone_metastasis"].differential_privacy
    assert settings.noise_sigma == pytest.approx(0.5 * (2 * __import__("math").log(1.25 / 1e-5)) ** 0.5 / 2.0)


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(PolicyError, match="site policy file not found"):
        load_policy(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: [unclosed", encoding="utf-8")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)


def test_bundled_example_policy_is_valid():
    from pathlib import Path

    import fedomop.federated.governance

    example = Path(fedomop.federated.governance.__file__).parent / "policies" / "example_site.yaml"
    policy = load_policy(example)
    assert "bone_metastasis" in policy.studies

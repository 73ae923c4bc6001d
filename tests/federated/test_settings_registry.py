"""Typed training settings and the model registry (issue 12, item 2): no name checks, no loose options."""

from __future__ import annotations

import hashlib
import sys

import pytest

from fedomop.federated.errors import SettingsError
from fedomop.federated.models import registry
from fedomop.federated.models.base import FederatedModel
from fedomop.federated.server_app import RunSettings
from fedomop.federated.settings import TrainSettings


def test_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="unknown training setting 'roundz'"):
        TrainSettings.from_mapping({"roundz": 3})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rounds": -1}, "'rounds' = -1 is outside 0..10000"),
        ({"proximal-mu": 101.0}, "'proximal_mu' = 101.0 is outside 0.0..100.0"),
        ({"strategy": "fedsgd"}, "'strategy' = 'fedsgd' is not one of fedavg, fedprox"),
        ({"rounds": "3"}, "'rounds' must be int"),
        ({"compare_local": 1}, "'compare_local' must be bool"),
        ({"epochs": True}, "'epochs' must be int"),
    ],
)
def test_types_and_bounds(values: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        TrainSettings.from_mapping(values)


def test_dash_and_underscore_keys_are_the_same_and_ints_widen_to_float() -> None:
    settings = TrainSettings.from_mapping({"round-timeout": 30, "min_sites": 2})
    assert settings.round_timeout == 30.0 and isinstance(settings.round_timeout, float)
    assert settings.min_sites == 2


def test_digest_is_sha256_of_the_canonical_json() -> None:
    settings = TrainSettings(rounds=3)
    text = (
        '{"compare_local":true,"epochs":2,"local_rounds":0,"min_nodes":2,"min_sites":0,'
        '"out":"out/federated","proximal_mu":0.1,"requester":"hub","round_timeout":600.0,"rounds":3,'
        '"strategy":"fedavg","wait_for_nodes_s":120.0}'
    )
    assert settings.to_json() == text
    assert settings.digest() == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert TrainSettings.from_json(text, settings.digest()) == settings
    assert TrainSettings(rounds=4).digest() != settings.digest()


def test_a_tampered_setting_does_not_match_its_digest() -> None:
    sent = TrainSettings(rounds=3)
    with pytest.raises(SettingsError, match="digest"):
        TrainSettings.from_json(sent.to_json().replace('"rounds":3', '"rounds":300'), sent.digest())


def test_run_config_carries_only_study_model_and_settings() -> None:
    train = TrainSettings(rounds=3)
    config = {"study": "name: s", "model": "mlp", "settings": train.to_json(), "settings-digest": train.digest()}
    settings = RunSettings.from_run_config(config)
    assert (settings.model, settings.rounds, settings.study_text) == ("mlp", 3, "name: s")
    with pytest.raises(SettingsError, match="rounds"):
        RunSettings.from_run_config({**config, "rounds": 5})


@pytest.mark.parametrize(
    ("model", "rounds", "local_rounds", "local_total"),
    [  # site-alone trees/epochs: histogram = rounds; bagging/cyclic = rounds x local_rounds; MLP = rounds x epochs(2)
        ("xgboost-hist", 60, 5, 60),
        ("xgboost-bagging", 30, 2, 60),
        ("xgboost-cyclic", 12, 5, 60),
        ("mlp", 15, 1, 30),
    ],
)
def test_model_defaults(model: str, rounds: int, local_rounds: int, local_total: int) -> None:
    settings = RunSettings(study_text="", model=model)
    assert (settings.rounds, settings.local_rounds) == (rounds, local_rounds)
    assert settings.total_local_rounds(3) == local_total


def test_registry_names_every_model_and_imports_lazily() -> None:
    assert registry.names() == ("xgboost-hist", "xgboost-bagging", "xgboost-cyclic", "mlp")
    hist = registry.get("xgboost-hist")
    assert isinstance(hist, FederatedModel) and hist.name == "xgboost-hist" and hist.needs_every_site
    assert registry.get("xgboost-cyclic").turn_taking
    with pytest.raises(SettingsError, match="unknown model 'gbm'"):
        registry.get("gbm")


def test_registering_a_name_twice_with_another_target_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register("mlp", "somewhere:Else")


def test_looking_up_an_xgboost_model_does_not_import_torch() -> None:
    import subprocess

    code = (
        "import sys; from fedomop.federated.models import registry; registry.get('xgboost-bagging');"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

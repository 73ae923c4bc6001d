"""What a researcher's run config may decide at the hub, and what only the hub operator decides.

Red-team findings: the hub opened the run config's ``study`` as a file when it existed (a researcher could make the
hub read its own files and see fragments in ``flwr log``; a study text over 255 bytes crashed with "File name too
long"); ``out`` could be any absolute path on the hub; ``xgb_host="0.0.0.0"`` and ``certs=""`` in the training
settings opened histogram XGBoost's allreduce relay on every interface without TLS.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from fedomop.federated import runner, xgbserver
from fedomop.federated.errors import PolicyError, SettingsError
from fedomop.federated.governance.policy import load_policy
from fedomop.federated.server_app import RunSettings
from fedomop.federated.settings import (
    RUN_OUTPUT_ENV,
    XGB_CERTS_ENV,
    XGB_HOST_ENV,
    HubConfig,
    TrainSettings,
    is_wildcard,
)
from fedomop.federated.study import STUDIES_DIR


def _config(study: str, **train: object) -> dict[str, str]:
    settings = TrainSettings.from_mapping(train)
    return {"study": study, "model": "mlp", "settings": settings.to_json(), "settings-digest": settings.digest()}


def test_the_study_is_text_and_never_a_file_the_hub_opens(tmp_path):
    secret = tmp_path / "hub_secret.txt"
    secret.write_text("the hub's private key")
    hub = HubConfig(output_root=str(tmp_path / "runs"))
    settings = RunSettings.from_run_config(_config(str(secret)), hub)
    assert settings.study_text == str(secret)  # the path's own characters, not the file's content
    long_study = (STUDIES_DIR / "bone_metastasis.yaml").read_text()
    assert len(long_study.encode()) > 255  # once "File name too long" (OSError) at the hub
    assert RunSettings.from_run_config(_config(long_study), hub).study_text == long_study


@pytest.mark.parametrize("out", ["/tmp/elsewhere", "../escape", "a/../../escape", "..", "", "a\\..\\b", "C:/x"])
def test_a_run_cannot_write_outside_the_hubs_run_output_folder(tmp_path, out):
    with pytest.raises(SettingsError, match="not a relative folder name"):
        RunSettings.from_run_config(_config("name: s", out=out), HubConfig(output_root=str(tmp_path)))


def test_outputs_go_under_the_hubs_folder_and_simulation_keeps_its_own(tmp_path):
    hub = HubConfig(output_root=str(tmp_path / "runs"))
    settings = RunSettings.from_run_config(_config("name: s", out="my-study/run1"), hub)
    assert settings.output_dir == tmp_path / "runs" / "my-study" / "run1"
    assert RunSettings(study_text="", model="mlp", out=str(tmp_path / "sim")).output_dir == tmp_path / "sim"


@pytest.mark.parametrize(("key", "value"), [("xgb_host", "0.0.0.0"), ("certs", ""), ("xgb-host", "10.0.0.9")])
def test_the_allreduce_host_and_tls_are_not_training_settings(key, value):
    with pytest.raises(SettingsError, match="unknown training setting"):
        TrainSettings.from_mapping({key: value})
    forged = json.dumps({key.replace("-", "_"): value})
    with pytest.raises(SettingsError, match="unknown training setting"):
        RunSettings.from_run_config({"study": "name: s", "model": "xgboost-hist", "settings": forged})


def test_the_allreduce_host_and_tls_come_from_the_hubs_environment(tmp_path):
    env = {XGB_HOST_ENV: "10.0.0.5", XGB_CERTS_ENV: "", RUN_OUTPUT_ENV: str(tmp_path / "runs")}
    hub = HubConfig.from_env(env)
    assert (hub.xgb_host, hub.certs, hub.output_root) == ("10.0.0.5", "", str(tmp_path / "runs"))
    assert HubConfig.from_env(hub.env()) == hub
    settings = RunSettings.from_run_config(_config("name: s"), hub)
    assert (settings.xgb_host, settings.certs) == ("10.0.0.5", "")
    assert HubConfig.from_env({"FLWR_HOME": str(tmp_path)}).output_root == str(tmp_path / "fedomop-runs")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "0", "0.0", "", "*", "0:0::0", "::ffff:0.0.0.0", "[::ffff:0:0]"])
def test_a_wildcard_host_is_refused_everywhere(host):
    assert is_wildcard(host)
    with pytest.raises(SettingsError, match="every interface"):
        HubConfig(xgb_host=host)
    with pytest.raises(SettingsError, match="every interface"):
        HubConfig.from_env({XGB_HOST_ENV: host or "*"})
    with pytest.raises(SettingsError, match="would listen on every interface of this machine"):
        with xgbserver.federated_server(2, host=host):
            pass


def test_named_hosts_are_not_wildcards():
    for host in ("127.0.0.1", "10.0.0.5", "::1", "::ffff:127.0.0.1", "hub.example.org"):
        assert not is_wildcard(host)


def _policy(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"site": "site_a", "audit_log": "audit.jsonl", "studies": {}, **extra}))
    return path


def test_a_site_policy_can_refuse_a_plaintext_allreduce(tmp_path):
    from fedomop.federated.client_app import Site, _histogram_tls

    site = Site("site_a", "a.duckdb")
    strict = load_policy(_policy(tmp_path, require_allreduce_tls=True))
    assert strict.require_allreduce_tls
    with pytest.raises(PolicyError, match="requires mutual TLS"):
        _histogram_tls(site, False, strict)
    lenient = load_policy(_policy(tmp_path))
    assert not lenient.require_allreduce_tls and _histogram_tls(site, False, lenient) is None
    with pytest.raises(PolicyError, match="require_allreduce_tls"):
        load_policy(_policy(tmp_path, require_allreduce_tls="sometimes"))


def test_fedomop_train_sends_the_study_text_and_fetches_the_hubs_outputs(tmp_path, monkeypatch):
    """run_deployment against a stand-in ``flwr``: the hub side reads the TOML it was sent exactly as Flower does."""
    study = STUDIES_DIR / "bone_metastasis.yaml"
    hub = HubConfig(output_root=str(tmp_path / "hub_runs"))
    sent: dict[str, object] = {}

    def flwr(command: list[str], **_: object) -> subprocess.CompletedProcess:
        if command[1] == "run":
            config = tomllib.loads(Path(command[command.index("--run-config") + 1]).read_text())
            settings = RunSettings.from_run_config(config, hub)
            sent.update(config=config, settings=settings)
            folder = Path(hub.output_root) / "alice" / settings.out  # the ServerApp adds the requester's folder
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps({"settings": {"study": "bone_metastasis"}}))
            (folder / "model.json").write_text("{}")
            return subprocess.CompletedProcess(command, 0, json.dumps({"run-id": 7}), "")
        return subprocess.CompletedProcess(command, 0, json.dumps({"runs": [{"status": "finished:completed"}]}), "")

    monkeypatch.setattr(runner.subprocess, "run", flwr)
    monkeypatch.setattr(runner, "write_model_card", lambda *args: None)
    out = tmp_path / "mine"
    result = runner.run_deployment(study, "fedomop", out=out, hub_output=hub.output_root, model="mlp", rounds=1)
    settings = sent["settings"]
    assert isinstance(settings, RunSettings)
    assert settings.study_text == study.read_text()
    assert not Path(settings.out).is_absolute() and settings.out.startswith("mine-")
    assert result == {"settings": {"study": "bone_metastasis"}} and (out / "model.json").exists()
    with pytest.raises(Exception, match="not readable here"):
        runner.run_deployment(study, "fedomop", out=out, hub_output=tmp_path / "elsewhere", model="mlp")

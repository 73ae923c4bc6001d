"""Fault tolerance, default governance and TLS wired into the project's own app (server_app/client_app/deploy).

The process test runs a real SuperLink and three SuperNodes on 127.0.0.1, kills one
SuperNode mid-training (FedAvg MLP, min_sites=2) and checks that the run finishes and
that its result and model card name the missing site for the rounds it missed.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from flwr.app import ConfigRecord, Message, RecordDict

from fedomop.federated.client_app import NO_POLICY, Site, _governed
from fedomop.federated.errors import PolicyError
from fedomop.federated.faults import PEER_LOST, FaultTolerantGrid
from fedomop.federated.governance import enforce_request
from fedomop.federated.models.xgb_histogram import collect
from fedomop.federated.study import load_study
from fedomop.harmonize.ground.errors import FedomopError

from .test_faults import ScriptedLink, task_identity  # noqa: F401 - the fixture is used by name

EXAMPLE_POLICY = Path(__file__).parents[2] / "federated" / "governance" / "policies" / "example_site.yaml"


def test_a_site_without_a_policy_refuses_and_the_opt_out_is_explicit():
    study = load_study("bone_metastasis")
    with pytest.raises(PolicyError, match="no governance policy") as info:
        _governed(Site("site_a", "site_a.duckdb"), study, "hub")
    assert NO_POLICY in info.value.fix
    assert _governed(Site("site_a", "site_a.duckdb", policy=NO_POLICY), study, "hub") is None


def test_example_policy_admits_the_bundled_study(tmp_path):
    """The example names the study's real outcome concept (SNOMED 128462008, concept 432851)."""
    data = yaml.safe_load(EXAMPLE_POLICY.read_text())
    codes = {(c["vocabulary"], c["code"]) for c in data["studies"]["bone_metastasis"]["concept_sets"]}
    assert ("SNOMED", "128462008") in codes
    data["audit_log"] = str(tmp_path / "audit.jsonl")
    data["studies"]["bone_metastasis"]["approved_apps"] = [{"sha256": "b" * 64}]
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(data))
    assert enforce_request(policy, load_study("bone_metastasis"), "b" * 64, "hub") is not None


def test_histogram_collect_names_the_site_that_did_not_answer():
    """The allreduce needs every rank: a hung site stops the run after the round timeout, by name."""
    grid = FaultTolerantGrid(
        ScriptedLink({1: "ok", 2: "ok", 3: "hang"}), round_timeout=0.5, min_sites=2, poll_interval=0.05
    )
    grid.site_names.update({1: "site_a", 2: "site_b", 3: "site_c"})
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type="train") for n in (1, 2, 3)
    ]
    started = time.monotonic()
    with pytest.raises(FedomopError, match=r"every site is needed and site_c did not answer"):
        collect(grid, messages, "histogram training")
    assert time.monotonic() - started < 5


def test_histogram_survivors_of_a_killed_site_are_not_named_missing():
    """Issue 19: a killed site made the run report all sites missing; its survivors fail with PEER_LOST."""
    grid = FaultTolerantGrid(
        ScriptedLink({1: "refuse", 2: "refuse", 3: "hang"}), round_timeout=0.5, min_sites=2, poll_interval=0.05
    )
    grid.site_names.update({1: "site_a", 2: "site_b", 3: "site_c"})
    original = grid._exchange

    def survivors_lost_a_peer(messages, limit):  # the real sites' reply once their allreduce gives up
        replies = original(messages, limit)
        for reply in replies.values():
            if reply.has_error():
                reply.error.__dict__["_reason"] = f"site: StudyError: histogram training stopped: {PEER_LOST}"
        return replies

    grid._exchange = survivors_lost_a_peer
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type="train") for n in (1, 2, 3)
    ]
    with pytest.raises(FedomopError) as info:
        collect(grid, messages, "histogram training")
    text = str(info.value).split("fix:")[0]
    assert "missing: site_c; failed: none; 2 other site(s) stopped with it" in text
    assert "site_a" not in text and "site_b" not in text
    assert grid.report.missing_sites == ["site_c"]


def _wait_for_training(log: Path, site: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and any(
            json.loads(line)["site"] == site and json.loads(line)["message_type"] == "train"
            for line in log.read_text().splitlines()
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"{site} never trained")


@pytest.mark.slow
def test_supernode_killed_mid_training_leaves_a_finished_run_naming_it(tmp_path):
    from fedomop.federated.deploy import LocalDeployment
    from fedomop.federated.runner import run_deployment
    from fedomop.federated.testing import DEFAULT_SITES, build_sites

    sites = build_sites(tmp_path / "sites", DEFAULT_SITES[:3], scale=0.3)
    log = tmp_path / "replies.jsonl"
    out = tmp_path / "out"
    outcome: dict = {}
    deployment = LocalDeployment(
        tmp_path / "deploy",
        {name: str(path) for name, path in sites.items()},
        policies=dict.fromkeys(sites, NO_POLICY),
        message_log=str(log),
    )
    with deployment as hub:

        def train() -> None:
            try:
                outcome["result"] = run_deployment(
                    STUDY, hub.connection, out=out, flwr_home=hub.flwr_home, model="mlp", rounds=2, epochs=1,
                    min_nodes=3, min_sites=2, round_timeout=60, compare_local=False, timeout_s=400,
                )  # fmt: skip
            except Exception as error:  # reported by the main thread
                outcome["error"] = error

        started = time.monotonic()
        runner = threading.Thread(target=train)
        runner.start()
        _wait_for_training(log, "site_c", 240)
        hub.kill_site("site_c")
        runner.join(420)
        seconds = time.monotonic() - started
        if "result" not in outcome:
            print(
                hub.logs(),
                outcome.get("error"),
                (out / "faults.json").read_text() if (out / "faults.json").exists() else "",
            )
        assert "result" in outcome, str(outcome.get("error"))[-3000:]
    result = outcome["result"]
    faults = result["faults"]
    assert faults["finished"] and faults["missing_sites"] == ["site_c"], faults
    missed = [r for r in faults["rounds"] if "site_c" in r["missing"] or "site_c" in r["failed"]]
    assert missed and all(set(r["answered"]) == {"site_a", "site_b"} for r in missed)
    describe, moments = faults["rounds"][:2]
    assert set(describe["answered"]) == set(sites)  # named from the describe replies
    assert "site_c" in moments["answered"]  # alive before training, then killed
    first_miss = faults["rounds"].index(missed[0])
    assert all("site_c" not in r["answered"] for r in faults["rounds"][first_miss:])
    assert faults["rounds"][-1]["message_type"] == "evaluate.many"  # the final evaluation ran without it
    assert set(result["federated"]) == {"site_a", "site_b"}  # no held-out metrics from a dead site
    card = json.loads((out / "model_card.json").read_text())
    assert card["missing_sites"] == ["site_c"] and card["faults"]["rounds"] == faults["rounds"]
    print(f"killed-site run: {seconds:.1f} s, {len(faults['rounds'])} exchanges, {len(missed)} missed by site_c")


STUDY = Path(__file__).parents[2] / "federated" / "studies" / "bone_metastasis.yaml"


@pytest.mark.slow
def test_tls_deployment_with_authenticated_sites_trains_histogram_xgboost_over_tls(tmp_path):
    """LocalDeployment(certs=...): TLS SuperLink, registered SuperNodes, and XGBoost's allreduce with mutual TLS."""
    from fedomop.federated.deploy import LocalDeployment
    from fedomop.federated.runner import run_deployment
    from fedomop.federated.testing import DEFAULT_SITES, build_sites

    sites = build_sites(tmp_path / "sites", DEFAULT_SITES[:2], scale=0.3)
    pki = tmp_path / "pki"
    with LocalDeployment(
        tmp_path / "deploy",
        {name: str(path) for name, path in sites.items()},
        policies=dict.fromkeys(sites, NO_POLICY),
        certs=pki,
    ) as hub:
        try:
            result = run_deployment(
                STUDY, hub.connection, out=tmp_path / "out", flwr_home=hub.flwr_home, model="xgboost-hist",
                rounds=5, min_nodes=2, compare_local=False, timeout_s=240,
            )  # fmt: skip
        except Exception:
            print(hub.logs())
            raise
        config = (hub.flwr_home / "config.toml").read_text()
    assert (pki / "site_a.tls.pem").exists() and (pki / "site_b.tls.key").stat().st_mode & 0o077 == 0
    assert "root-certificates" in config and "insecure" not in config
    assert set(result["federated"]) == {"site_a", "site_b"} and result["faults"]["finished"]
    assert result["settings"]["certs"] == str(pki)

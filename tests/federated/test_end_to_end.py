"""End to end: the CLI in the simulation engine, and a real SuperLink with four SuperNodes on 127.0.0.1.

Both check what a site sends: every reply a site produced is recorded by shape
(record, key, dtype, size -- never values) and must be model parameters or
aggregates, with no array as long as a site's person count.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedomop.cli import app
from fedomop.federated.client_app import NO_POLICY
from fedomop.federated.deploy import LocalDeployment
from fedomop.federated.runner import run_deployment, simulate

STUDY = Path(__file__).parents[2] / "federated" / "studies" / "bone_metastasis.yaml"
ALLOWED_ARRAYS = {"0", "edges", "edge_sizes", "quantiles", "counts", "sum", "sumsq", "count", "norm.mean", "norm.std"}
ALLOWED_METRICS = {"auroc", "auprc", "brier", "cal_intercept", "cal_slope", "ece", "num-examples"}
ALLOWED_METRICS |= {"n-train", "n-test", "n-positive-train"}


def assert_only_aggregates(log: Path, result: dict) -> None:
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["site"] for e in entries} == set(result["sites"])
    person_counts = {
        name: {s["n_train"], s["n_test"], s["n_train"] + s["n_test"]} for name, s in result["sites"].items()
    }
    kinds = set()
    for entry in entries:
        for leaf in entry["content"]:
            kinds.add((entry["message_type"], leaf["kind"]))
            if leaf["kind"] == "array":
                assert leaf["key"] in ALLOWED_ARRAYS or leaf["key"].startswith("net."), leaf
                assert not set(leaf["shape"]) & person_counts[entry["site"]], f"per-person array sent: {leaf}"
                if leaf["key"] == "0":
                    assert leaf["dtype"] == "uint8"  # an XGBoost model as JSON bytes
            elif leaf["kind"] == "metric":
                assert leaf["key"] in ALLOWED_METRICS and leaf["length"] == 1, leaf
            elif leaf["record"] == "audit":  # a governed site's audit-log head (and DP spend, when it applies)
                assert leaf["key"] in {"site", "seq", "sha256", "dp-epsilon-total", "dp-delta"}, leaf
            else:
                assert leaf["key"] in {"site", "data-version"}, leaf
    assert ("query.sketch", "array") in kinds and ("evaluate.many", "metric") in kinds


def assert_model_card(out: Path, sites: set[str]) -> dict:
    card = json.loads((out / "model_card.json").read_text())
    assert card["study"]["name"] == "bone_metastasis" and len(card["study"]["sha256"]) == 64
    assert set(card["sites"]) == sites
    assert all(len(s["data_version"]) == 16 and s["n_train"] > s["n_test"] > 0 for s in card["sites"].values())
    assert len(card["app_hash"]) == 64
    assert (out / "model.json").exists() or (out / "model.pt").exists()
    return card


@pytest.mark.slow
def test_cli_trains_histogram_xgboost_within_pooled_auroc(sample_sites, tmp_path):
    log = tmp_path / "replies.jsonl"
    out = tmp_path / "hist"
    sites = [str(p) for p in sample_sites.values()]
    args = ["train", "--study", str(STUDY), "--model", "xgboost-hist", "--out", str(out), "--message-log", str(log)]
    result = CliRunner().invoke(app, [*args, *(x for s in sites for x in ("--sites", s))])
    assert result.exit_code == 0, result.output
    assert "federated (xgboost-hist)" in result.output and "pooled (reference)" in result.output
    outcome = json.loads((out / "result.json").read_text())
    federated, pooled = outcome["federated_summary"]["auroc"], outcome["pooled_summary"]["auroc"]
    assert abs(federated - pooled) <= 0.005, (federated, pooled)
    assert federated > max(s["auroc"] for s in outcome["local_summary"].values())
    assert_only_aggregates(log, outcome)
    assert outcome["flower_rounds"] == 2 and outcome["traffic"]["received"]["histogram"] > 0
    card = assert_model_card(out, set(sample_sites))
    assert card["model"] == "xgboost-hist" and card["metrics"]["pooled"]["weighted"]["auroc"] == pooled


@pytest.mark.slow
def test_fedprox_mlp_in_simulation(sample_sites, tmp_path):
    log = tmp_path / "replies.jsonl"
    outcome = simulate(
        STUDY,
        list(sample_sites.values()),
        out=tmp_path / "mlp",
        model="mlp",
        strategy="fedprox",
        rounds=3,
        message_log=log,
    )
    assert outcome["flower_rounds"] == 4  # moments + 3 FedProx rounds
    assert {int(r) for r in outcome["history"]} == {1, 2, 3}
    assert outcome["federated_summary"]["auroc"] > 0.7
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["message_type"] for e in entries} >= {"query.moments", "train", "evaluate", "evaluate.many"}
    assert_model_card(tmp_path / "mlp", set(sample_sites))


@pytest.mark.slow
def test_real_superlink_and_four_supernodes(sample_sites, tmp_path):
    log = tmp_path / "replies.jsonl"
    with LocalDeployment(
        tmp_path / "deploy",
        {k: str(v) for k, v in sample_sites.items()},
        policies=dict.fromkeys(sample_sites, NO_POLICY),  # sample data: explicitly ungoverned
        message_log=str(log),
    ) as hub:
        try:
            outcome = run_deployment(
                STUDY,
                hub.connection,
                out=tmp_path / "out",
                flwr_home=hub.flwr_home,
                model="xgboost-hist",
                rounds=30,
                min_nodes=4,
                timeout_s=600,
            )
        except Exception:
            print(hub.logs())
            raise
    assert set(outcome["sites"]) == set(sample_sites)
    assert hub.state_file.stat().st_size > 0  # the SuperLink kept its state in a database file
    assert "pooled" not in outcome  # rows never meet on a real deployment
    assert outcome["federated_summary"]["auroc"] > 0.75
    assert_only_aggregates(log, outcome)
    assert_model_card(tmp_path / "out", set(sample_sites))


@pytest.mark.slow
def test_governed_sites_on_a_real_superlink_build_each_matrix_once_per_run(sample_sites, tmp_path, monkeypatch):
    """The sites as `fedomop site start` runs them (policy, --isolation process, fedomop's executor): the run is
    admitted and audited at every site, and each executor built the study's matrix once for the whole run (the
    five exchanges of histogram XGBoost share it), then removed it when it stopped."""
    from fedomop.federated.governance.approval import fab_hash
    from fedomop.federated.runner import APP_DIR
    from fedomop.federated.testing import approving_policies

    temporary = Path(tempfile.mkdtemp(prefix="fo-", dir="/tmp"))  # short: sockets live inside TMPDIR too
    monkeypatch.setenv("TMPDIR", str(temporary))  # where the executors make their private cache folders
    policies = approving_policies(list(sample_sites), tmp_path / "policies", STUDY)
    log = tmp_path / "replies.jsonl"
    sites = {k: str(v) for k, v in sample_sites.items()}
    with LocalDeployment(tmp_path / "deploy", sites, policies=policies, message_log=str(log), executors=True) as hub:
        try:
            outcome = run_deployment(
                STUDY, hub.connection, out=tmp_path / "out", flwr_home=hub.flwr_home,
                model="xgboost-hist", rounds=20, min_nodes=4, timeout_s=600,
            )  # fmt: skip
        except Exception:
            print(hub.logs())
            raise
        caches = sorted(temporary.glob("fedomop-features-*"))
        assert len(caches) == 4  # one private folder per site executor
        assert all(len(list(c.glob("*.features.npz"))) == 1 for c in caches)  # one matrix per site for the run
    assert not list(temporary.glob("fedomop-features-*"))  # removed when the executors stopped
    shutil.rmtree(temporary, ignore_errors=True)
    assert outcome["federated_summary"]["auroc"] > 0.7
    assert_only_aggregates(log, outcome)
    app_hash = fab_hash(APP_DIR)
    for site in sample_sites:
        audited = [json.loads(line) for line in (tmp_path / "policies" / f"{site}.audit.jsonl").read_text().splitlines()]
        admitted = [e for e in audited if e.get("outcome") not in {"refused", "stopped"}]
        assert admitted and {e["requester"] for e in audited} == {"unauthenticated"}
        assert {e["app_hash"] for e in audited} == {app_hash}

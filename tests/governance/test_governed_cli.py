"""The governed deployment as an operator starts it, only through ``fedomop`` commands, on 127.0.0.1.

``certs create`` + ``certs issue`` -> ``hub start --certs`` (gate in front of a loopback SuperLink)
-> ``site start --certs --policy`` (SuperNode ``--isolation process`` + executor) -> researchers
``hub connect`` with their certificates. Then: no certificate is refused by the gate; a submitted
app the site never approved is refused before a byte of it runs (marker file); an authenticated but
unapproved researcher is refused by the site; the approved researcher's ``fedomop train --federation``
trains, and the model card names the requester from the gate's ledger, not the run's own settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedomop.federated.governance import auditlog
from fedomop.federated.governance.approval import fab_hash, study_digest
from fedomop.federated.study import load_study
from tests.governance.flower_procs import BIN, Cluster, flower_env, free_port
from tests.governance.test_boundary import _app

pytestmark = pytest.mark.slow
APP_DIR = Path(__file__).parents[2] / "federated" / "flower_app"
FEDOMOP = [sys.executable, "-m", "fedomop"]


def _fedomop(*args: str, home: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = flower_env(home) if home else None
    return subprocess.run([*FEDOMOP, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _together(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Several short ``fedomop`` commands at once (each pays the interpreter's start-up)."""
    started = [
        subprocess.Popen([*FEDOMOP, *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands
    ]
    outputs = [p.communicate(timeout=120) for p in started]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(started, outputs, strict=True)]


def _policy(path: Path, approvals: list[dict]) -> None:
    study = load_study("bone_metastasis")
    rules = {
        "approvals": approvals,
        "tables": study.tables(),
        "concept_sets": [{"vocabulary": c.vocabulary, "code": c.code} for c in study.all_concepts()],
        "min_cohort_size": 20,
    }
    path.write_text(
        yaml.safe_dump({"site": "site_a", "audit_log": "site_a.audit.jsonl", "studies": {"bone_metastasis": rules}})
    )


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait(proc, port: int, timeout: float = 60) -> None:  # noqa: ANN001 - flower_procs.Proc
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        assert proc.popen.poll() is None and time.monotonic() < deadline, proc.text()[-3000:]
        time.sleep(0.2)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    work = tmp_path_factory.mktemp("governed")
    certs = work / "pki"
    made = _fedomop("certs", "create", "--out", str(certs), "--site", "site_a")
    assert made.returncode == 0, made.stdout + made.stderr
    issue = [
        ("certs", "issue", "--certs", str(certs), "--name", name, "--role", "researcher") for name in ("alice", "bob")
    ]
    for name, issued in zip(("alice", "bob"), _together(*issue), strict=True):
        assert issued.returncode == 0 and f"{name}.researcher.pem" in issued.stdout, issued.stdout + issued.stderr
    from fedomop.federated.testing import DEFAULT_SITES, build_sites

    database = build_sites(work / "sites", DEFAULT_SITES[:1], scale=0.3)["site_a"]
    policy = work / "site_a.yaml"
    approved = {"app_sha256": fab_hash(APP_DIR), "study_digest": study_digest(load_study("bone_metastasis"))}
    _policy(policy, [{**approved, "requester": "alice"}])
    cluster = Cluster(work, work / "hub_home")
    gate, runtime = free_port(), free_port()
    # the hub runs the installed app (always) and, to show that a site refuses what its policy does not approve
    # even when the hub runs it, the attack app; any other bundle is refused by the gate
    hub_apps = ["--approved-app", fab_hash(_app(work / "attack_app", work / "MARKER"))]
    hub = cluster.start("hub", [*FEDOMOP, "hub", "start", "--port", str(gate), "--certs", str(certs),
                                "--flwr-home", str(work / "hub_home"), "--in-memory-state", *hub_apps])  # fmt: skip
    _wait(hub, gate)
    site = cluster.start("site", [*FEDOMOP, "site", "start", "--db", str(database), "--site", "site_a",
                                  "--superlink", f"127.0.0.1:{gate}", "--certs", str(certs), "--policy", str(policy),
                                  "--runtime-port", str(runtime)])  # fmt: skip
    homes = {}
    for name in ("alice", "bob"):
        homes[name] = work / f"{name}_home"
        tunnel = cluster.start(f"connect-{name}", [*FEDOMOP, "hub", "connect", "--gate", f"127.0.0.1:{gate}",
                                                   "--cert", str(certs / f"{name}.researcher.pem"),
                                                   "--key", str(certs / f"{name}.researcher.key"),
                                                   "--ca", str(certs / "ca.crt"), "--connection", name,
                                                   "--flwr-home", str(homes[name])])  # fmt: skip
        assert tunnel.wait_for(f"connected as {name} (researcher)", 60), tunnel.text()
    assert site.wait_for("executor on", 60) and site.popen.poll() is None, site.text()
    cluster.gate, cluster.certs, cluster.homes, cluster.hub = gate, certs, homes, hub  # type: ignore[attr-defined]
    cluster.site_args = ["site", "start", "--db", str(database), "--site", "site_a", "--superlink",  # type: ignore[attr-defined]
                         f"127.0.0.1:{gate}", "--certs", str(certs), "--policy", str(policy)]  # fmt: skip
    cluster.runtime = runtime  # type: ignore[attr-defined]
    yield cluster
    cluster.stop_all()


def _flwr(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *args], capture_output=True, text=True, env=flower_env(home), timeout=90)


def test_governed_by_default_and_ungoverned_only_loud_and_local(tmp_path):
    no_certs, wildcard, remote, no_policy = (
        " ".join(done.stderr.split()) if done.returncode == 2 else f"exit {done.returncode}: {done.stderr}"
        for done in _together(
            ("hub", "start", "--flwr-home", str(tmp_path / "h")),
            ("hub", "start", "--host", "0.0.0.0", "--ungoverned", "--flwr-home", str(tmp_path / "h")),
            ("site", "start", "--db", str(tmp_path / "a.duckdb"), "--superlink", "10.1.2.3:9091", "--ungoverned"),
            ("site", "start", "--db", str(tmp_path / "a.duckdb")),
        )
    )
    assert "governed deployment needs --certs" in no_certs
    assert "every interface" in wildcard
    assert "may only live on this machine" in remote
    assert "needs --policy" in no_policy


def test_a_second_site_on_a_taken_port_or_an_unusable_tmpdir_is_refused_before_anything_starts(net, tmp_path):
    taken = _fedomop(*net.site_args, "--runtime-port", str(net.runtime))
    said = " ".join(taken.stderr.split())
    assert taken.returncode == 2 and f"port {net.runtime} on 127.0.0.1 is already in use" in said, said
    assert "Traceback" not in taken.stderr + taken.stdout
    env = {**os.environ, "TMPDIR": str(tmp_path / "no-such-folder")}
    bad_tmp = subprocess.run([*FEDOMOP, *net.site_args, "--runtime-port", str(free_port())],
                             capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    said = " ".join(bad_tmp.stderr.split())
    assert bad_tmp.returncode == 2 and "TMPDIR=" in said and "not a folder this user can write" in said, said


def test_the_gate_refuses_a_caller_without_a_certificate(net):
    home = net.workdir / "anon_home"
    from fedomop.federated.governance.certs import write_flower_connection

    write_flower_connection(home, "public", f"127.0.0.1:{net.gate}", net.certs / "ca.crt")
    listed = _flwr(home, "ls", "public", "--format", "json")
    assert listed.returncode != 0 or not json.loads(listed.stdout)["success"]
    ledger = (net.workdir / "hub_home" / "gate_ledger.jsonl").read_text()
    assert "needs a client certificate" in ledger
    alice = _flwr(net.homes["alice"], "ls", "alice", "--format", "json")
    assert alice.returncode == 0 and json.loads(alice.stdout)["success"], alice.stdout + alice.stderr


def test_an_unapproved_app_is_refused_before_any_of_it_runs(net):
    marker, result = net.workdir / "MARKER", net.workdir / "attack_result.json"
    app = net.workdir / "attack_app"  # made by the fixture: the hub lists it, the site does not
    study = net.workdir / "study.yaml"
    study.write_text(load_study("bone_metastasis").to_yaml())
    config = f'study-file="{study}" result="{result}" requester="alice"'
    submitted = _flwr(net.homes["alice"], "run", str(app), "alice", "--run-config", config, "--format", "json")
    assert json.loads(submitted.stdout)["success"], submitted.stdout + submitted.stderr
    deadline = time.monotonic() + 90
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    (reason,) = json.loads(result.read_text())
    assert "not approved" in reason and not marker.exists()
    refused = [r for r in auditlog.read(net.workdir / "site_a.audit.jsonl") if r["outcome"] == "refused"]
    assert refused[-1]["action"] == "execute" and refused[-1]["requester"] == "alice"


def test_an_authenticated_but_unapproved_researcher_is_refused_by_the_site(net):
    out = net.workdir / "bob_out"
    trained = _fedomop("train", "--study", "bone_metastasis", "--model", "xgboost-bagging", "--rounds", "1",
                       "--federation", "bob", "--flwr-home", str(net.homes["bob"]), "--min-nodes", "1",
                       "--round-timeout", "60", "--out", str(out), home=net.homes["bob"], timeout=300)  # fmt: skip
    said = " ".join(trained.stderr.split())  # rich wraps; the fix line quotes the hub's own log
    assert trained.returncode == 2 and said.startswith("error (FedomopError)") and "'bob' is not approved" in said
    refused = [r for r in auditlog.read(net.workdir / "site_a.audit.jsonl") if r["outcome"] == "refused"]
    assert refused[-1]["requester"] == "bob" and "requester 'bob' is not approved" in refused[-1]["reason"]
    assert not (out / "model_card.json").exists()


def test_the_approved_researcher_trains_and_the_card_names_the_gate_identity(net):
    out = net.workdir / "alice_out"
    settings = ["--round-timeout", "120", "--out", str(out), "--no-compare-local",
                "--hub-output", str(net.workdir / "hub_home" / "fedomop-runs")]  # fmt: skip
    trained = _fedomop("train", "--study", "bone_metastasis", "--model", "xgboost-bagging", "--rounds", "1",
                       "--federation", "alice", "--flwr-home", str(net.homes["alice"]), "--min-nodes", "1",
                       *settings, home=net.homes["alice"], timeout=420)  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr + net.hub.text()[-3000:]
    card = json.loads((out / "model_card.json").read_text())
    assert card["requester"] == {"name": "alice", "source": "gate ledger (client certificate)"}
    assert set(card["sites"]) == {"site_a"} and card["audit_heads"]["site_a"]["sha256"]
    granted = [r for r in auditlog.read(net.workdir / "site_a.audit.jsonl") if r["outcome"] != "refused"]
    assert granted and {r["requester"] for r in granted} == {"alice"}


def test_the_hub_refuses_a_bundle_its_operator_did_not_list(net):
    """Red team: any certified researcher's bundle ran as code in the hub's ServerApp (read ca.key, forged ledger
    lines). A bundle not on the hub's list never starts: `flwr run` fails, the gate's ledger says why."""
    marker = net.workdir / "HUB_MARKER"
    app = _app(net.workdir / "unlisted_app", marker)
    submitted = _flwr(net.homes["alice"], "run", str(app), "alice", "--format", "json")
    assert submitted.returncode != 0 or not json.loads(submitted.stdout)["success"], submitted.stdout
    time.sleep(2)
    assert not marker.exists()
    ledger = (net.workdir / "hub_home" / "gate_ledger.jsonl").read_text()
    assert f"app {fab_hash(app)} is not one the hub operator approved" in ledger

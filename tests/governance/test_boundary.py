"""Issue 19 attacks replayed on a real loopback hub: mTLS gate in front of a loopback SuperLink, one site
whose SuperNode runs ``--isolation process`` with fedomop's executor beside it.

(a) an unapproved bundle whose ClientApp module writes a marker file at import is refused, audited, and
    the marker never appears; (b) the same bundle approved for another study definition is refused;
(c) without a client certificate the Control API refuses ``flwr ls``, ``flwr run`` and node registration;
    a researcher certificate may list and submit (not register), and the site's audit log names the
    certificate's holder even when run_config claims someone else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedomop.federated.deploy import write_connection
from fedomop.federated.governance import auditlog
from fedomop.federated.governance.certs import create_credentials, create_node_keys, issue_user_cert, superlink_tls_args
from fedomop.federated.study import load_study
from tests.governance.flower_procs import BIN, Cluster, flower_env, free_port

pytestmark = pytest.mark.slow

SERVER_APP = """
import json
from pathlib import Path
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()

@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = []
    while not nodes:
        nodes = list(grid.get_node_ids())
    study = Path(str(context.run_config["study-file"])).read_text()
    config = ConfigRecord({"study": study, "requester": "mallory"})
    messages = [Message(RecordDict({"config": config}), dst_node_id=n, message_type="query.describe") for n in nodes]
    replies = list(grid.send_and_receive(messages, timeout=120))
    out = [r.error.reason if r.has_error() else "content" for r in replies]
    Path(str(context.run_config["result"])).write_text(json.dumps(out))
"""

CLIENT_APP = """
from pathlib import Path
Path({marker!r}).write_text("submitted code ran at the site")
from flwr.clientapp import ClientApp
app = ClientApp()
"""

PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "attack"
version = "1.0.0"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "mallory"

[tool.flwr.app.components]
serverapp = "attack.server_app:app"
clientapp = "attack.client_app:app"

[tool.flwr.app.config]
study-file = ""
result = ""
requester = ""
"""


def _app(folder: Path, marker: Path) -> Path:
    (folder / "attack").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / "attack" / "__init__.py").write_text("")
    (folder / "attack" / "server_app.py").write_text(SERVER_APP)
    (folder / "attack" / "client_app.py").write_text(CLIENT_APP.format(marker=str(marker)))
    return folder


def _policy(path: Path, study_name: str, approvals: list[dict]) -> None:
    study = load_study(study_name)
    data = {
        "site": "site_a",
        "audit_log": "site_a.audit.jsonl",
        "studies": {
            study_name: {
                "approvals": approvals,
                "tables": study.tables(),
                "concept_sets": [{"vocabulary": c.vocabulary, "code": c.code} for c in study.all_concepts()],
                "min_cohort_size": 20,
            }
        },
    }
    path.write_text(yaml.safe_dump(data))


def _flwr(hub: Cluster, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "flwr"), *args], capture_output=True, text=True, env=flower_env(hub.flwr_home), timeout=timeout
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    work = tmp_path_factory.mktemp("boundary")
    certs = work / "certs"
    create_credentials(certs, ["site_a"])
    issue_user_cert(certs, "researcher", "alice")
    issue_user_cert(certs, "operator", "olga")
    cluster = Cluster(work, work / "flwr_home")
    internal, public, alice_port, olga_port, runtime = (free_port() for _ in range(5))
    cluster.superlink(internal, [*superlink_tls_args(certs), "--disable-runtime-dependency-installation"])
    gate = cluster.start("gate", [sys.executable, "-m", "fedomop.federated.governance.gate", "gate",
                                  "--certs", str(certs), "--listen", f"127.0.0.1:{public}",
                                  "--upstream", f"127.0.0.1:{internal}", "--ledger", str(work / "ledger.jsonl")])  # fmt: skip
    for name, port in (("alice", alice_port), ("olga", olga_port)):
        role = "researcher" if name == "alice" else "operator"
        cluster.start(f"connect-{name}", [sys.executable, "-m", "fedomop.federated.governance.gate", "connect",
                                          "--gate", f"127.0.0.1:{public}", "--port", str(port), "--ca", str(certs / "ca.crt"),
                                          "--cert", str(certs / f"{name}.{role}.pem"),
                                          "--key", str(certs / f"{name}.{role}.key")])  # fmt: skip
    time.sleep(3)
    assert gate.popen.poll() is None, gate.text()
    write_connection(cluster.flwr_home, "olga", f"127.0.0.1:{olga_port}")
    write_connection(cluster.flwr_home, "alice", f"127.0.0.1:{alice_port}")
    config = cluster.flwr_home / "config.toml"
    config.write_text(
        config.read_text().replace('default = "alice"\n', "")
        + f'\n[superlink.olga]\naddress = "127.0.0.1:{olga_port}"\ninsecure = true\n'
        + f'\n[superlink.public]\naddress = "127.0.0.1:{public}"\nroot-certificates = "{certs / "ca.crt"}"\n'
    )
    registered = _flwr(cluster, "supernode", "register", str(certs / "site_a.pub"), "olga", "--format", "json")
    assert '"node-id"' in registered.stdout, registered.stdout + registered.stderr + gate.text()
    from fedomop.federated.testing import DEFAULT_SITES, build_sites

    database = build_sites(work / "sites", DEFAULT_SITES[:1], scale=0.3)["site_a"]
    policy = work / "site_a.yaml"
    _policy(policy, "bone_metastasis", [])
    cluster.supernode("site_a", public, ["--root-certificates", str(certs / "ca.crt"),
                                         "--auth-supernode-private-key", str(certs / "site_a.key"),
                                         "--isolation", "process", "--port", str(runtime),
                                         "--node-config", f'site="site_a" db="{database}" policy="{policy}"'])  # fmt: skip
    cluster.start("executor", [sys.executable, "-m", "fedomop.federated.executor", "serve",
                               "--runtime-api-address", f"127.0.0.1:{runtime}", "--policy", str(policy)])  # fmt: skip
    cluster.certs, cluster.policy, cluster.public = certs, policy, public  # type: ignore[attr-defined]
    yield cluster
    cluster.stop_all()


def _submit(hub: Cluster, tag: str, study_name: str = "bone_metastasis") -> tuple[Path, Path]:
    work = hub.workdir / tag
    marker, result = hub.workdir / "MARKER", work / "result.json"
    app = hub.workdir / "app"
    if not app.exists():  # one bundle for every submission: same bytes, same hash
        _app(app, marker)
    work.mkdir()
    study_file = work / "study.yaml"
    study_file.write_text(load_study(study_name).to_yaml())
    config = f'study-file="{study_file}" result="{result}" requester="mallory"'
    submitted = _flwr(hub, "run", str(app), "alice", "--run-config", config, "--format", "json")
    assert json.loads(submitted.stdout)["success"], submitted.stdout + submitted.stderr
    deadline = time.monotonic() + 150
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(1)
    assert result.exists(), "\n".join(p.text()[-2000:] for p in hub.procs)
    return marker, result


def test_control_api_needs_an_operator_issued_certificate(hub):
    refused = _flwr(hub, "ls", "public", "--format", "json")
    assert refused.returncode != 0 or not json.loads(refused.stdout)["success"]
    assert "client certificate" in (hub.workdir / "ledger.jsonl").read_text()
    rogue_pub = create_node_keys(hub.workdir, "rogue")[1]
    assert _flwr(hub, "supernode", "register", str(rogue_pub), "public").returncode != 0
    assert _flwr(hub, "supernode", "register", str(rogue_pub), "alice").returncode != 0  # researcher: no
    assert "may not call register-node" in (hub.workdir / "ledger.jsonl").read_text()
    listed = _flwr(hub, "ls", "alice", "--format", "json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["success"], listed.stdout + listed.stderr


def test_unapproved_bundle_is_refused_before_any_of_it_runs(hub):
    marker, result = _submit(hub, "unapproved")
    (reason,) = json.loads(result.read_text())
    assert "not approved" in reason
    assert not marker.exists()
    refused = [r for r in auditlog.read(hub.workdir / "site_a.audit.jsonl") if r["outcome"] == "refused"]
    assert refused and refused[-1]["action"] == "execute" and refused[-1]["requester"] == "alice"
    assert auditlog.verify(hub.workdir / "site_a.audit.jsonl").ok


def test_approved_bundle_with_another_study_definition_is_refused(hub):
    from fedomop.federated.governance.approval import study_digest

    audit = hub.workdir / "site_a.audit.jsonl"
    bundle = [r for r in auditlog.read(audit) if r["outcome"] == "refused"][-1]["app_hash"]
    other = load_study("bone_metastasis").model_copy(
        update={"covariates": load_study("bone_metastasis").covariates[:1]}
    )
    _policy(
        hub.policy,
        "bone_metastasis",
        [{"app_sha256": bundle, "study_digest": study_digest(other), "requester": "alice"}],
    )
    marker, result = _submit(hub, "other-study")
    (reason,) = json.loads(result.read_text())
    assert "study digest" in reason and "not the approved definition" in reason
    assert not marker.exists()
    ledger = [json.loads(line) for line in (hub.workdir / "ledger.jsonl").read_text().splitlines()]
    assert [e["requester"] for e in ledger if e["event"] == "run"] == ["alice", "alice"]


def test_approved_submission_is_answered_by_the_installed_app_not_the_bundle(hub):
    from fedomop.federated.governance.approval import study_digest

    audit = hub.workdir / "site_a.audit.jsonl"
    bundle = [r for r in auditlog.read(audit) if r["outcome"] == "refused"][-1]["app_hash"]
    digest = study_digest(load_study("bone_metastasis"))
    _policy(hub.policy, "bone_metastasis", [{"app_sha256": bundle, "study_digest": digest, "requester": "alice"}])
    before = len(auditlog.read(audit))
    marker, result = _submit(hub, "approved")
    assert json.loads(result.read_text()) == ["content"]
    assert not marker.exists()  # the site answered with its installed fedomop ClientApp
    records = auditlog.read(audit)[before:]
    assert records and {r["requester"] for r in records} == {"alice"}  # not "mallory" from run_config/message
    assert {r["app_hash"] for r in records} == {bundle}
    assert auditlog.verify(audit).ok

"""A real SuperLink and three SuperNodes on 127.0.0.1 running the governance test app.

One cluster serves both runs; site policies are files read on every message, so each
test rewrites them. Checks: refusals (unapproved code, table outside the policy) reach
the hub as site errors and are audited; a SuperNode killed mid-training leaves a
finished run whose report names the missing site; the restarted site rejoins.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fedomop.federated.governance import auditlog, verify
from fedomop.federated.governance.certs import (
    create_credentials,
    register_supernode,
    superlink_tls_args,
    supernode_auth_args,
    write_flower_connection,
)
from fedomop.federated.governance.mods import resolve_study, running_app_hash

from .flower_procs import BIN, Cluster, flower_env, free_port

pytestmark = pytest.mark.slow

APP = Path(__file__).parent / "flower_app"
SITES = ("site_a", "site_b", "site_c")


def write_policy(
    folder: Path, site: str, *, approved: str, drop_table: str | None = None, min_cohort: int = 50
) -> Path:
    spec, _ = resolve_study(str(folder / "study.yaml"))
    data = {
        "site": site,
        "audit_log": f"{site}.audit.jsonl",
        "small_cell_threshold": 10,
        "studies": {
            "bone_metastasis": {
                "approved_apps": [{"sha256": approved}],
                "tables": {t: c for t, c in spec.tables().items() if t != drop_table},
                "concept_sets": [{"vocabulary": c.vocabulary, "code": c.code} for c in spec.all_concepts()],
                "min_cohort_size": min_cohort,
            }
        },
    }
    path = folder / f"{site}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """SuperLink with TLS + SuperNode authentication (keys from create_credentials), three registered sites."""
    work = tmp_path_factory.mktemp("fedrun")
    app = work / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    # a private copy of the study: the approved hash covers it, and the shared file may be edited meanwhile
    study_file = work / "study.yaml"
    shutil.copyfile(resolve_study("bone_metastasis")[1], study_file)
    approved = running_app_hash(study_file, app / "govapp")
    pki = work / "pki"
    create_credentials(pki, list(SITES))
    cluster = Cluster(work, work / "flwr_home")
    try:
        port = free_port()
        cluster.superlink(port, [*superlink_tls_args(pki), "--database", str(work / "link.db")])
        write_flower_connection(cluster.flwr_home, "hub", f"127.0.0.1:{port}", pki / "ca.crt")
        node_ids = {
            site: register_supernode(pki / f"{site}.pub", flwr_home=cluster.flwr_home, connection="hub")
            for site in SITES
        }
        policies = {site: write_policy(work, site, approved=approved) for site in SITES}
        hub = {"cluster": cluster, "port": port, "work": work, "app": app, "approved": approved, "pki": pki,
               "policies": policies, "node_ids": node_ids}  # fmt: skip
        hub["nodes"] = {site: start_site(hub, site) for site in SITES}
        for site, node in hub["nodes"].items():
            assert node.wait_for(f"SuperNode ID: {node_ids[site]}", 120), node.text()[-2000:]
        yield hub
    finally:
        cluster.stop_all()


def site_args(hub, site: str) -> list[str]:
    node_config = f'policy="{hub["policies"][site]}" seed={SITES.index(site)} rows=200'
    return [*supernode_auth_args(hub["pki"], site), "--node-config", node_config]


def start_site(hub, site: str):
    return hub["cluster"].supernode(site, hub["port"], site_args(hub, site))


def flwr_run(hub, name: str, **config) -> tuple[Path, int]:
    report = hub["work"] / f"{name}.json"
    config = {"study": str(hub["work"] / "study.yaml"), **config, "report": str(report)}
    overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
    done = subprocess.run(
        [str(BIN / "flwr"), "run", str(hub["app"]), "hub", "--run-config", overrides, "--format", "json"],
        capture_output=True, text=True, env=flower_env(hub["cluster"].flwr_home), timeout=120, cwd=hub["work"],
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = int(json.loads(done.stdout[done.stdout.index("{") :])["run-id"])
    return report, run_id


def run_status(hub, run_id: int) -> str:
    """`flwr run` exits 0 even when the run fails: ask the SuperLink."""
    listing = subprocess.run(
        [str(BIN / "flwr"), "ls", "hub", "--run-id", str(run_id), "--format", "json"],
        capture_output=True, text=True, env=flower_env(hub["cluster"].flwr_home), timeout=60, check=True,
    )  # fmt: skip
    return json.loads(listing.stdout[listing.stdout.index("{") :])["runs"][0]["status"]


def wait_status(hub, run_id: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (status := run_status(hub, run_id)).startswith(("pending", "starting", "running")):
        assert time.monotonic() < deadline, status
        time.sleep(1)
    return status


def wait_report(report: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if report.exists() and report.stat().st_size:
            return json.loads(report.read_text())
        time.sleep(0.5)
    raise AssertionError(f"no report at {report} after {timeout}s")


def audit_records(hub, site: str) -> list[dict]:
    return auditlog.read(hub["work"] / f"{site}.audit.jsonl")


def run_records(hub, site: str, run_id: int, outcome: str) -> list[dict]:
    return [
        r for r in audit_records(hub, site) if r["requester"].endswith(f"(run {run_id})") and r["outcome"] == outcome
    ]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_sites_refuse_unapproved_code_and_out_of_policy_tables(hub):
    work, approved = hub["work"], hub["approved"]
    write_policy(work, "site_b", approved="d" * 64)
    write_policy(work, "site_c", approved=approved, drop_table="measurement")
    try:
        report, run_id = flwr_run(hub, "refusals", **{"num-rounds": 1, "min-sites": 1})
        result = wait_report(report, 120)
    finally:
        for site in ("site_b", "site_c"):
            write_policy(work, site, approved=approved)
    assert wait_status(hub, run_id) == "finished:completed"
    assert result["finished"], result["summary"]
    [train] = result["rounds"]
    assert train["answered"] == ["site_a"]
    reasons = " | ".join(train["failed"].values())
    assert f"app hash {approved} is not approved" in reasons
    assert "table 'measurement' is not allowed" in reasons
    [refused_b] = run_records(hub, "site_b", run_id, "refused")
    [refused_c] = run_records(hub, "site_c", run_id, "refused")
    assert "not approved" in refused_b["reason"] and refused_b["app_hash"] == approved
    assert "measurement" in refused_c["reason"]
    assert not run_records(hub, "site_b", run_id, "sent") and not run_records(hub, "site_c", run_id, "sent")
    [sent_a] = run_records(hub, "site_a", run_id, "sent")
    assert sent_a["sent"]["arrays.w"] > 0 and sent_a["sent"]["metrics.num-examples"] == 8
    for site in SITES:
        assert verify(work / f"{site}.audit.jsonl").ok


def test_no_small_cell_leaves_a_site(hub):
    """site_c has 8 persons (cohort minimum lowered to 5): its counts are blocked at the site, never sent."""
    work, approved = hub["work"], hub["approved"]
    write_policy(work, "site_c", approved=approved, min_cohort=5)
    try:
        report, run_id = flwr_run(hub, "small_cells", **{"num-rounds": 2, "min-sites": 2, "small-site": 2})
        result = wait_report(report, 120)
    finally:
        write_policy(work, "site_c", approved=approved)
    assert result["finished"], result["summary"]
    assert result["received"] == {"replies": 4, "small_cells": 0}  # site_a and site_b, two rounds
    for train in result["rounds"]:
        assert sorted(train["answered"]) == ["site_a", "site_b"]
        [reason] = train["failed"].values()
        assert "blocked its reply" in reason and "below the small-cell threshold 10: " in reason
        assert "metrics.num-examples" in reason and "metrics.cohort-size" in reason
    blocked = run_records(hub, "site_c", run_id, "blocked")
    assert len(blocked) == 2 and not run_records(hub, "site_c", run_id, "sent")
    assert all(record["sent"] == {} and record["bytes_sent"] == 0 for record in blocked)


def test_killed_site_is_reported_missing_and_a_restarted_site_rejoins(hub):
    timeout = 30.0
    config = {"num-rounds": 7, "min-sites": 2, "round-timeout": timeout, "train-seconds": 2.0}
    report, run_id = flwr_run(hub, "faults", **config)
    # site_c accepted round 2 and is inside its 2 s of training: kill it there
    wait_until(lambda: len(run_records(hub, "site_c", run_id, "accepted")) >= 2, 120, "site_c to start round 2")
    hub["nodes"]["site_c"].stop(signal.SIGKILL)
    # same key, so the same node id: re-admitted once the dead process missed its heartbeats
    hub["nodes"]["site_c"] = hub["cluster"].rejoin_supernode("site_c-restarted", hub["port"], site_args(hub, "site_c"))
    result = wait_report(report, 10 * timeout)
    assert wait_status(hub, run_id) == "finished:completed"
    assert result["finished"] and len(result["weights"]) == 3, result["summary"]
    trains = result["rounds"]
    assert [r["number"] for r in trains] == list(range(1, 8))
    assert sorted(trains[0]["answered"]) == list(SITES)
    assert trains[1]["missing"] == ["site_c"] and sorted(trains[1]["answered"]) == ["site_a", "site_b"]
    assert trains[1]["seconds"] >= timeout - 1
    assert "train 2: 2/3 answered" in result["summary"] and "site_c timed out" in result["summary"]
    assert result["missing_sites"] == ["site_c"]
    assert all({"site_a", "site_b"} <= set(r["answered"]) for r in trains)
    assert any("site_c" in r["answered"] for r in trains[2:]), result["summary"]  # the restarted site rejoined
    for site in SITES:
        assert verify(hub["work"] / f"{site}.audit.jsonl").ok


def test_too_few_sites_aborts_with_a_clear_error(hub):
    """min_sites larger than the sites that can answer: the run stops with a report instead of hanging."""
    write_policy(hub["work"], "site_b", approved="e" * 64)
    try:
        report, run_id = flwr_run(hub, "too_few", **{"num-rounds": 2, "min-sites": 3, "round-timeout": 30.0})
        result = wait_report(report, 120)
    finally:
        write_policy(hub["work"], "site_b", approved=hub["approved"])
    assert not result["finished"]
    assert "train round 1: only 2 of 3 sites answered, 3 required" in result["error"]
    assert "is not approved" in result["summary"]
    assert wait_status(hub, run_id) == "finished:completed"

"""What lets a deployment scale to many sites on one host: light site processes and a hub that cleans up.

On a deployment every message starts a fresh ``flwr-clientapp`` process per site, so what
``federated.client_app`` imports is paid sites x messages times; and a SuperLink that keeps its
state in memory (``persistent_state=False``) has no SQLite file to lock.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

from federated.client_app import NO_POLICY
from federated.deploy import LocalDeployment

HEAVY = ("xgboost", "sklearn", "scipy", "torch")


def test_a_site_process_imports_no_model_library_until_a_message_needs_it():
    probe = (
        "import json, sys\n"
        "import federated.client_app\n"
        f"before = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "from federated.models import xgb_common\n"
        "xgb_common.xgboost()\n"
        f"after = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print(json.dumps([before, after]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == []
    assert "xgboost" in after and "torch" not in after


def test_in_memory_hub_brings_three_sites_online_and_stop_ends_every_process(tmp_path):
    sites = {f"site_{i}": str(tmp_path / f"site_{i}.duckdb") for i in range(3)}  # opened only when a message comes
    hub = LocalDeployment(
        tmp_path / "deploy", sites, policies=dict.fromkeys(sites, NO_POLICY), persistent_state=False
    ).start()
    try:
        seconds = hub.wait_until_online(timeout_s=120)
        assert 0 <= seconds < 120 and hub.online_sites() == 3
        started = [psutil.Process(p.pid) for p in hub.processes]
        tree = started + [c for p in started for c in p.children(recursive=True)]
        assert len(tree) >= 4  # the SuperLink and three SuperNodes (with their SuperExecs)
    finally:
        hub.stop()
    assert not hub.state_file.exists()  # the state stayed in memory
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

"""What lets a deployment scale to many sites on one host: light site processes and a hub that cleans up.

On a deployment every message starts a fresh ``flwr-clientapp`` process per site, so what
``fedomop.federated.client_app`` imports is paid sites x messages times; and a SuperLink that keeps its
state in memory (``persistent_state=False``) has no SQLite file to lock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil

from fedomop.federated.client_app import NO_POLICY
from fedomop.federated.deploy import LocalDeployment

HEAVY = ("xgboost", "sklearn", "scipy", "torch")


def test_a_site_process_imports_no_model_library_until_a_message_needs_it():
    probe = (
        "import json, sys\n"
        "import fedomop.federated.client_app\n"
        f"before = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "from fedomop.federated.models import xgb_common\n"
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


def _superlink_argv(process: psutil.Process, timeout_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in process.children(recursive=True):
            argv = child.cmdline()
            if argv and any(part.endswith("flower-superlink") for part in argv[:2]):
                return argv
        time.sleep(0.2)
    raise AssertionError("fedomop hub start started no flower-superlink")


def test_hub_start_cli_keeps_state_in_memory_when_asked(tmp_path):
    """`fedomop hub start --in-memory-state`: a real SuperLink without a state file, reachable on its port
    (``--ungoverned``: a bare SuperLink on loopback; the governed hub is tested in tests/governance/test_governed_cli.py)."""
    from fedomop.federated.deploy import BIN, free_port, wait_for_port

    home, port = tmp_path / "flwr", free_port()
    fedomop = str(BIN / "fedomop")
    command = [
        fedomop,
        "hub",
        "start",
        "--port",
        str(port),
        "--flwr-home",
        str(home),
        "--in-memory-state",
        "--ungoverned",
    ]
    hub = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, process=hub)
        argv = _superlink_argv(psutil.Process(hub.pid))
        assert "--database" not in argv and str(port) in argv
        assert 'address = "127.0.0.1:' + str(port) + '"' in (home / "config.toml").read_text()
    finally:
        os.killpg(hub.pid, signal.SIGTERM)
        hub.wait(30)
    assert not (home / "superlink.db").exists()
    refused = subprocess.run(
        [fedomop, "hub", "start", "--in-memory-state", "--state", str(tmp_path / "s.db"), "--flwr-home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = " ".join((refused.stdout + refused.stderr).split())  # rich wraps long lines
    assert refused.returncode != 0 and "--state and --in-memory-state contradict each other" in said
    assert "fix: keep one" in said and "Traceback" not in said

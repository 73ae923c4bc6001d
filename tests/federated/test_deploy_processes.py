"""A site's or hub's pieces cannot outlive the command that started them, and a taken port is named, not traced."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fedomop.federated import deploy

PARENT = """
import subprocess, sys, time
from fedomop.federated.deploy import die_with_parent
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=die_with_parent)
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_started_with_die_with_parent_ends_when_its_parent_is_killed_outright():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # what no handler can see: `kill -9` of `fedomop site start`
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as stat:  # reaped by init or still a zombie: either way it stopped
            if stat.read().split(") ")[1].startswith("Z"):
                return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")


def test_port_in_use_sees_a_listener_on_loopback():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert deploy.port_in_use(port)
    assert not deploy.port_in_use(port)


def test_the_executor_never_imports_a_module_from_the_folder_site_start_runs_in(tmp_path):
    """`python -c` puts the working directory first on sys.path; a stray module there would run as installed code
    in the executor and every task it forks."""
    (tmp_path / "fedomop.py").write_text("raise SystemExit('SHADOWED: a module from the working folder ran')\n")
    command = deploy.executor_command("10.0.0.1:9094", tmp_path / "policy.yaml")  # not loopback: refused at once
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "SHADOWED" not in done.stderr + done.stdout
    assert done.returncode != 0 and "must be on loopback" in done.stderr

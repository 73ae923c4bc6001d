"""Exit codes tell the truth, command by command, through the real console entry point (``python -m fedomop``).

0 success, 1 a failed check or run, 2 bad input or usage, 130 interrupted (SIGINT or SIGTERM), never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.conftest import MAPPINGS, REPO
from tests.harmonize.fixture_site import make_site

ENV = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
ENV.pop("FEDOMOP_DEBUG", None)


def fedomop(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "fedomop", *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=timeout
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("exit")
    mapping, source = make_site(root)
    db = root / "site.duckdb"
    done = fedomop("map", "--mapping", str(mapping), "--source", str(source), "--db", str(db))
    assert done.returncode == 0, done.stderr
    return mapping, source, db


def test_map_success_is_0_and_bad_input_is_2(mapped: tuple[Path, Path, Path], tmp_path: Path) -> None:
    mapping, source, db = mapped
    assert db.exists()
    assert (
        fedomop("map", "--mapping", str(tmp_path / "nope.yaml"), "--source", str(source), "--db", str(db)).returncode
        == 2
    )
    usage = fedomop("map", "--mapping", str(mapping))  # --source/--db missing
    assert usage.returncode == 2 and "Missing option" in usage.stderr
    assert fedomop("no-such-command").returncode == 2


def test_validate_fail_on_fatal_exits_1_with_fatal_failures(mapped: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, db = mapped
    broken = tmp_path / "broken.duckdb"
    broken.write_bytes(db.read_bytes())
    with duckdb.connect(str(broken)) as con:  # a duplicate person_id: isPrimaryKey.person is fatal
        con.execute("create table person_dup as select * from person union all (select * from person limit 1)")
        con.execute("drop table person")
        con.execute("alter table person_dup rename to person")
    args = ["validate", "--db", str(broken), "--out", str(tmp_path / "qa"), "--checks", "isPrimaryKey"]
    assert fedomop(*args, "--sample-rows", "50").returncode == 0  # the report is the product without the flag
    done = fedomop(*args, "--sample-rows", "50", "--fail-on-fatal")
    assert done.returncode == 1, done.stdout + done.stderr
    assert fedomop("validate", "--db", str(tmp_path / "absent" / "x.txt"), "--out", str(tmp_path)).returncode == 2


def test_governance_verify_log_broken_chain_exits_1(tmp_path: Path) -> None:
    from fedomop.federated.governance import auditlog

    log = tmp_path / "audit.jsonl"
    for i in range(3):
        auditlog.append(log, {"i": i})
    assert fedomop("governance", "verify-log", str(log)).returncode == 0
    lines = log.read_text().splitlines()
    record = json.loads(lines[1])
    record["i"] = 7
    log.write_text("\n".join([lines[0], json.dumps(record, sort_keys=True, separators=(",", ":")), lines[2]]) + "\n")
    done = fedomop("governance", "verify-log", str(log))
    assert done.returncode == 1 and "chain broken" in done.stdout


def test_sample_data_vocab_and_cdm_exit_codes(tmp_path: Path) -> None:
    out = tmp_path / "sites"
    assert fedomop("sample-data", "--out", str(out), "--persons", "40", "--sites", "site_a").returncode == 0
    assert (out / "site_a" / "patients.csv").exists()
    assert fedomop("sample-data", "--out", str(out), "--persons", "-5").returncode == 2
    assert fedomop("sample-data", "--out", str(out), "--sites", "site_z").returncode == 2
    db = tmp_path / "cdm.duckdb"
    assert fedomop("cdm", "create", "--db", str(db)).returncode == 0
    assert fedomop("cdm", "create", "--db", str(tmp_path)).returncode == 2  # a folder is not a database
    assert fedomop("vocab", "load", "--db", str(db), "--folder", str(tmp_path / "none")).returncode == 2


def _wait_for_tmp(folder: Path, process: subprocess.Popen[str], prefix: str = "", seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        if any(p.name.startswith(prefix) and ".tmp-" in p.name for p in folder.iterdir()):
            return
        time.sleep(0.05)
    raise AssertionError("the map never started loading")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_map_exits_130_and_leaves_no_temporary_files(tmp_path: Path, signum: int) -> None:
    """A real ``fedomop map`` on a generated site is interrupted mid-load: exit 130, "interrupted", no *.tmp-*."""
    extract = tmp_path / "sites"
    assert fedomop("sample-data", "--out", str(extract), "--persons", "3000", "--sites", "site_a").returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "fedomop", "map", "--mapping", str(MAPPINGS / "site_a.yaml"),
         "--source", str(extract / "site_a"), "--db", str(out / "site_a.duckdb")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO,
    )  # fmt: skip
    _wait_for_tmp(out, process, prefix="site_a.duckdb.tmp-")  # the site database, not the vocabulary store
    time.sleep(0.5)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (process.returncode, stderr[-2000:])
    assert "interrupted" in stderr and "Traceback" not in stderr
    # no temporary file, and no half-built database; the site's vocabulary store (complete, reused) may stay
    assert sorted(p.name for p in out.iterdir()) in ([], ["site_a.duckdb.vocabulary"])


# A stand-in for `fedomop site start` / `hub start`: the real CLI entry point supervising a child that takes a
# second to stop (as a SuperNode does), so a second Ctrl-C lands in the shutdown.
SUPERVISOR = r"""
import subprocess, sys
import typer
from fedomop import cli
from fedomop.federated import deploy

CHILD = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.0), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "while True: time.sleep(0.1)\n"
)

def supervised() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    child.stdout.readline()
    try:  # as `fedomop site start` does: a Ctrl-C before the supervision starts still stops the child
        print(f"ready {child.pid}", flush=True)
        raise typer.Exit(deploy.supervise({"child": child}, poll_s=0.05))
    finally:
        deploy.stop_processes([child])

cli.app.command("supervised")(supervised)
sys.argv = ["fedomop", "supervised"]
cli.main()
"""


def test_a_second_interrupt_during_a_supervised_shutdown_exits_130_in_one_line() -> None:
    """Ctrl-C, then Ctrl-C twice more while the children stop: "interrupted", 130, no traceback, child stopped."""
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    assert process.stdout is not None
    ready = process.stdout.readline().split()
    assert ready[:1] == ["ready"], process.communicate(timeout=30)
    child = int(ready[1])
    try:
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)  # the supervisor is now waiting for the child to stop (or about to: either way)
        process.send_signal(signal.SIGINT)
        time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, (process.returncode, stderr)
        assert stderr.strip() == "interrupted", stderr
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)  # stopped and reaped, not left running
    finally:
        process.kill()
        try:
            os.kill(child, signal.SIGKILL)  # the test's own child, if the supervisor left it running
        except ProcessLookupError:
            pass

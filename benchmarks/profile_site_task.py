"""Where one federated message's time goes at a governed site, by way of running it.

A governed site (``fedomop site start``) runs every message in its own process, forked from the executor's fork
server that imported :data:`fedomop.federated.executor.PRELOAD` once. Flower's stock SuperNode (``--isolation
subprocess``) starts a fresh ``flwr-clientapp`` interpreter per message instead. This script times one
``query.describe`` message (the ClientApp's full path: governance, feature matrix, release gate, audit) at one
harmonized sample site, three ways:

* **fresh interpreter**: ``python -c`` importing the ClientApp and handling the message (what each stock
  message pays, before Flower's own start-up and connection);
* **forked, matrix built**: a child of a process that preloaded what the fork server preloads, building the
  matrix from the database (the first message of a run at a governed site);
* **forked, matrix cached**: the same child when the run's matrix is in the executor's cache (every later
  message of the run).

Each is repeated ``--rounds`` times (medians); a cProfile of one forked, built message names the largest items.

Usage: .venv/bin/python benchmarks/profile_site_task.py [--persons 1400 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedomop.federated.executor import PRELOAD
from fedomop.federated.study import STUDIES_DIR

STUDY = STUDIES_DIR / "bone_metastasis.yaml"
BENCHMARKS = Path(__file__).resolve().parent
APP = os.environ.get("FEDOMOP_PROFILE_APP_SHA256", "")  # set by main() before any task starts
# benchmarks/_common is imported inside the functions of this process only: the fresh-interpreter case imports
# this module too and must pay for the ClientApp's imports, not for the benchmark's helpers

TASK = """
import json, resource, sys, time
started, cpu = time.perf_counter(), time.process_time()
from fedomop.federated.executor import PRELOAD
import importlib
for name in PRELOAD:
    importlib.import_module(name)
sys.path.insert(0, {bench!r})
from profile_site_task import handle_one
handle_one({db!r}, {policy!r}, {run_id}, {app!r})
print(json.dumps({{"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu}}))
"""


def site_database(persons: int, folder: Path) -> Path:
    """The sample site_a at ``persons``, harmonized by the real mapping (as the federated benchmarks do)."""
    from _common import FEDOMOP, REPO

    from fedomop.harmonize.run import run_mapping

    extract = folder / f"extract{persons}"
    subprocess.run(
        [FEDOMOP, "sample-data", "--out", str(extract), "--persons", str(persons), "--sites", "site_a",
         "--no-vocabulary"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    db = folder / f"site_a_{persons}.duckdb"
    run_mapping(REPO / "mappings" / "site_a.yaml", extract / "site_a", str(db))
    return db


def handle_one(db: str, policy: str, run_id: int, app_sha256: str) -> None:
    """One describe message through the ClientApp, as the executor's task runs it after admitting the run
    (``app_sha256``: the bundle's hash, computed once by the caller: the executor hashes the bytes it pulled)."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedomop.federated import client_app
    from fedomop.federated.governance import approval
    from fedomop.federated.study import parse_study

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1
    text = STUDY.read_text(encoding="utf-8")
    study = parse_study(text, source=str(STUDY))
    approval.ADMITTED = approval.Request(app_sha256, study.name, approval.study_digest(study), "unauthenticated")
    message = Message(
        RecordDict({"config": ConfigRecord({"study": text, "model": "xgboost-hist"})}),
        dst_node_id=1,
        message_type="query.describe",
    )
    node: dict[str, bool | float | int | str] = {"db": db, "site": "site_a", "policy": policy}
    context = Context(run_id=run_id, node_id=1, node_config=node, state=RecordDict(), run_config={})
    reply = client_app._handle(client_app._describe, None, message, context)
    if reply.has_error():
        raise SystemExit(f"the message failed: {reply.error.reason}")


def fresh(db: Path, policy: str, run_id: int) -> dict[str, float]:
    code = TASK.format(bench=str(BENCHMARKS), db=str(db), policy=policy, run_id=run_id, app=APP)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    inner = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": time.perf_counter() - started, "cpu": cpu, "inner_wall": inner["wall"]}


def _task(db: str, policy: str, run_id: int, app: str, cache: str | None, profile: bool, answer: Any) -> None:
    """In the forked task process: handle one message, send back its own wall and CPU seconds (and a profile)."""
    from fedomop.federated import feature_cache

    if cache:  # the executor sets this before its fork server starts; here it differs per case
        os.environ[feature_cache.CACHE_ENV] = cache
    started, cpu = time.perf_counter(), time.process_time()
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    handle_one(db, policy, run_id, app)
    out = io.StringIO()
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    answer.send({"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu, "profile": out.getvalue()})


def forked(
    starter: Any, db: Path, policy: str, run_id: int, cache: Path | None = None, profile: bool = False
) -> dict[str, Any]:
    """One task as the executor starts it: a child of the fork server (a clean, single-threaded process that
    preloaded PRELOAD; forking this process instead would copy the thread pools polars and DuckDB started here).
    Wall is measured here (start to join: fork included); CPU is the task's own."""
    receive, send = starter.Pipe(duplex=False)
    started = time.perf_counter()
    child = starter.Process(
        target=_task, args=(str(db), policy, run_id, APP, str(cache) if cache else None, profile, send)
    )
    child.start()
    result = receive.recv()
    child.join()
    if child.exitcode:
        raise SystemExit(f"the task process failed ({child.exitcode})")
    return {**result, "wall": time.perf_counter() - started}


def measure(starter: Any, db: Path, policy: str, rounds: int, cache: Path) -> dict[str, dict[str, float]]:
    from _common import median

    results: dict[str, list[dict[str, float]]] = {"fresh interpreter": [], "forked, built": [], "forked, cached": []}
    for number in range(rounds):
        run_id = 1000 + number
        results["fresh interpreter"].append(fresh(db, policy, run_id))
        results["forked, built"].append(forked(starter, db, policy, run_id, cache))  # the first message: builds
        results["forked, cached"].append(forked(starter, db, policy, run_id, cache))  # the next one of the run
    return {kind: {k: median([r[k] for r in runs]) for k in ("wall", "cpu")} for kind, runs in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persons", nargs="*", type=int, default=[1400, 20000])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(BENCHMARKS))
    import multiprocessing
    import multiprocessing.forkserver

    from _common import load_average, machine

    from fedomop.federated.governance.approval import fab_hash
    from fedomop.federated.runner import APP_DIR

    global APP
    APP = fab_hash(APP_DIR)  # the approved bundle's hash: the policies below approve it
    preload_started = time.perf_counter()
    starter = multiprocessing.get_context("forkserver")
    starter.set_forkserver_preload([*PRELOAD, "profile_site_task"])  # as the executor's fork server
    multiprocessing.forkserver.ensure_running()
    preload_s = time.perf_counter() - preload_started
    from fedomop.federated.testing import approving_policies

    rows, profiles = [], {}
    load = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        policy = approving_policies(["site_a"], folder / "policies", STUDY)["site_a"]
        for persons in args.persons:
            db = site_database(persons, folder)
            cache = folder / f"cache{persons}"
            cache.mkdir()
            rows.append((persons, measure(starter, db, policy, args.rounds, cache)))
            profiles[persons] = forked(starter, db, policy, 99, profile=True)["profile"]  # run 99: not cached
    lines = [
        f"Machine: {machine()}. 1-min load average {load:.1f} before, {load_average():.1f} after; medians of "
        f"{args.rounds}. The fork server's preload ({', '.join(PRELOAD)}) took {preload_s:.2f} s once.",
        "",
        "| site persons | one describe message | wall s | CPU s |",
        "|---:|---|---:|---:|",
    ]
    for persons, result in rows:
        for kind, values in result.items():
            lines.append(f"| {persons:,} | {kind} | {values['wall']:.2f} | {values['cpu']:.2f} |")
    print("\n".join(lines))
    for persons, text in profiles.items():
        print(f"\ncProfile of one forked message that builds the matrix, {persons:,} persons:\n{text}")


if __name__ == "__main__":
    main()

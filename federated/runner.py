"""Run a study: in Flower's simulation engine on local site databases, or on a real deployment.

:func:`simulate` is what ``fedomop train`` does by default and what a notebook user
calls: the hub and one virtual SuperNode per site run in this process (Ray
actors), and -- because all sites are local -- the pooled reference model is
trained too. :func:`run_deployment` submits the same app to a SuperLink with
``flwr run`` and waits for the result (no pooled reference: rows never meet).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from fedomop.federated import features, metrics, xgbserver
from fedomop.federated.client_app import NO_POLICY, Site, code_hash, make_client_app
from fedomop.federated.console import RoundProgress, quiet_third_party
from fedomop.federated.models import registry
from fedomop.federated.report import write_model_card
from fedomop.federated.server_app import RunSettings, make_server_app
from fedomop.federated.settings import HubConfig, TrainSettings
from fedomop.federated.study import StudySpec, parse_study
from fedomop.federated.transport import OnExchange
from fedomop.harmonize.ground.errors import FedomopError

if TYPE_CHECKING:
    from flwr.app import ConfigRecordValues

APP_DIR = Path(__file__).parent / "flower_app"


def site_list(paths: Sequence[str | Path]) -> list[Site]:
    """One Site per database, named by its cdm_source (DuckDB path or PostgreSQL URL alike): two URLs on one
    server are two sites, and one site given twice is refused rather than trained on twice."""
    from fedomop.federated.survival.runner import site_names

    return [Site(name=name, db=db) for name, db in site_names([str(p) for p in paths]).items()]


def pooled_reference(study: StudySpec, sites: list[Site], settings: RunSettings) -> tuple[dict, dict]:
    """The model trained on all sites' training rows together (only possible in simulation)."""
    train, test = {}, {}
    for site in sites:
        train[site.name], test[site.name] = features.build_features(site.db, study).train_test(study)
    X = np.vstack([d.X for d in train.values()])
    y = np.concatenate([d.y for d in train.values()])
    model = registry.get(settings.model)
    record = model.train_plain(X, y, settings.total_local_rounds(len(sites)))
    per_site = {s: metrics.binary_metrics(d.y, model.predict(record, d.X)) for s, d in test.items()}
    return per_site, metrics.weighted_summary(per_site, {s: d.n for s, d in test.items()})


def simulation_concurrency() -> int:
    """ClientApps Flower's simulation runs at once: its dispatcher pool has min(32, CPUs + 4) workers."""
    return min(32, (os.cpu_count() or 1) + 4)


def _check_simulation_concurrency(model: str, n_sites: int) -> None:
    """Histogram XGBoost's allreduce needs every site connected at once; beyond the pool it would wait forever."""
    limit = simulation_concurrency()
    if registry.get(model).needs_every_site and n_sites > limit:
        raise FedomopError(
            f"{model} needs all {n_sites} sites running at once, but the simulation runs at most "
            f"{limit} ClientApps at a time on this machine (min(32, CPUs + 4))",
            where=f"fedomop train --model {model}",
            fix=f"use at most {limit} sites in simulation, another model, or a real deployment (--federation)",
        )


def simulate(
    study_path: str | Path,
    site_paths: Sequence[str | Path],
    *,
    out: str | Path = "out/federated",
    pooled: bool = True,
    message_log: str | Path | None = None,
    policies: dict[str, str] | None = None,
    progress: OnExchange | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train in the simulation engine; returns the result dict (also in ``out/result.json``).

    ``progress`` hears of every round trip at the hub (:class:`fedomop.federated.console.RoundProgress`).

    ``policies`` maps a site name to its governance YAML; a site not listed runs with the
    explicit opt-out (:data:`fedomop.federated.client_app.NO_POLICY`): a simulation reads local copies
    that the researcher already holds, whereas a deployed SuperNode is governed by default.
    """
    study_text = Path(study_path).read_text(encoding="utf-8")
    study = parse_study(study_text, source=str(study_path))
    log = str(message_log) if message_log else None
    model_name = str(options.get("model", "xgboost-hist"))
    _check_simulation_concurrency(model_name, len(site_paths))  # before opening any site: fail fast, no hang
    sites = [
        Site(s.name, s.db, policy=(policies or {}).get(s.name, NO_POLICY), message_log=log)
        for s in site_list(site_paths)
    ]
    model = str(options.pop("model", "xgboost-hist"))
    train = TrainSettings.from_mapping({"out": str(out), "min_nodes": len(sites), **options})
    settings = RunSettings.of(study_text, model, train)
    backend: dict[str, dict[str, ConfigRecordValues]] = {
        # log_to_driver: the actors' own log lines (with colour codes) stay out of the user's output;
        # a site's failure still reaches the hub as an error reply and is reported there.
        "init_args": {"num_cpus": len(sites), "num_gpus": 0, "include_dashboard": False, "log_to_driver": False},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    run_flower_simulation(settings, sites, backend, progress)
    result_path = Path(out) / "result.json"
    if not result_path.exists():
        raise FedomopError("the simulation ended without a result", where=str(out), fix="see the log above")
    result = json.loads(result_path.read_text())
    if pooled:
        result["pooled"], result["pooled_summary"] = pooled_reference(study, sites, settings)
    result_path.write_text(json.dumps(result, indent=2, default=str))
    write_model_card(result, study_text, Path(out), code_hash())
    return result


IN_NAMESPACE_ENV = "FEDOMOP_SIMULATION_NETNS"  # set in the namespaced child: it runs the simulation itself


def _isolation_problem(sites: list[Site], progress: OnExchange | None) -> str | None:
    """Why the simulation runs in this process (and Ray's servers listen on every interface), or None."""
    if os.environ.get(IN_NAMESPACE_ENV):
        return "already inside its network namespace"
    if any("://" in site.db for site in sites):
        return "a site is a database URL (reached over the network, which a private namespace cannot see)"
    if progress is not None and not isinstance(progress, RoundProgress):
        return "a progress callback of the caller's own (it cannot cross into a child process)"
    return xgbserver.namespace_problem()


def run_flower_simulation(
    settings: RunSettings,
    sites: list[Site],
    backend: dict[str, dict[str, ConfigRecordValues]],
    progress: OnExchange | None,
) -> None:
    """Flower's simulation engine, in its own user + network namespace where the machine allows one.

    Ray (the engine under Flower's simulation) starts gRPC servers that listen on every interface, with no
    setting to stop it; in a private network namespace they exist on that namespace's loopback only, so nothing
    of a simulation is reachable from the network. Everything the run writes goes to files (result.json, the
    model, the message log), so a child process is a faithful stand-in. Where the namespace is not possible
    (see :func:`_isolation_problem`), the simulation runs here as before.
    """
    problem = _isolation_problem(sites, progress)
    if problem is not None:
        _simulate_here(settings, sites, backend, progress)
        return
    rounds = progress.rounds if isinstance(progress, RoundProgress) else None
    with tempfile.TemporaryDirectory(prefix="fedomop-sim-") as folder:
        payload = Path(folder) / "simulation.pickle"
        payload.write_bytes(pickle.dumps({"settings": settings, "sites": sites, "backend": backend, "rounds": rounds}))
        unshare = shutil.which("unshare") or "unshare"
        command = [unshare, *xgbserver.UNSHARE, sys.executable, "-m", __name__, "--simulation", str(payload)]
        child = subprocess.Popen(command, env={**os.environ, IN_NAMESPACE_ENV: "1"}, stderr=subprocess.PIPE)
        relay = threading.Thread(target=_relay_stderr, args=(child.stderr,), daemon=True)
        relay.start()
        try:
            code = child.wait()
            relay.join(5)  # a Ray process still holding the pipe must not hold the run
        except BaseException:  # Ctrl-C reaches the child too; make sure it is gone before the folder is
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
    if code:
        raise FedomopError(
            f"the simulation's process ended with exit status {code}",
            where="fedomop train (simulation, in its own network namespace)",
            fix="see the messages above; FEDOMOP_DEBUG=1 shows more",
        )


# Ray's C++ side, alone on a loopback-only network, says once that it fell back to the host name: not for users
_NAMESPACE_NOISE = (b"Failed to determine local IP via external connectivity",)


def _relay_stderr(stream: IO[bytes] | None) -> None:
    """The child's stderr (its progress lines and any error) to ours, less the namespace's own noise."""
    if stream is None:
        return
    for line in iter(stream.readline, b""):
        if not any(noise in line for noise in _NAMESPACE_NOISE):
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()


def _simulate_here(
    settings: RunSettings,
    sites: list[Site],
    backend: dict[str, dict[str, ConfigRecordValues]],
    progress: OnExchange | None,
) -> None:
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    quiet_third_party()
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU-only: keep Ray's GPU-env notice quiet
    run_simulation(
        make_server_app(settings, progress), make_client_app(sites), num_supernodes=len(sites), backend_config=backend
    )


def _simulation_child(payload_path: str) -> int:
    """The namespaced child: bring its loopback up and run the simulation (progress lines on the shared stderr)."""
    xgbserver.loopback_up()
    payload = pickle.loads(Path(payload_path).read_bytes())  # noqa: S301 (written by our parent, in a 0700 folder)
    progress = RoundProgress(payload["rounds"]) if payload["rounds"] is not None else None
    # the namespace has only its loopback: name it, so Ray does not probe the internet for its address (and say so)
    payload["backend"]["init_args"]["_node_ip_address"] = "127.0.0.1"
    try:
        _simulate_here(payload["settings"], payload["sites"], payload["backend"], progress)
    finally:
        if progress is not None:
            progress.close()
    return 0


def run_deployment(
    study_path: str | Path,
    federation: str,
    *,
    out: str | Path = "out/federated",
    flwr_home: str | Path | None = None,
    hub_output: str | Path | None = None,
    timeout_s: float = 1800,
    **options: Any,
) -> dict[str, Any]:
    """Submit the app to a SuperLink connection (``$FLWR_HOME/config.toml``) and wait for the result.

    The study travels as its text. The hub writes the run's outputs under its own run-output folder, in
    ``<requester>/<name>`` (a fresh name per run); ``hub_output`` is where this machine can read that folder
    (default: ``$FLWR_HOME/fedomop-runs``, the hub's own default when hub and researcher share a FLWR_HOME).
    The outputs are copied from there into ``out``."""
    study_path = Path(study_path).resolve()
    study_text = study_path.read_text(encoding="utf-8")
    out = Path(out).resolve()
    model = str(options.pop("model", "xgboost-hist"))
    name = f"{out.name or 'federated'}-{secrets.token_hex(4)}"
    train = TrainSettings.from_mapping({"out": name, **options})
    run_config = {
        "study": study_text,
        "model": model,
        "settings": train.to_json(),
        "settings-digest": train.digest(),
    }
    # A TOML file, not `key=value` pairs: flwr's pair parser cannot read a double quote inside a value, and the
    # settings are JSON. A JSON string literal (escaped; non-ASCII as UTF-8) is also a valid TOML basic string.
    overrides = out / "run_config.toml"
    out.mkdir(parents=True, exist_ok=True)
    overrides.write_text(
        "".join(f"{k} = {json.dumps(str(v), ensure_ascii=False)}\n" for k, v in run_config.items()), encoding="utf-8"
    )
    env = {**os.environ, **({"FLWR_HOME": str(flwr_home)} if flwr_home else {})}
    root = Path(hub_output) if hub_output else Path(HubConfig.from_env(env).output_root)
    flwr = str(Path(sys.executable).parent / "flwr")
    (out / "result.json").unlink(missing_ok=True)
    submitted = subprocess.run(
        [flwr, "run", str(APP_DIR), federation, "--run-config", str(overrides), "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if submitted.returncode != 0:
        raise FedomopError(f"flwr run failed: {submitted.stderr or submitted.stdout}", where=federation)
    run_id = _run_id(submitted.stdout)
    status = wait_for_run(flwr, federation, run_id, env, timeout_s)
    if not status.startswith("finished:completed"):
        log = subprocess.run([flwr, "log", str(run_id), federation, "--show"], capture_output=True, text=True, env=env)
        raise FedomopError(
            f"run {run_id} ended as {status}", where=federation, fix=f"the hub's log:\n{log.stdout[-3000:]}"
        )
    _fetch_outputs(root, name, out, run_id)
    result = json.loads((out / "result.json").read_text())
    write_model_card(result, study_text, out, code_hash())
    return result


def _fetch_outputs(root: Path, name: str, out: Path, run_id: int) -> None:
    """Copy the run's outputs from the hub's run-output folder (``<root>/<requester>/<name>``) into ``out``."""
    found = sorted(root.glob(f"*/{name}/result.json"))
    if len(found) != 1:
        raise FedomopError(
            f"run {run_id} finished, but its outputs are not readable here: no {root}/<requester>/{name}/result.json",
            where="the hub's run-output folder",
            fix="pass --hub-output with the folder where this machine sees the hub's run outputs, "
            f"or ask the hub operator for <requester>/{name} under theirs",
        )
    for item in found[0].parent.iterdir():
        if item.is_file():
            shutil.copyfile(item, out / item.name)


def _run_id(stdout: str) -> int:
    try:
        return int(json.loads(stdout)["run-id"])
    except (ValueError, KeyError) as exc:
        raise FedomopError(f"cannot read the run id from flwr run: {stdout!r}", where="flwr run") from exc


def wait_for_run(flwr: str, federation: str, run_id: int, env: dict[str, str], timeout_s: float) -> str:
    """Poll ``flwr ls`` until the run finishes (``flwr run`` itself returns at submission)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = subprocess.run(
            [flwr, "ls", federation, "--run-id", str(run_id), "--format", "json"],
            capture_output=True,
            text=True,
            env=env,
        )
        if listed.returncode == 0:
            runs = json.loads(listed.stdout).get("runs", [])
            status = str(runs[0].get("status", "")) if runs else ""
            if status.startswith("finished"):
                return status
        time.sleep(1.0)
    raise FedomopError(f"run {run_id} did not finish within {timeout_s:.0f} s", where=federation)


def demo_model(console: Any = None) -> str:
    """Histogram XGBoost, or xgboost-bagging (with a one-line note) where XGBoost's server cannot be isolated."""
    from fedomop.federated import xgbserver

    problem = xgbserver.namespace_problem()
    if problem is None:
        return "xgboost-hist"
    note = f"note: training xgboost-bagging instead of xgboost-hist: {problem} (see docs/federated.md)"
    if console is not None:
        console.print(note)
    else:
        print(note)
    return "xgboost-bagging"


def demo_study(site_paths: list[Path], out: Path, console: Any = None) -> dict[str, Any]:
    """``fedomop demo``'s last step: histogram XGBoost on the bone-metastasis study, then the comparison table."""
    from fedomop.federated.report import print_comparison
    from fedomop.federated.study import STUDIES_DIR

    result = simulate(STUDIES_DIR / "bone_metastasis.yaml", list(site_paths), out=out, model=demo_model(console))
    print_comparison(result, console)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--simulation":
        sys.exit(_simulation_child(sys.argv[2]))
    sys.exit("usage: python -m fedomop.federated.runner --simulation PAYLOAD (started by fedomop train)")

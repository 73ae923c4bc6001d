"""Start the real Flower processes: the hub (SuperLink) and one SuperNode per site.

``fedomop hub start`` and ``fedomop site start`` call these; tests use
:class:`LocalDeployment` to run a hub and four sites on 127.0.0.1. Each SuperNode is
told its site database by node config (``db``, ``site``, ``policy``), so the
same app runs unchanged at every site. A site without ``policy`` refuses every data
request; tests on synthetic data pass ``policy="none-for-testing"``.

Transport is insecure by default (tests on 127.0.0.1). With ``certs`` (``--certs DIR``,
made by ``fedomop certs create``) the SuperLink serves TLS and only admits registered
SuperNodes, each signing its requests with ``DIR/<site>.key``
(:mod:`fedomop.federated.governance.certs`). The SuperLink serves its Control, Fleet and
Runtime HTTP APIs on one port; ``flwr run`` reaches it through a named connection
in ``$FLWR_HOME/config.toml``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedomop.federated.settings import OUTPUT_FOLDER, HubConfig, refuse_wildcard_host
from fedomop.harmonize.ground.errors import FedomopError

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def flower_env(flwr_home: Path | str | None) -> dict[str, str]:
    """Environment for Flower processes: our venv's executables first (SuperLink spawns flower-superexec)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    if flwr_home:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def write_connection(
    flwr_home: Path | str, name: str, address: str, *, insecure: bool = True, root_cert: str | None = None
) -> Path:
    """Add (or replace) a SuperLink connection in ``$FLWR_HOME/config.toml`` and make it the default."""
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines.append(f"insecure = {'true' if insecure else 'false'}")
    if root_cert:
        lines.append(f'root-certificates = "{root_cert}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def hub_command(
    port: int,
    *,
    insecure: bool = True,
    host: str = "127.0.0.1",
    tls: tuple[str, str, str] | None = None,
    certs: str | Path | None = None,
    state: str | Path | None = None,
) -> list[str]:
    """``flower-superlink`` argv; ``certs``: TLS + SuperNode authentication with that folder's keys;
    ``state``: the SQLite file the SuperLink keeps its state in (runs, nodes, messages survive a restart)."""
    command = [
        str(BIN / "flower-superlink"),
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]
    if state:
        command += ["--database", str(state)]
    if certs:
        from fedomop.federated.governance.certs import superlink_tls_args

        command += superlink_tls_args(certs)
    elif tls:
        ca, cert, key = tls
        command += ["--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key]
    elif insecure:
        command.append("--insecure")
    return command


def site_command(
    superlink: str,
    db: str,
    site: str,
    *,
    runtime_port: int,
    policy: str | None = None,
    message_log: str | None = None,
    insecure: bool = True,
    root_cert: str | None = None,
    certs: str | Path | None = None,
) -> list[str]:
    """``flower-supernode`` argv; ``certs``: trust the hub's CA and sign with ``certs/<site>.key``."""
    node_config = [f'db="{db}"', f'site="{site}"']
    if policy:
        node_config.append(f'policy="{policy}"')
    if message_log:
        node_config.append(f'message-log="{message_log}"')
    if certs:
        node_config.append(f'certs="{certs}"')
    command = [
        str(BIN / "flower-supernode"),
        "--superlink",
        superlink,
        "--port",
        str(runtime_port),
        "--node-config",
        " ".join(node_config),
    ]
    if certs:
        from fedomop.federated.governance.certs import supernode_auth_args

        command += supernode_auth_args(certs, site)
    elif root_cert:
        command += ["--root-certificates", root_cert]
    elif insecure:
        command.append("--insecure")
    return command


def governed_node_args(secret: Path) -> list[str]:
    """What makes a SuperNode a governed site: no executor of Flower's own (``--isolation process``), the Runtime
    API on loopback, and only the process holding ``secret`` (fedomop's executor) may take its tasks."""
    return ["--isolation", "process", "--host", "127.0.0.1", "--superexec-auth-secret-file", str(secret)]


def write_secret(path: Path) -> Path:
    """A fresh 32-byte SuperExec secret, readable by this user only."""
    import secrets

    path.write_bytes(secrets.token_bytes(32))
    os.chmod(path, 0o600)
    return path


def die_with_parent() -> None:
    """``preexec_fn`` of a site's or hub's pieces: the kernel sends the child SIGTERM when the command that started
    it dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``), so a killed ``fedomop site start`` cannot leave a
    SuperNode taking tasks, an executor holding the port, or a cache folder behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def wait_for_port(
    port: int, timeout_s: float = 60.0, process: subprocess.Popen | None = None, *, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise FedomopError(f"the process listening on {port} exited with {process.returncode}", where="hub")
        if port_in_use(port, host):
            return
        time.sleep(0.2)
    raise FedomopError(f"nothing listening on {host}:{port} after {timeout_s:.0f} s", where="hub")


@dataclass
class LocalDeployment:
    """A SuperLink and one SuperNode per site on 127.0.0.1, each logging to ``workdir``.

    ``policies``: site -> policy YAML (or ``"none-for-testing"``); a site without one refuses
    every request. ``certs``: a folder with (or to receive) ``fedomop certs create`` output;
    the hub then serves TLS and admits only the sites registered from ``<site>.pub``.
    ``executors=True`` runs every site as ``fedomop site start`` does: SuperNode with ``--isolation process`` and
    fedomop's executor beside it (approval check, fork server, wall-time bound); every site then needs a
    policy file. ``persistent_state=False`` keeps the SuperLink's state in memory instead of ``superlink.db``:
    with a state file, many SuperNodes on one busy host can make the SuperLink answer a pushed
    reply with SQLite's "database is locked" (a 5 s busy timeout), and the run then waits for
    that reply (see docs/benchmarks.md, scale-out to 20 sites).
    """

    workdir: Path
    sites: dict[str, str]
    policies: dict[str, str] = field(default_factory=dict)
    message_log: str | None = None
    connection: str = "fedomop-local"
    port: int = 0
    processes: list[subprocess.Popen] = field(default_factory=list)
    certs: Path | None = None
    site_processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    persistent_state: bool = True
    executors: bool = False

    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr_home"

    @property
    def hub_output(self) -> Path:
        """The hub's run-output folder (a run's ``out`` is a name under ``<requester>/`` in it): where
        ``run_deployment`` looks by default, since its FLWR_HOME is the hub's."""
        return self.flwr_home / OUTPUT_FOLDER

    @property
    def hub_config(self) -> HubConfig:
        """The operator's side of a run: allreduce on 127.0.0.1, over mutual TLS with ``certs``."""
        return HubConfig("127.0.0.1", str(self.certs or ""), str(self.hub_output.resolve()))

    @property
    def state_file(self) -> Path:
        """The SuperLink's state database."""
        return self.workdir / "superlink.db"

    @property
    def _state(self) -> Path | None:
        return self.state_file if self.persistent_state else None

    def start(self) -> LocalDeployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = flower_env(self.flwr_home)
        if self.certs:
            self.certs = Path(self.certs).resolve()  # the sites below get the same absolute folder
        env.update(self.hub_config.env())  # the ServerApps' allreduce address, TLS and output folder
        if self.certs:
            self._secure_hub(env, self.certs)
        else:
            write_connection(self.flwr_home, self.connection, f"127.0.0.1:{self.port}")
            hub = self._spawn(hub_command(self.port, state=self._state), "hub", env)
            wait_for_port(self.port, process=hub)
        for name, db in self.sites.items():
            runtime = free_port()
            command = site_command(
                f"127.0.0.1:{self.port}",
                str(Path(db).resolve()),
                name,
                runtime_port=runtime,
                policy=self.policies.get(name),
                message_log=self.message_log,
                certs=self.certs,
            )
            if self.executors:
                self._start_governed_site(name, command, runtime, env)
            else:
                self.site_processes[name] = self._spawn(command, name, env)
        return self

    def _start_governed_site(self, name: str, node: list[str], runtime: int, env: dict[str, str]) -> None:
        """The SuperNode with process isolation, then fedomop's executor on its Runtime API (as ``site start``)."""
        secret = write_secret(self.workdir / f"{name}.superexec.secret")
        self.site_processes[name] = self._spawn(node + governed_node_args(secret), name, env)
        wait_for_port(runtime, process=self.site_processes[name])
        policy = Path(self.policies[name]).resolve()
        self._spawn(executor_command(f"127.0.0.1:{runtime}", policy, secret), f"{name}.executor", env)

    def _secure_hub(self, env: dict[str, str], certs: Path) -> None:
        """TLS SuperLink with SuperNode authentication; every site's public key registered."""
        from fedomop.federated.governance.certs import create_credentials, write_flower_connection
        from fedomop.federated.governance.startup import register_once

        if not (certs / "ca.crt").exists():
            create_credentials(certs, list(self.sites))
        write_flower_connection(self.flwr_home, self.connection, f"127.0.0.1:{self.port}", certs / "ca.crt")
        hub = self._spawn(hub_command(self.port, certs=certs, state=self._state), "hub", env)
        wait_for_port(self.port, process=hub)
        for name in self.sites:
            register_once(certs / f"{name}.pub", flwr_home=self.flwr_home, connection=self.connection)

    def online_sites(self) -> int:
        """How many SuperNodes the SuperLink lists as online (``flwr supernode ls``); 0 if it cannot say yet."""
        listed = subprocess.run(
            [which_flwr(), "supernode", "ls", self.connection, "--format", "json"],
            capture_output=True,
            text=True,
            env=flower_env(self.flwr_home),
            timeout=60,
        )
        if listed.returncode != 0:
            return 0
        with contextlib.suppress(ValueError):
            return sum(1 for node in json.loads(listed.stdout).get("nodes", []) if node.get("status") == "online")
        return 0

    def wait_until_online(self, timeout_s: float = 300.0) -> float:
        """Seconds until every site's SuperNode is online at the hub (their start-up time)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.online_sites() >= len(self.sites):
                return time.monotonic() - started
            time.sleep(0.5)
        raise FedomopError(
            f"fewer than {len(self.sites)} SuperNodes online after {timeout_s:.0f} s",
            where=str(self.workdir),
            fix=f"see the site logs:\n{self.logs()[-3000:]}",
        )

    def kill_site(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a site's SuperNode and the ClientApp processes it spawned (a crash, for fault tests)."""
        process = self.site_processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(15)

    def _spawn(self, command: list[str], name: str, env: dict[str, str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir, start_new_session=True
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """End every process group this deployment started (each SuperNode with its ClientApps)."""
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            # a ServerApp/ClientApp still in its exit handler (pushing to a SuperLink that is gone) outlives
            # its parent in the same process group: end the whole group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        self.processes.clear()
        self.site_processes.clear()

    def __enter__(self) -> LocalDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.workdir.glob("*.log")))


def which_flwr() -> str:
    return str(BIN / "flwr") if (BIN / "flwr").exists() else (shutil.which("flwr") or "flwr")


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def refuse_wildcard(host: str, option: str) -> str:
    """``host`` unless it is a wildcard (``0.0.0.0``, ``::``, ``0``, ``*``): fedomop never listens on every interface."""
    return refuse_wildcard_host(host, option)


def is_loopback(address: str) -> bool:
    """Whether ``host[:port]`` names this machine only."""
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 or address.startswith("[") else address
    return host.strip("[]") in {h.strip("[]") for h in LOOPBACK_HOSTS}


def gate_command(certs: Path, listen: str, upstream: str, ledger: Path, approved_apps: Sequence[str] = ()) -> list[str]:
    """The hub's mTLS gate (governance/gate.py) on the public address, in front of the loopback SuperLink;
    ``approved_apps``: the only app hashes the hub will run (none given: any bundle without compiled code)."""
    approvals = [arg for digest in approved_apps for arg in ("--approved-app", digest)]
    return [sys.executable, "-m", "fedomop.federated.governance.gate", "gate", "--certs", str(certs),
            "--listen", listen, "--upstream", upstream, "--ledger", str(ledger), *approvals]  # fmt: skip


def connect_command(gate: str, port: int, cert: Path, key: Path, ca: Path) -> list[str]:
    """A researcher's loopback listener that carries the unchanged ``flwr`` CLI to the gate inside mTLS."""
    return [sys.executable, "-m", "fedomop.federated.governance.gate", "connect", "--gate", gate,
            "--port", str(port), "--cert", str(cert), "--key", str(key), "--ca", str(ca)]  # fmt: skip


EXECUTOR_MAIN = "import sys; from fedomop.federated.executor import main; sys.exit(main(sys.argv[1:]))"


def executor_command(runtime_address: str, policy: Path, secret_file: Path | None = None) -> list[str]:
    """The site executor (federated/executor.py) on the SuperNode's loopback Runtime API."""
    # `-c`, not `-m`: each task process of the executor's fork server would otherwise re-run the main module.
    # `-P`: `-c` would put the working directory first on sys.path (and the fork server inherits it), so a stray
    # `xgboost.py` in the folder `site start` was run from would be imported as installed code.
    command = [sys.executable, "-P", "-c", EXECUTOR_MAIN, "serve",
               "--runtime-api-address", runtime_address, "--policy", str(policy)]  # fmt: skip
    if secret_file:
        command += ["--auth-secret-file", str(secret_file)]
    return command


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[signal.Signals]]:
    """Hold SIGINT and SIGTERM until the block ends: a shutdown (children stopped, secrets removed) finishes even
    when Ctrl-C is pressed again during it. The block gets the list of signals held so far (a loop inside may
    stop when it fills). A signal that arrived is then handed to the handler that was in place (the CLI's turns
    it into an interrupt, exit 130), so it is delayed, never lost. Outside the main thread the block runs
    unshielded (signal handlers can only be set there)."""
    pending: list[signal.Signals] = []

    def hold(signum: int, frame: object) -> None:
        pending.append(signal.Signals(signum))

    try:
        previous = {signum: signal.signal(signum, hold) for signum in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        yield pending
        return
    try:
        yield pending
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            handler = previous[pending[0]]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                raise KeyboardInterrupt


def stop_processes(processes: Iterable[subprocess.Popen], grace_s: float = 15.0) -> None:
    """Terminate, wait up to ``grace_s``, then kill: shielded from a second interrupt (``signals_deferred``)."""
    with signals_deferred():
        running = [p for p in processes if p.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def supervise(processes: dict[str, subprocess.Popen], poll_s: float = 0.5) -> int:
    """Wait in the foreground until one of ``processes`` ends, then end the others.

    The pieces of a governed hub (SuperLink + gate) or site (SuperNode + executor) only make
    sense together: a hub without its gate is unreachable, a SuperNode without its executor
    would hold tasks nobody answers. Any piece ending is therefore a failure (exit code 1 at
    least), never a silent 0.
    Ctrl-C or SIGTERM stops the loop without unwinding (``signals_deferred``), so however many follow, the
    children are stopped before the interrupt is passed on (exit 130 from the CLI).
    """
    with signals_deferred() as interrupted:
        try:
            while not interrupted:
                ended = {name: p.returncode for name, p in processes.items() if p.poll() is not None}
                if ended:
                    for name, code in ended.items():
                        print(f"fedomop: {name} exited with {code}; stopping the rest", file=sys.stderr)
                    return max(1, *(abs(code) for code in ended.values()))
                time.sleep(poll_s)
            return 130  # the held signal is passed on as the block ends (the CLI's handler: an interrupt)
        finally:
            stop_processes(processes.values())

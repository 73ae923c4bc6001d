"""``fedomop hub start|connect`` and ``fedomop site start``: the governed deployment by default.

A hub is a SuperLink on 127.0.0.1 behind the mTLS gate (governance/gate.py) on the public
address; a site is a SuperNode with ``--isolation process`` and fedomop's executor
(federated/executor.py) on its loopback Runtime API, so no submitted code runs at the site
and every control call carries an operator-issued certificate. The older, ungoverned
processes (stock ClientApp executor, an open Control API) start only with ``--ungoverned``,
only on 127.0.0.1, and say so loudly: an operator cannot end up there by leaving out a flag.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedomop.federated import deploy
from fedomop.federated.errors import PolicyError
from fedomop.federated.settings import OUTPUT_FOLDER, HubConfig
from fedomop.harmonize.ground.errors import FedomopError

console = Console()
err_console = Console(stderr=True)
UNGOVERNED_BANNER = (
    "[bold red]UNGOVERNED[/]: {what}. Submitted code runs unchecked and the Control API has no "
    "authentication. Use only for a throwaway network on this machine."
)
LEDGER_ENV = "FEDOMOP_GATE_LEDGER"


def _ungoverned_only_on_loopback(address: str, option: str) -> None:
    if not deploy.is_loopback(address):
        raise PolicyError(
            f"--ungoverned with {option} {address}: an ungoverned network may only live on this machine",
            where=option,
            fix="drop --ungoverned (the governed hub/site is the default), or use 127.0.0.1",
        )
    err_console.print(UNGOVERNED_BANNER.format(what=f"ungoverned {option.strip('-')} {address}"))


def _needs(value: Path | None, option: str, what: str, fix: str) -> Path:
    if value is None:
        raise PolicyError(
            f"a governed deployment needs {option} ({what})",
            where=option,
            fix=f"{fix}; --ungoverned (loopback only) skips governance and says so",
        )
    return value


def register(app: typer.Typer) -> None:  # noqa: C901 - one closure per command, as typer wants
    site_app = typer.Typer(help="A site's SuperNode and its executor (one per hospital).", no_args_is_help=True)
    hub_app = typer.Typer(
        help="The hub: SuperLink behind the mTLS gate; `connect` for researchers.", no_args_is_help=True
    )

    @site_app.command("start")
    def site_start(
        db: Annotated[str, typer.Option(help="This site's OMOP database URL or DuckDB path.")],
        superlink: Annotated[
            str, typer.Option(help="The hub's public address host:port (its gate).")
        ] = "127.0.0.1:9091",
        name: Annotated[str | None, typer.Option("--site", help="Site name (default: the database file name).")] = None,
        policy: Annotated[
            Path | None, typer.Option(help="Governance policy YAML: approvals, tables, limits (required).")
        ] = None,
        runtime_port: Annotated[int, typer.Option(help="Loopback port of the SuperNode's Runtime API.")] = 9094,
        root_cert: Annotated[
            Path | None, typer.Option(help="--ungoverned only: CA certificate of the hub (TLS).")
        ] = None,
        certs: Annotated[
            Path | None,
            typer.Option(help="Folder holding ca.crt and <site>.key from `fedomop certs create` (required)."),
        ] = None,
        ungoverned: Annotated[
            bool, typer.Option("--ungoverned", help="Run Flower's stock executor without checks (loopback only, loud).")
        ] = False,
    ) -> None:
        """Run this site's SuperNode and fedomop's executor in the foreground; only approved runs are answered."""
        site = name or Path(db).stem
        preflight_site(site, policy, certs, root_cert)
        database = str(Path(db).resolve()) if "://" not in db else db
        env = deploy.flower_env(None)
        if ungoverned:
            _ungoverned_only_on_loopback(superlink, "--superlink")
            command = deploy.site_command(
                superlink, database, site, runtime_port=runtime_port,
                policy=str(policy.resolve()) if policy else None,
                root_cert=str(root_cert) if root_cert else None, certs=certs.resolve() if certs else None,
            )  # fmt: skip
            raise typer.Exit(1 if subprocess.call(command, env=env) else 0)
        policy = _needs(policy, "--policy", "the site's approvals", "start from federated/governance/policies/")
        certs = _needs(certs, "--certs", "ca.crt and this site's key", "copy them from `fedomop certs create`")
        policy, certs = policy.resolve(), certs.resolve()
        if deploy.port_in_use(runtime_port):
            raise FedomopError(
                f"port {runtime_port} on 127.0.0.1 is already in use, so this site's Runtime API cannot start",
                where="--runtime-port",
                fix="stop the other site on this machine (`ps` shows flower-supernode), or pass another --runtime-port",
            )
        runtime = f"127.0.0.1:{runtime_port}"
        secret_dir = Path(tempfile.mkdtemp(prefix="fedomop-site-"))
        secret = deploy.write_secret(secret_dir / "superexec.secret")  # only our executor may take this node's tasks
        node = deploy.site_command(
            superlink, database, site, runtime_port=runtime_port, policy=str(policy), certs=certs
        ) + deploy.governed_node_args(secret)
        console.print(
            f"site {site}: connecting to {superlink}; executor on {runtime} checks every run against {policy}"
        )
        processes = {"supernode": subprocess.Popen(node, env=env, preexec_fn=deploy.die_with_parent)}
        try:
            deploy.wait_for_port(runtime_port, timeout_s=60, process=processes["supernode"])
            executor = deploy.executor_command(runtime, policy, secret)
            processes["executor"] = subprocess.Popen(executor, env=env, preexec_fn=deploy.die_with_parent)
            raise typer.Exit(deploy.supervise(processes))
        finally:
            with deploy.signals_deferred():  # a second Ctrl-C cannot leave a node running or its secret behind
                deploy.stop_processes(processes.values())
                shutil.rmtree(secret_dir, ignore_errors=True)

    @hub_app.command("start")
    def hub_start(
        port: Annotated[
            int, typer.Option(help="Public port: the mTLS gate (sites and researchers connect here).")
        ] = 9091,
        host: Annotated[str, typer.Option(help="Public interface of the gate (never a wildcard).")] = "127.0.0.1",
        connection: Annotated[
            str, typer.Option(help="Name of the hub-local connection (operator's own, on loopback) in $FLWR_HOME.")
        ] = "fedomop",
        flwr_home: Annotated[Path | None, typer.Option(help="FLWR_HOME (default ~/.flwr).")] = None,
        certs: Annotated[
            Path | None,
            typer.Option(help="Folder from `fedomop certs create` (required): TLS, gate CA, the sites' .pub to admit."),
        ] = None,
        state: Annotated[
            Path | None, typer.Option(help="SQLite file for the SuperLink's state (default FLWR_HOME/superlink.db).")
        ] = None,
        in_memory_state: Annotated[
            bool,
            typer.Option(
                "--in-memory-state",
                help="Keep the SuperLink's state in memory: lost on restart, but no SQLite 'database is locked' "
                "stalls on a busy hub with many sites (docs/federated.md).",
            ),
        ] = False,
        superlink_port: Annotated[
            int, typer.Option(help="Loopback port of the SuperLink behind the gate (0: a free one).")
        ] = 0,
        ledger: Annotated[
            Path | None,
            typer.Option(help="The gate's ledger of runs and refusals (default FLWR_HOME/gate_ledger.jsonl)."),
        ] = None,
        ungoverned: Annotated[
            bool, typer.Option("--ungoverned", help="A bare SuperLink, no gate (loopback only, loud).")
        ] = False,
        approved_app: Annotated[
            list[str] | None,
            typer.Option(
                help="App hash (`fedomop governance hash --fab`) the hub's ServerApp may run besides the installed "
                "fedomop app; repeat. A submitted bundle's code runs on the hub: any other is refused."
            ),
        ] = None,
    ) -> None:
        """Run the hub in the foreground: the SuperLink on 127.0.0.1, the mTLS gate on --host:--port."""
        home = flwr_home or Path.home() / ".flwr"
        if in_memory_state and state:
            raise FedomopError(
                "--state and --in-memory-state contradict each other",
                where="fedomop hub start",
                fix="keep one: --state FILE (survives a restart) or --in-memory-state",
            )
        deploy.refuse_wildcard(host, "--host")
        state = None if in_memory_state else state or home / "superlink.db"
        if state:
            state.parent.mkdir(parents=True, exist_ok=True)
        address = f"{host}:{port}"
        if ungoverned:
            _ungoverned_only_on_loopback(address, "--host")
            if certs:
                raise typer.Exit(secure_hub(port, host, _hub_certs(certs), home, connection, address, state))
            deploy.write_connection(home, connection, address)
            code = subprocess.call(deploy.hub_command(port, host=host, state=state), env=deploy.flower_env(home))
            raise typer.Exit(1 if code else 0)
        certs = _hub_certs(_needs(certs, "--certs", "CA, server certificate, site keys", "run `fedomop certs create`"))
        raise typer.Exit(
            _governed_hub(port, host, certs, home, connection, state, superlink_port, ledger, approved_app or [])
        )

    @hub_app.command("connect")
    def hub_connect(
        gate: Annotated[str, typer.Option(help="The hub's public address host:port.")],
        cert: Annotated[Path, typer.Option(help="Your certificate from `fedomop certs issue` (<name>.<role>.pem).")],
        key: Annotated[Path, typer.Option(help="Its private key (<name>.<role>.key).")],
        ca: Annotated[Path, typer.Option(help="The network's ca.crt.")],
        port: Annotated[int, typer.Option(help="Loopback port for your flwr/fedomop commands (0: a free one).")] = 0,
        connection: Annotated[str, typer.Option(help="Connection name for `fedomop train --federation`.")] = "fedomop",
        flwr_home: Annotated[Path | None, typer.Option(help="FLWR_HOME (default ~/.flwr).")] = None,
    ) -> None:
        """Carry your `flwr`/`fedomop train --federation` calls to the hub's gate with your certificate (foreground)."""
        from fedomop.federated.governance.certs import holder

        for option, path in (("--cert", cert), ("--key", key), ("--ca", ca)):
            if not path.is_file():
                raise PolicyError(
                    f"{path.resolve()} does not exist",
                    where=option,
                    fix="ask the hub operator for `fedomop certs issue` output",
                )
        name, role = holder(cert, ca)
        home = flwr_home or Path.home() / ".flwr"
        port = port or deploy.free_port()
        deploy.write_connection(home, connection, f"127.0.0.1:{port}")
        tunnel = subprocess.Popen(deploy.connect_command(gate, port, cert.resolve(), key.resolve(), ca.resolve()))
        try:  # a Ctrl-C while the tunnel starts stops it too
            deploy.wait_for_port(port, timeout_s=30, process=tunnel)
            console.print(
                f"connected as {name} ({role}) to {gate}: `fedomop train --federation {connection}` and `flwr ... "
                f"{connection}` now go through the gate (FLWR_HOME {home})",
                highlight=False,
            )
            raise typer.Exit(deploy.supervise({"connection": tunnel}))
        finally:
            deploy.stop_processes([tunnel])

    app.add_typer(site_app, name="site")
    app.add_typer(hub_app, name="hub")


def _installed_app_hash() -> str:
    """The FAB hash of the installed fedomop Flower app: always on a governed hub's list (a submitted bundle is
    code that runs on the hub, so only the installed one and those the operator adds run)."""
    from fedomop.federated.governance.approval import fab_hash
    from fedomop.federated.runner import APP_DIR

    return fab_hash(APP_DIR)


def _hub_certs(certs: Path) -> Path:
    from fedomop.federated.governance.startup import HUB_FILES, require_credentials

    return require_credentials(certs, HUB_FILES)


def _governed_hub(  # noqa: PLR0913 - the hub's options, passed on
    port: int,
    host: str,
    certs: Path,
    home: Path,
    connection: str,
    state: Path | None,
    superlink_port: int,
    ledger: Path | None,
    approved_apps: list[str],
) -> int:
    """SuperLink (TLS, node authentication) on 127.0.0.1, every ``<site>.pub`` registered, the gate in front."""
    from fedomop.federated.governance.certs import write_flower_connection
    from fedomop.federated.governance.startup import register_once

    internal = superlink_port or deploy.free_port()
    approved_apps = [_installed_app_hash(), *approved_apps]
    ledger = (ledger or home / "gate_ledger.jsonl").resolve()
    ledger.parent.mkdir(parents=True, exist_ok=True)
    local = f"{connection}-hub-local"
    write_flower_connection(home, local, f"127.0.0.1:{internal}", certs / "ca.crt")
    env = {**deploy.flower_env(home), LEDGER_ENV: str(ledger)}  # the ServerApp reads the requester from it
    # the operator's, never a researcher's: the allreduce listens on --host only, over mutual TLS with --certs,
    # and a run writes only under the hub's run-output folder
    env.update(HubConfig(host, str(certs.resolve()), str((home / OUTPUT_FOLDER).resolve())).env())
    command = deploy.hub_command(internal, host="127.0.0.1", certs=certs, state=state)
    processes = {"superlink": subprocess.Popen(command, env=env, preexec_fn=deploy.die_with_parent)}
    try:
        deploy.wait_for_port(internal, process=processes["superlink"])
        for public_key in sorted(certs.glob("*.pub")):
            node_id = register_once(public_key, flwr_home=home, connection=local)
            known = "already registered (saved state)" if node_id is None else f"node {node_id}"
            console.print(f"registered {public_key.stem} ({known})", highlight=False)
        gate = deploy.gate_command(certs, f"{host}:{port}", f"127.0.0.1:{internal}", ledger, approved_apps)
        processes["gate"] = subprocess.Popen(gate, env=env, preexec_fn=deploy.die_with_parent)
        deploy.wait_for_port(port, host=host, process=processes["gate"])
        console.print(
            f"hub: gate on {host}:{port} (mTLS; researchers: `fedomop hub connect`), SuperLink on 127.0.0.1:{internal}, "
            f"ledger {ledger}; runs only app(s) {', '.join(a[:12] for a in approved_apps)}",
            highlight=False,
        )
        if (certs / "ca.key").exists():
            console.print(
                f"[yellow]note:[/] {certs / 'ca.key'} (the network CA's private key) is in the hub's --certs folder; "
                "keep it offline once certificates are issued (the hub needs ca.crt, server.pem/.key, the .pub files)",
                highlight=False,
            )
        sys.stdout.flush()
        return deploy.supervise(processes)
    finally:
        deploy.stop_processes(processes.values())


def secure_hub(port: int, host: str, certs: Path, home: Path, connection: str, address: str, state: Path | None) -> int:
    """Start a TLS SuperLink with SuperNode authentication, register every ``<site>.pub`` in
    ``certs``, then stay in the foreground until it exits."""
    from fedomop.federated.governance.certs import write_flower_connection
    from fedomop.federated.governance.startup import register_once

    write_flower_connection(home, connection, address, certs / "ca.crt")
    hub = subprocess.Popen(deploy.hub_command(port, host=host, certs=certs, state=state), env=deploy.flower_env(home))
    try:
        deploy.wait_for_port(port, process=hub)
        for public_key in sorted(certs.glob("*.pub")):
            node_id = register_once(public_key, flwr_home=home, connection=connection)
            known = "already registered (saved state)" if node_id is None else f"node {node_id}"
            console.print(f"registered {public_key.stem} ({known})")
        return hub.wait()
    finally:
        deploy.stop_processes([hub])


def preflight_site(site: str, policy: Path | None, certs: Path | None, root_cert: Path | None) -> None:
    """Fail in seconds, naming the path, on missing credentials or a tampered audit log."""
    from fedomop.federated.governance.startup import require_credentials, require_untampered_log, site_files

    if certs:
        require_credentials(certs, site_files(site))
    if root_cert and not root_cert.is_file():
        raise FedomopError(
            f"CA certificate {root_cert.resolve()} does not exist", where="--root-cert", fix="pass the hub's ca.crt"
        )
    if policy:
        require_untampered_log(policy)
    from fedomop.federated.executor import cache_root

    cache_root()  # TMPDIR, where the executor keeps a run's feature matrix, must be usable (never /tmp instead)

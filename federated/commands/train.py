"""``fedomop train``, ``fedomop site start`` and ``fedomop hub start``: thin commands over fedomop.federated.runner/deploy."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated, Any, TypedDict

import typer
from rich.console import Console
from rich.table import Table

from fedomop.federated.console import RoundProgress
from fedomop.federated.deploy import flower_env, hub_command, site_command, write_connection
from fedomop.federated.errors import StudyError
from fedomop.federated.models import MODEL_NAMES as MODELS
from fedomop.federated.models import registry
from fedomop.federated.report import print_comparison
from fedomop.federated.settings import TrainSettings
from fedomop.harmonize.ground.errors import FedomopError

console = Console()
DEFAULT_SITES = [Path("out") / f"site_{s}.duckdb" for s in "abcd"]


def _check_sites(sites: list[str] | list[Path]) -> list[str]:
    """Site databases as given: a DuckDB path must exist; a URL (postgresql://...) is passed on unchanged
    (``--sites`` is text, not a Path, because a Path would fold ``postgresql://`` into ``postgresql:/``)."""
    sites = [str(p) for p in sites]
    missing = [p for p in sites if "://" not in p and not Path(p).exists()]
    if missing:
        raise StudyError(
            f"site database(s) not found: {', '.join(missing)}",
            where="--sites",
            fix="run `fedomop demo` to build the sample sites, or pass --sites with your OMOP databases",
        )
    return sites


SURVIVAL_MODEL = "cox-ph"


class _TrainOptions(TypedDict, total=False):
    """What ``train`` hands the runner besides the study and sites (TrainSettings checks each; ``certs``:
    deployment only)."""

    model: str
    rounds: int
    strategy: str
    proximal_mu: float
    round_timeout: float
    min_sites: int
    certs: str


def _train_survival(
    spec: Any, model: str | None, federation: str | None, sites: list[str] | None, out: Path, rounds: int
) -> None:
    """A time-to-event study: federated site-stratified Cox or histogram XGBoost survival:aft, printed like the
    classifier comparison."""
    from fedomop.federated.survival.boosted import COX, refuse_cox
    from fedomop.federated.survival.runner import (
        SURVIVAL_MODELS,
        comparison_rows,
        run_survival,
        site_names,
        write_result,
    )

    chosen = model or SURVIVAL_MODEL
    if chosen not in (*SURVIVAL_MODELS, COX):
        raise StudyError(
            f"model {chosen!r} is a classifier; this study's outcome is time-to-event",
            where="--model",
            fix=f"use --model {' or '.join(SURVIVAL_MODELS)}",
        )
    if chosen == COX:
        refuse_cox()  # before any site is read
    if federation:
        raise StudyError(
            "time-to-event studies are not yet offered over a Flower deployment: the deployed ClientApp answers "
            "only the classifier messages (no Efron-sums, survival-metrics or Kaplan-Meier-count message types), "
            "so a deployed site could not take part",
            where="--federation",
            fix="run the study in simulation: leave out --federation and pass --sites with the site databases",
        )
    paths = _check_sites(sites or DEFAULT_SITES)
    result = run_survival(spec, site_names([str(p) for p in paths]), model=chosen, rounds=rounds)
    table = Table(title=f"{spec.name} ({chosen}): held-out 30% per site (weighted by held-out rows)")
    keys = [k for k in result.metrics["federated"]["weighted"]]
    table.add_column("model")
    for key in keys:
        table.add_column(key, justify="right")
    for label, values in comparison_rows(result):
        table.add_row(label, *(f"{values.get(k, float('nan')):.3f}" for k in keys))
    console.print(table)
    unit = "Newton rounds" if chosen == SURVIVAL_MODEL else "trees"
    console.print(f"{result.model}: {result.rounds} {unit}; result in {write_result(result, out)}")


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        study: Annotated[
            str, typer.Option(help="Study YAML path or bundled name (bone_metastasis).")
        ] = "bone_metastasis",
        model: Annotated[
            str | None,
            typer.Option(
                help=" | ".join(MODELS)
                + " (classifiers; default xgboost-hist) | cox-ph | xgboost-aft (time-to-event studies; default cox-ph)"
            ),
        ] = None,
        sites: Annotated[
            list[str] | None,
            typer.Option("--sites", help="Site OMOP databases (simulation): DuckDB paths or postgresql:// URLs."),
        ] = None,
        rounds: Annotated[int, typer.Option(help="Federated rounds (0: the model's default).")] = 0,
        strategy: Annotated[str, typer.Option(help="MLP aggregation: fedavg | fedprox.")] = "fedavg",
        mu: Annotated[float, typer.Option(help="FedProx proximal weight.")] = 0.1,
        out: Annotated[Path, typer.Option(help="Folder for the model, model card and result.")] = Path("out/federated"),
        federation: Annotated[
            str | None, typer.Option(help="Run on a real deployment: a SuperLink connection in $FLWR_HOME/config.toml.")
        ] = None,
        min_nodes: Annotated[int, typer.Option(help="Sites to wait for on a deployment.")] = 2,
        flwr_home: Annotated[Path | None, typer.Option(help="FLWR_HOME holding the connection.")] = None,
        message_log: Annotated[
            Path | None, typer.Option(help="Simulation: record the shape of every site reply (JSONL) for audit.")
        ] = None,
        round_timeout: Annotated[
            float, typer.Option(help="Seconds a round waits for its sites; a site that does not answer is missing.")
        ] = 600.0,
        min_sites: Annotated[
            int, typer.Option(help="Fewest sites a round may go on with (0: all; histogram XGBoost needs all).")
        ] = 0,
        certs: Annotated[
            Path | None,
            typer.Option(
                help="Deployment: `fedomop certs create` folder; histogram XGBoost's allreduce then uses TLS."
            ),
        ] = None,
    ) -> None:
        """Train a federated model for a study and compare it with each site alone (and pooled, in simulation)."""
        from fedomop.federated import runner
        from fedomop.federated.study import load_study

        study_spec_path = _study_path(study)
        spec = load_study(study_spec_path)  # fail early, with the file and key, on a bad study
        if spec.outcome.time_to_event:
            _train_survival(spec, model, federation, sites, out, rounds)
            return
        model = model or "xgboost-hist"
        if model == SURVIVAL_MODEL:
            raise StudyError(
                f"{SURVIVAL_MODEL} needs a time-to-event study", where="--model", fix="set `outcome.type: time_to_event`"
            )
        options: _TrainOptions = {
            "model": model,
            "rounds": rounds,
            "strategy": strategy,
            "proximal_mu": mu,
            "round_timeout": round_timeout,
            "min_sites": min_sites,
        }
        registry.get(model)  # fail early, naming the setting: an unknown model, a value out of bounds
        TrainSettings.from_mapping({k: v for k, v in options.items() if k != "model"})
        if federation:
            if certs:
                from fedomop.federated.governance.startup import HUB_FILES, require_credentials

                options["certs"] = str(require_credentials(certs, HUB_FILES))
            result = runner.run_deployment(
                study_spec_path, federation, out=out, flwr_home=flwr_home, min_nodes=min_nodes, **options
            )
        else:
            site_paths = _check_sites(sites or DEFAULT_SITES)
            progress = _progress(model, rounds, len(site_paths))
            try:
                result = runner.simulate(
                    study_spec_path, site_paths, out=out, message_log=message_log, progress=progress, **options
                )
            finally:
                progress.close()
        print_comparison(result)
        console.print(f"model, model_card.json and result.json in {out}")

    site_app = typer.Typer(help="A site's SuperNode (one per hospital).", no_args_is_help=True)

    @site_app.command("start")
    def site_start(
        db: Annotated[str, typer.Option(help="This site's OMOP database URL or DuckDB path.")],
        superlink: Annotated[str, typer.Option(help="The hub's address host:port.")] = "127.0.0.1:9091",
        name: Annotated[str | None, typer.Option("--site", help="Site name (default: the database file name).")] = None,
        policy: Annotated[
            Path | None, typer.Option(help="Governance policy YAML enforced before data is touched.")
        ] = None,
        runtime_port: Annotated[int, typer.Option(help="Local port of the SuperNode's runtime API.")] = 9094,
        root_cert: Annotated[
            Path | None, typer.Option(help="CA certificate of the hub (TLS); omit for --insecure.")
        ] = None,
        certs: Annotated[
            Path | None,
            typer.Option(help="Folder from `fedomop certs create`: TLS + sign with <site>.key (default insecure)."),
        ] = None,
    ) -> None:
        """Run this site's Flower SuperNode in the foreground, pointed at its own database."""
        site = name or Path(db).stem
        _preflight_site(site, policy, certs, root_cert)
        command = site_command(
            superlink,
            str(Path(db).resolve()) if "://" not in db else db,
            site,
            runtime_port=runtime_port,
            policy=str(policy.resolve()) if policy else None,
            root_cert=str(root_cert) if root_cert else None,
            certs=certs.resolve() if certs else None,
        )
        console.print(f"site {site}: connecting to {superlink}")
        raise typer.Exit(subprocess.call(command, env=flower_env(None)))

    hub_app = typer.Typer(help="The hub's SuperLink (one per federation).", no_args_is_help=True)

    @hub_app.command("start")
    def hub_start(
        port: Annotated[int, typer.Option(help="Port of the SuperLink's HTTP APIs (Control, Fleet, Runtime).")] = 9091,
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        connection: Annotated[
            str, typer.Option(help="Name written to $FLWR_HOME/config.toml for --federation.")
        ] = "fedomop",
        flwr_home: Annotated[Path | None, typer.Option(help="FLWR_HOME (default ~/.flwr).")] = None,
        certs: Annotated[
            Path | None,
            typer.Option(help="Folder from `fedomop certs create`: TLS, and admit only the sites whose .pub it holds."),
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
    ) -> None:
        """Run the hub's Flower SuperLink in the foreground (insecure unless --certs)."""
        home = flwr_home or Path.home() / ".flwr"
        if in_memory_state and state:
            raise FedomopError(
                "--state and --in-memory-state contradict each other",
                where="fedomop hub start",
                fix="keep one: --state FILE (survives a restart) or --in-memory-state",
            )
        state = None if in_memory_state else state or home / "superlink.db"
        if state:
            state.parent.mkdir(parents=True, exist_ok=True)
        address = f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        console.print(f"hub on {host}:{port}; train with: fedomop train --federation {connection}")
        if certs:
            from fedomop.federated.governance.startup import HUB_FILES, require_credentials

            require_credentials(certs, HUB_FILES)
        if not certs:
            write_connection(home, connection, address)
            raise typer.Exit(subprocess.call(hub_command(port, host=host, state=state), env=flower_env(home)))
        raise typer.Exit(_secure_hub(port, host, certs.resolve(), home, connection, address, state))

    app.add_typer(site_app, name="site")
    app.add_typer(hub_app, name="hub")


def _secure_hub(
    port: int, host: str, certs: Path, home: Path, connection: str, address: str, state: Path | None
) -> int:
    """Start a TLS SuperLink with SuperNode authentication, register every ``<site>.pub`` in
    ``certs``, then stay in the foreground until it exits."""
    from fedomop.federated.deploy import wait_for_port
    from fedomop.federated.governance.certs import write_flower_connection
    from fedomop.federated.governance.startup import register_once

    write_flower_connection(home, connection, address, certs / "ca.crt")
    hub = subprocess.Popen(hub_command(port, host=host, certs=certs, state=state), env=flower_env(home))
    try:
        wait_for_port(port, process=hub)
        for public_key in sorted(certs.glob("*.pub")):
            node_id = register_once(public_key, flwr_home=home, connection=connection)
            known = "already registered (saved state)" if node_id is None else f"node {node_id}"
            console.print(f"registered {public_key.stem} ({known})")
        return hub.wait()
    finally:
        if hub.poll() is None:
            hub.terminate()
            hub.wait(15)


def _progress(model: str, rounds: int, n_sites: int) -> RoundProgress:
    """Progress on stderr (stdout keeps the result table): a first line now, then one per round or phase."""
    total = rounds or registry.get(model).defaults.rounds
    progress = RoundProgress(total)
    progress.console.print(f"training {model} on {n_sites} sites, {total} rounds (simulation)", markup=False)
    return progress


def _preflight_site(site: str, policy: Path | None, certs: Path | None, root_cert: Path | None) -> None:
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


def _study_path(study: str) -> Path:
    from fedomop.federated.study import STUDIES_DIR

    path = Path(study)
    if not path.exists() and not path.suffix and (STUDIES_DIR / f"{study}.yaml").exists():
        return STUDIES_DIR / f"{study}.yaml"
    return path

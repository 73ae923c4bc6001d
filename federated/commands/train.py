"""``fedomop train``: a thin command over fedomop.federated.runner (hub/site commands: commands/network.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypedDict

import typer
from rich.console import Console
from rich.table import Table

from fedomop.federated.console import RoundProgress
from fedomop.federated.errors import StudyError
from fedomop.federated.models import MODEL_NAMES as MODELS
from fedomop.federated.models import registry
from fedomop.federated.report import print_comparison
from fedomop.federated.settings import TrainSettings

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
    """What ``train`` hands the runner besides the study and sites (TrainSettings checks each)."""

    model: str
    rounds: int
    strategy: str
    proximal_mu: float
    round_timeout: float
    min_sites: int
    compare_local: bool


def _train_survival(
    spec: Any, model: str | None, federation: str | None, sites: list[str] | None, out: Path, rounds: int
) -> None:
    """A time-to-event study: federated site-stratified Cox or histogram XGBoost survival:aft / site-stratified
    survival:cox, printed like the classifier comparison."""
    from fedomop.federated.survival.runner import (
        SURVIVAL_MODELS,
        comparison_rows,
        run_survival,
        site_names,
        write_result,
    )

    chosen = model or SURVIVAL_MODEL
    if chosen not in SURVIVAL_MODELS:
        raise StudyError(
            f"model {chosen!r} is a classifier; this study's outcome is time-to-event",
            where="--model",
            fix=f"use --model {' or '.join(SURVIVAL_MODELS)}",
        )
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
                + " (classifiers; default xgboost-hist) | cox-ph | xgboost-aft | xgboost-cox (time-to-event studies; "
                "default cox-ph)"
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
        compare_local: Annotated[
            bool,
            typer.Option(help="Also train and evaluate each site alone (one more training and evaluation per site)."),
        ] = True,
        hub_output: Annotated[
            Path | None,
            typer.Option(
                help="Deployment: where this machine reads the hub's run-output folder (default "
                "$FLWR_HOME/fedomop-runs). The hub, not the researcher, decides the allreduce's address and TLS."
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
                f"{SURVIVAL_MODEL} needs a time-to-event study",
                where="--model",
                fix="set `outcome.type: time_to_event`",
            )
        options: _TrainOptions = {
            "model": model,
            "rounds": rounds,
            "strategy": strategy,
            "proximal_mu": mu,
            "round_timeout": round_timeout,
            "min_sites": min_sites,
            "compare_local": compare_local,
        }
        registry.get(model)  # fail early, naming the setting: an unknown model, a value out of bounds
        TrainSettings.from_mapping({k: v for k, v in options.items() if k != "model"})
        if federation:
            result = runner.run_deployment(
                study_spec_path,
                federation,
                out=out,
                flwr_home=flwr_home,
                hub_output=hub_output,
                min_nodes=min_nodes,
                **options,
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


def _progress(model: str, rounds: int, n_sites: int) -> RoundProgress:
    """Progress on stderr (stdout keeps the result table): a first line now, then one per round or phase."""
    total = rounds or registry.get(model).defaults.rounds
    progress = RoundProgress(total)
    progress.console.print(f"training {model} on {n_sites} sites, {total} rounds (simulation)", markup=False)
    return progress


def _study_path(study: str) -> Path:
    from fedomop.federated.study import STUDIES_DIR

    path = Path(study)
    if not path.exists() and not path.suffix and (STUDIES_DIR / f"{study}.yaml").exists():
        return STUDIES_DIR / f"{study}.yaml"
    return path

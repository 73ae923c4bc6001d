"""The hub side: a Flower ServerApp that runs one study with one model and compares it.

Phases: ``describe`` (which node is which site, train/test sizes, data versions),
model training (histogram XGBoost, bagging, cyclic, or the MLP with FedAvg/FedProx),
federated evaluation of the final model on every site's held-out 30%, and the
site-alone references (each site's own model, evaluated on every site's held-out
set). The hub writes ``result.json`` and the model to ``out`` for the caller; the
pooled reference is added afterwards, only in simulation (see :mod:`fedomop.federated.runner`).

Every exchange goes through a :class:`fedomop.federated.faults.FaultTolerantGrid`: a round waits
at most ``round_timeout`` s, FedAvg/FedProx/bagging/cyclic go on with the sites that
answered as long as ``min_sites`` did, histogram XGBoost (an allreduce over every site)
stops with the missing site named, and ``result.json`` says who was missing per round
(``faults``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedomop.federated import metrics
from fedomop.federated.errors import SettingsError
from fedomop.federated.faults import FaultTolerantGrid
from fedomop.federated.models import registry
from fedomop.federated.settings import (
    RUN_OUTPUT_ENV,
    HubConfig,
    TrainSettings,
    output_name,
    refuse_wildcard_host,
    setting,
)
from fedomop.federated.study import parse_study
from fedomop.federated.transport import CountingGrid, OnExchange, record_number
from fedomop.harmonize.ground.errors import FedomopError


@dataclass(frozen=True)
class RunSettings(TrainSettings):
    """What the hub runs: the study, the model's name, the typed :class:`TrainSettings`, and the hub's own config.

    Given directly in simulation, or as Flower run config (``study`` as its text, ``model``, ``settings`` as
    canonical JSON and ``settings-digest``; see :meth:`from_run_config`). ``rounds``/``local_rounds`` left at 0
    take the model's defaults. ``xgb_host``, ``certs`` and ``output_root`` are the hub operator's
    (:class:`fedomop.federated.settings.HubConfig`): a run config cannot set them.
    """

    study_text: str = setting("", doc="the study YAML")
    model: str = setting("xgboost-hist", doc="a registered model name (fedomop.federated.models.registry)")
    xgb_host: str = setting("127.0.0.1", doc="hub operator: address of histogram XGBoost's allreduce relay")
    certs: str = setting("", doc="hub operator: fedomop certs create folder; the allreduce then requires mutual TLS")
    output_root: str = setting("", doc="hub operator: the run-output folder ('out' is a name under it); '': none")

    def __post_init__(self) -> None:
        super().__post_init__()
        resolved = registry.get(self.model).resolve(self.train)
        object.__setattr__(self, "rounds", resolved.rounds)
        object.__setattr__(self, "local_rounds", resolved.local_rounds)
        refuse_wildcard_host(self.xgb_host, "xgb_host")
        if self.output_root:
            output_name(self.out)
        if self.certs:  # the TLS allreduce server needs these; a wrong folder must not hang the run
            from fedomop.federated.governance.startup import HUB_FILES, require_credentials

            require_credentials(Path(self.certs), HUB_FILES)

    @classmethod
    def of(cls, study_text: str, model: str, train: TrainSettings, hub: HubConfig | None = None) -> RunSettings:
        return cls(study_text=study_text, model=model, **asdict(train), **asdict(hub or HubConfig()))

    @property
    def train(self) -> TrainSettings:
        """The training settings alone (what the digest covers)."""
        return TrainSettings(**{f.name: getattr(self, f.name) for f in fields(TrainSettings)})

    @property
    def output_dir(self) -> Path:
        """Where result.json and the model go: under the hub's run-output folder when it has one."""
        return Path(self.output_root) / output_name(self.out) if self.output_root else Path(self.out)

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], hub: HubConfig | None = None) -> RunSettings:
        """Flower's run config: the study's text, the model and the serialized settings with their digest.

        The study travels as its text and is never opened as a path here (a researcher must not make the hub
        read its own files). Host, TLS and the output folder come from ``hub`` (default: the hub's environment).
        """
        known = {"study", "model", "settings", "settings-digest", "requester"}
        unknown = sorted(set(run_config) - known)
        if unknown:
            raise SettingsError(
                f"unknown run config key(s) {', '.join(unknown)}",
                where="flwr run --run-config",
                fix="training settings travel as one JSON 'settings' (fedomop train --federation writes it)",
            )
        train = TrainSettings.from_json(str(run_config.get("settings", "")), str(run_config.get("settings-digest", "")))
        hub = hub or HubConfig.from_env()
        if not hub.output_root:
            raise SettingsError("the hub has no run-output folder", where="hub", fix=f"set {RUN_OUTPUT_ENV}")
        return cls.of(str(run_config["study"]), str(run_config.get("model", "xgboost-hist")), train, hub)

    def total_local_rounds(self, n_sites: int) -> int:
        """Trees (or epochs) a site-alone model gets: as many as the federated model's training."""
        return registry.get(self.model).local_total(self)

    def message_config(self, n_sites: int) -> dict[str, Any]:
        return {
            "study": self.study_text,
            "model": self.model,
            "requester": self.requester,
            "local-rounds": self.local_rounds,
            "epochs": self.epochs,
            "local-total": self.total_local_rounds(n_sites),
        }


@dataclass
class SiteInfo:
    node_id: int
    site: str
    n_train: int
    n_test: int
    data_version: str


@dataclass
class RunResult:
    settings: dict[str, Any]
    sites: dict[str, SiteInfo]
    federated: dict[str, dict[str, float]]
    federated_summary: dict[str, float]
    local: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    local_summary: dict[str, dict[str, float]] = field(default_factory=dict)
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    traffic: dict[str, dict[str, int]] = field(default_factory=dict)
    train_seconds: float = 0.0
    flower_rounds: int = 0
    faults: dict[str, Any] = field(default_factory=dict)  # FaultReport.to_dict(): who was missing per round
    audit_heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> its audit log's head at the end
    requester: dict[str, str] = field(default_factory=dict)  # name and where it came from (the gate's ledger)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["settings"].pop("study_text", None)
        return out


def wait_for_nodes(grid: Grid, minimum: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise FedomopError(
                f"only {len(nodes)} of {minimum} sites connected within {timeout_s:.0f} s",
                where="hub",
                fix="start every site (fedomop site start) against this hub",
            )
        time.sleep(0.5)


def _send(grid: Grid | CountingGrid, nodes: list[int], message_type: str, content: RecordDict) -> dict[int, Message]:
    """Replies by node from the sites that answered; the FaultTolerantGrid below has already
    recorded the others and stopped the run if fewer than ``min_sites`` answered."""
    messages = [Message(content=content, dst_node_id=n, message_type=message_type) for n in nodes]
    replies = grid.send_and_receive(messages)
    return {r.metadata.src_node_id: r for r in replies if not r.has_error()}


def fault_tolerant(grid: Grid, settings: RunSettings, n_sites: int) -> FaultTolerantGrid:
    """Bound every round by ``round_timeout`` and let training go on with ``min_sites`` of the sites."""
    return FaultTolerantGrid(
        grid,
        round_timeout=settings.round_timeout,
        min_sites=min(settings.min_sites or n_sites, n_sites),
        wait_for_sites=settings.wait_for_nodes_s,
        turn_taking=registry.get(settings.model).turn_taking,
    )


def describe_sites(grid: Grid | CountingGrid, nodes: list[int], config: dict[str, Any]) -> dict[str, SiteInfo]:
    replies = _send(grid, nodes, "query.describe", RecordDict({"config": ConfigRecord(config)}))
    sites = {}
    for node, reply in replies.items():
        info, counts = reply.content["site"], reply.content["counts"]
        sites[str(info["site"])] = SiteInfo(
            node,
            str(info["site"]),
            int(record_number(counts["n-train"])),
            int(record_number(counts["n-test"])),
            str(info["data-version"]),
        )
    return dict(sorted(sites.items()))


def evaluate_everywhere(
    grid: Grid | CountingGrid, sites: dict[str, SiteInfo], models: dict[str, ArrayRecord], config: dict[str, Any]
) -> dict[str, dict[str, dict[str, float]]]:
    """Held-out metrics of several models at every site in one round trip: {label: {site: metrics}}."""
    names = list(sites)
    content = RecordDict({"config": ConfigRecord(config), **{f"model.{label}": m for label, m in models.items()}})
    replies = _send(grid, [sites[s].node_id for s in names], "evaluate.many", content)
    out: dict[str, dict[str, dict[str, float]]] = {label: {} for label in models}
    for name in names:
        reply = replies.get(sites[name].node_id)
        if reply is None:  # missing at the end: no held-out metrics for that site
            continue
        for label in models:
            record = reply.content[f"metrics.{label}"]
            out[label][name] = {k: record_number(record.get(k, float("nan"))) for k in metrics.METRIC_NAMES}
    return out


def train_federated(
    grid: CountingGrid, settings: RunSettings, nodes: list[int], config: dict[str, Any]
) -> tuple[ArrayRecord, dict[int, dict[str, float]], int]:
    """Train the chosen model; returns the model, per-round history and the number of Flower rounds."""
    least = min(settings.min_sites or len(nodes), len(nodes))
    # the RunSettings itself (a TrainSettings): histogram XGBoost also reads the hub's xgb_host and certs from it
    trained = registry.get(settings.model).server_run(grid, nodes, settings, config, least)
    return trained.model, trained.history, trained.flower_rounds


def site_alone_models(
    grid: Grid | CountingGrid, sites: dict[str, SiteInfo], config: dict[str, Any]
) -> tuple[dict[str, ArrayRecord], dict[str, dict[str, float]]]:
    """Site-alone models the sites released, and the own held-out metrics of those they kept
    (a site policy releases only metrics of a model fitted to that site alone, by default)."""
    names = list(sites)
    replies = _send(
        grid, [sites[s].node_id for s in names], "train.local", RecordDict({"config": ConfigRecord(config)})
    )
    models: dict[str, ArrayRecord] = {}
    kept: dict[str, dict[str, float]] = {}
    for name in names:
        reply = replies.get(sites[name].node_id)
        if reply is None:
            continue
        if "model" in reply.content.array_records:
            models[name] = reply.content.array_records["model"]
        else:
            record = reply.content.metric_records["metrics"]
            kept[name] = {k: record_number(record.get(k, float("nan"))) for k in metrics.METRIC_NAMES}
    return models, kept


def save_model(model: ArrayRecord, settings: RunSettings, out: Path) -> Path:
    """The model file, as the model writes it (XGBoost JSON + global edges, or a PyTorch state dict)."""
    return registry.get(settings.model).save(model, out)


def run(
    grid: Grid,
    settings: RunSettings,
    on_exchange: OnExchange | None = None,
    requester: dict[str, str] | None = None,
) -> RunResult:
    """The whole federated run at the hub; writes result.json, the model and returns the result.

    ``on_exchange`` hears of every round trip (label, seconds, bytes): the progress lines of ``fedomop train``.
    ``requester``: who asked, as the gate authenticated them (simulation: the declared name)."""
    study = parse_study(settings.study_text, source="study")
    out = settings.output_dir
    out.mkdir(parents=True, exist_ok=True)
    nodes = wait_for_nodes(grid, settings.min_nodes, settings.wait_for_nodes_s)
    tolerant = fault_tolerant(grid, settings, len(nodes))
    counting = CountingGrid(tolerant, on_exchange=on_exchange)
    config = settings.message_config(len(nodes))
    try:
        tolerant.round_timeout = max(settings.round_timeout, settings.wait_for_nodes_s)  # first contact: start-up
        sites = describe_sites(counting, nodes, config)
        tolerant.round_timeout = settings.round_timeout
        tolerant.name_sites({info.node_id: name for name, info in sites.items()})
        started = time.perf_counter()
        model, history, flower_rounds = train_federated(counting, settings, [sites[s].node_id for s in sites], config)
        train_seconds = time.perf_counter() - started
    except FedomopError:
        (out / "faults.json").write_text(json.dumps(tolerant.report.to_dict(), indent=2))
        raise
    models = {"federated": model}
    kept: dict[str, dict[str, float]] = {}  # site-alone metrics of the models the sites kept
    if settings.compare_local:
        counting.phase = "site-alone training"
        released, kept = site_alone_models(counting, sites, config)
        models.update(released)
    counting.phase = "final evaluation"
    evaluated = evaluate_everywhere(counting, sites, models, config)
    for name, own in kept.items():  # evaluated at its own site only
        evaluated[name] = {name: own}
    sizes = {s: sites[s].n_test for s in sites}
    result = RunResult(
        settings={**asdict(settings), "study": study.name, "settings_digest": settings.train.digest()},
        sites=sites,
        federated=evaluated.pop("federated"),
        federated_summary={},
        local=evaluated,
        local_summary={name: metrics.weighted_summary(per_site, sizes) for name, per_site in evaluated.items()},
        history=history,
        train_seconds=train_seconds,
        flower_rounds=flower_rounds,
    )
    result.federated_summary = metrics.weighted_summary(result.federated, sizes)
    result.traffic = {"sent": counting.traffic.sent, "received": counting.traffic.received}
    result.faults = tolerant.report.to_dict()
    result.audit_heads = dict(sorted(counting.audit_heads.items()))
    result.requester = requester or {"name": settings.requester, "source": "declared (simulation)"}
    save_model(model, settings, out)
    (out / "result.json").write_text(json.dumps(result.to_json(), indent=2, default=str))
    return result


def make_server_app(settings: RunSettings | None = None, on_exchange: OnExchange | None = None) -> ServerApp:
    """A ServerApp for given settings (simulation) or reading Flower's run config (deployment)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if settings is not None:
            run(grid, settings, on_exchange)
            return
        from fedomop.federated.governance.gate import requester_of_run

        deployed = RunSettings.from_run_config(dict(context.run_config))
        stamped = str(context.run_config.get("requester", ""))
        who = requester_of_run(int(grid.run.run_id), stamped, deployed.requester)
        mine = str(Path(deployed.output_root) / output_name(who["name"]))  # a folder per requester
        run(grid, replace(deployed, requester=who["name"], output_root=mine), on_exchange, who)

    return app


app = make_server_app()

"""The site side: a Flower ClientApp that answers the hub with model updates and aggregates only.

Every message carries the study YAML. Before any data is touched the site's
governance policy (node config ``policy=<path>``) is enforced and the decision
audited; what leaves the site is audited by size. Replies hold model parameters,
quantile sketches, moment sums or held-out metrics, never a row or a person id.

Node config: ``db`` (the site's OMOP database URL or DuckDB path), ``site`` (its
name), ``policy`` (governance YAML; without one the site refuses every request,
``policy="none-for-testing"`` opts out explicitly) and optional ``message-log`` (a JSONL file that
records the shape of every reply, for audits and tests). In the simulation engine
the sites are given to :func:`make_client_app` and chosen by ``partition-id``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedomop.federated import features, metrics
from fedomop.federated.models import xgb_bagging, xgb_common, xgb_cyclic, xgb_histogram
from fedomop.federated.study import StudySpec, parse_study
from fedomop.federated.transport import describe_content
from fedomop.harmonize.ground.db import connect
from fedomop.harmonize.ground.errors import FedomopError, PolicyError, StudyError

ERROR_CODE_REFUSED = 403
ERROR_CODE_FAILED = 500
MLP = "mlp"  # fedomop.federated.models.mlp imports torch; loaded only when an MLP message arrives
XGB_MODELS = {xgb_bagging.NAME, xgb_cyclic.NAME, xgb_histogram.NAME}
NO_POLICY = "none-for-testing"  # the explicit opt-out (node config policy=...): no governance at all


@dataclass(frozen=True)
class Site:
    name: str
    db: str
    policy: str | None = None
    message_log: str | None = None
    certs: str | None = None  # folder with ca.crt and <site>.tls.pem/.key (TLS of histogram XGBoost)


@dataclass
class Prepared:
    site: Site
    study: StudySpec
    train: features.SiteData
    test: features.SiteData
    data_version: str


def data_version(db_url: str) -> str:
    """A short fingerprint of the site data: its cdm_source row and the row counts the study reads."""
    database = connect(db_url, read_only=True)
    try:
        parts = []
        if database.has_table("cdm_source"):
            parts.append(database.query("SELECT * FROM cdm_source").write_csv())
        for table in ("person", "condition_occurrence", "measurement", "drug_exposure", "observation_period"):
            if database.has_table(table):
                parts.append(f"{table}={database.scalar(f'SELECT COUNT(*) FROM {table}')}")
    finally:
        database.dispose()
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def _installed_hash() -> str:
    from fedomop.federated.governance import app_hash

    return app_hash(Path(__file__).parent)


def code_hash() -> str:
    """The hash a site policy approves: the submitted bundle the site executor admitted, else this package's code."""
    from fedomop.federated.governance.approval import admitted

    request = admitted()
    return request.app_sha256 if request else _installed_hash()


def _requester(config: Any) -> str:
    """The certificate name the site executor admitted (run_config's ``requester`` only outside an executor)."""
    from fedomop.federated.governance.approval import admitted

    request = admitted()
    return request.requester if request else str(config.get("requester", "hub"))


@lru_cache(maxsize=8)
def _prepare_cached(site: Site, study_text: str) -> Prepared:
    study = parse_study(study_text, source="study sent by the hub")
    train, test = features.build_features(site.db, study).train_test(study)
    return Prepared(site, study, train, test, data_version(site.db))


def _site_from_context(context: Context, sites: list[Site] | None) -> Site:
    node = context.node_config
    if "db" in node:
        return Site(
            name=str(node.get("site", Path(str(node["db"])).stem)),
            db=str(node["db"]),
            policy=str(node["policy"]) if node.get("policy") else None,
            message_log=str(node["message-log"]) if node.get("message-log") else None,
            certs=str(node["certs"]) if node.get("certs") else None,
        )
    if sites and "partition-id" in node:
        return sites[int(node["partition-id"])]
    raise StudyError(
        "this SuperNode does not know its database",
        where="node config",
        fix='start it with --node-config \'db="site.duckdb" site="site_a"\' (fedomop site start does this)',
    )


def _governed(site: Site, study: StudySpec, requester: str) -> Any:
    """Enforce the site policy (raises PolicyError); None only when the node explicitly opted out.

    A site is governed by default: a node without ``policy`` refuses every data request.
    """
    if site.policy == NO_POLICY:
        return None
    if not site.policy:
        raise PolicyError(
            "this site has no governance policy, so it answers no data request",
            where=f"node config of {site.name}",
            fix=f"start the SuperNode with --node-config 'policy=\"site.yaml\"' (fedomop site start --policy), "
            f'or policy="{NO_POLICY}" for tests on synthetic data',
        )
    from fedomop.federated.governance import enforce_request

    return enforce_request(site.policy, study, code_hash(), requester)


def _release(site: Site, policy: Any, study: StudySpec, requester: str, action: str, reply: RecordDict) -> None:
    """The site's last gate: small cells in the reply are refused (PolicyError), else its sizes are audited."""
    if policy is None:
        return
    from fedomop.federated.governance import release

    release(policy, reply, requester=requester, study=study.name, app_hash=code_hash(), action=action)


def _log_reply(site: Site, message_type: str, reply: RecordDict) -> None:
    if not site.message_log:
        return
    entry = {"site": site.name, "message_type": message_type, "content": describe_content(reply)}
    with open(site.message_log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


# -- what each message type computes ---------------------------------------------------------------
def _describe(prep: Prepared, message: Message) -> RecordDict:
    positives = int(prep.train.y.sum())
    return RecordDict(
        {
            "site": ConfigRecord({"site": prep.site.name, "data-version": prep.data_version}),
            "counts": MetricRecord(
                {
                    "n-train": prep.train.n,
                    "n-test": prep.test.n,
                    "n-positive-train": positives if positives >= prep.study.small_cell else 0,
                }
            ),
        }
    )


def _sketch(prep: Prepared, message: Message) -> RecordDict:
    return RecordDict({"sketch": xgb_histogram.site_sketch(prep.train.X, prep.study.small_cell)})


def _moments(prep: Prepared, message: Message) -> RecordDict:
    from fedomop.federated.models import mlp

    return RecordDict({"moments": mlp.site_moments(prep.train.X, prep.study.small_cell)})


def _train(prep: Prepared, message: Message) -> RecordDict:
    config = message.content["config"]
    model = str(config["model"])
    arrays = message.content.array_records["arrays"]
    local_rounds = int(config.get("local-rounds", 1))
    if model == xgb_bagging.NAME:
        n_sites = int(config.get("n-sites", 1))
        updated = xgb_bagging.site_train(arrays, prep.train.X, prep.train.y, local_rounds, n_sites)
    elif model == xgb_cyclic.NAME:
        updated = xgb_cyclic.site_train(arrays, prep.train.X, prep.train.y, local_rounds)
    elif model == MLP:
        from fedomop.federated.models import mlp

        mu = float(config.get("proximal-mu", 0.0))
        seed = int(config.get("server-round", 0))
        updated = mlp.site_train(arrays, prep.train.X, prep.train.y, epochs=int(config["epochs"]), mu=mu, seed=seed)
    else:
        raise StudyError(f"unknown model {model!r}", where="train message config", fix="update the hub")
    return RecordDict({"arrays": updated, "metrics": MetricRecord({"num-examples": prep.train.n})})


def _train_histogram(prep: Prepared, message: Message) -> RecordDict:
    config = message.content["config"]
    edges = xgb_common.from_record(message.content.array_records["edges"])[1] or []
    model = xgb_histogram.site_train(
        prep.train.X,
        prep.train.y,
        edges,
        server_address=str(config["server-address"]),
        world_size=int(config["world-size"]),
        rank=int(config["rank"]),
        rounds=int(config["rounds"]),
        tls=_histogram_tls(prep.site, bool(config.get("xgb-tls", False))),
    )
    return RecordDict({"model": model, "metrics": MetricRecord({"num-examples": prep.train.n})})


def _histogram_tls(site: Site, required: bool) -> dict[str, str] | None:
    """The site's client certificate for the hub's TLS allreduce server, when the hub asks for TLS."""
    if not required:
        return None
    if not site.certs:
        raise StudyError(
            "the hub runs histogram XGBoost over TLS but this site has no certificates",
            where=f"node config of {site.name}",
            fix="start the site with fedomop site start --certs DIR (ca.crt, <site>.tls.pem, <site>.tls.key)",
        )
    from fedomop.federated.governance.certs import xgboost_client_tls

    return xgboost_client_tls(site.certs, site.name)


def _train_local(prep: Prepared, message: Message) -> RecordDict:
    """The site-alone reference: a model trained on this site's rows only."""
    config = message.content["config"]
    model = str(config["model"])
    if model in XGB_MODELS:
        record = xgb_common.to_record(xgb_common.train_plain(prep.train.X, prep.train.y, int(config["local-total"])))
    else:
        from fedomop.federated.models import mlp

        record = mlp.train_plain(prep.train.X, prep.train.y, epochs=int(config["local-total"]))
    return RecordDict({"model": record, "metrics": MetricRecord({"num-examples": prep.train.n})})


def predict(model: str, record: ArrayRecord, X: np.ndarray) -> np.ndarray:
    if model == MLP:
        from fedomop.federated.models import mlp

        return mlp.predict(record, X)
    return xgb_common.predict(record, X)


def _held_out_metrics(prep: Prepared, model: str, record: ArrayRecord) -> MetricRecord:
    values = metrics.binary_metrics(prep.test.y, predict(model, record, prep.test.X))
    finite = {k: v for k, v in values.items() if np.isfinite(v)}
    return MetricRecord({**finite, "num-examples": prep.test.n})


def _evaluate(prep: Prepared, message: Message) -> RecordDict:
    """A strategy's per-round evaluation of the global model on this site's held-out rows."""
    model = str(message.content["config"]["model"])
    return RecordDict({"metrics": _held_out_metrics(prep, model, message.content.array_records["arrays"])})


def _evaluate_many(prep: Prepared, message: Message) -> RecordDict:
    """Several models at once (``model.<label>`` records): the final comparison in one round trip."""
    model = str(message.content["config"]["model"])
    return RecordDict(
        {
            f"metrics.{key.removeprefix('model.')}": _held_out_metrics(prep, model, record)
            for key, record in message.content.array_records.items()
            if key.startswith("model.")
        }
    )


Handler = Callable[[Prepared, Message], RecordDict]


def _handle(handler: Handler, sites: list[Site] | None, message: Message, context: Context) -> Message:
    site = None
    try:
        site = _site_from_context(context, sites)
        config = message.content["config"]
        requester = _requester(config)
        study = parse_study(str(config["study"]), source="study sent by the hub")
        policy = _governed(site, study, requester)
        prep = _prepare_cached(site, str(config["study"]))
        if policy is not None:
            from fedomop.federated.governance import enforce_cohort

            enforce_cohort(policy, study.name, prep.train.n + prep.test.n, requester=requester, app_hash=code_hash())
        reply = handler(prep, message)
        _release(site, policy, study, requester, message.metadata.message_type, reply)
        _log_reply(site, message.metadata.message_type, reply)
        return Message(reply, reply_to=message)
    except FedomopError as error:
        code = ERROR_CODE_REFUSED if type(error).__name__ == "PolicyError" else ERROR_CODE_FAILED
        where = site.name if site else "site"
        return Message(Error(code=code, reason=f"{where}: {type(error).__name__}: {error}"), reply_to=message)


def make_client_app(sites: list[Site] | None = None) -> ClientApp:
    """The ClientApp; ``sites`` (simulation only) maps partition-id to a site database."""
    app = ClientApp()
    routes: dict[str, tuple[Callable[..., Any], Handler]] = {
        "describe": (app.query("describe"), _describe),
        "sketch": (app.query("sketch"), _sketch),
        "moments": (app.query("moments"), _moments),
        "train": (app.train(), _train),
        "histogram": (app.train("histogram"), _train_histogram),
        "local": (app.train("local"), _train_local),
        "evaluate": (app.evaluate(), _evaluate),
        "many": (app.evaluate("many"), _evaluate_many),
    }
    for decorator, handler in routes.values():
        decorator(_bind(handler, sites))
    return app


def _bind(handler: Handler, sites: list[Site] | None) -> Callable[[Message, Context], Message]:
    def handle(message: Message, context: Context) -> Message:
        return _handle(handler, sites, message, context)

    return handle


app = make_client_app()

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

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedomop.federated import feature_cache, features, metrics
from fedomop.federated.errors import PolicyError, StudyError
from fedomop.federated.models import registry, xgb_histogram
from fedomop.federated.models.xgb_common import MIN_LEAF_KEY
from fedomop.federated.study import StudySpec, parse_study
from fedomop.federated.transport import describe_content, record_number
from fedomop.harmonize.ground.errors import FedomopError
from fedomop.harmonize.ground.smallcell import suppress_counts

ERROR_CODE_REFUSED = 403
ERROR_CODE_FAILED = 500
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
    small_cell: int = 0  # the release thresholds: the stricter of the study's and the site policy's
    release_min: int = 0  # fewest persons behind a released sum (moments); 0: small_cell
    release_local_model: bool = True  # False: a site-alone model stays here, only its metrics leave
    policy: Any = None  # the site policy (None: node opted out of governance)
    requester: str = "hub"
    wall_time_s: float | None = None  # the site's budget per message (policy limits)


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
    return _prepared(site, study, features.build_features(site.db, study))


def _prepared(site: Site, study: StudySpec, data: features.SiteData) -> Prepared:
    train, test = data.train_test(study)
    return Prepared(site, study, train, test, data.digest())


def _prepare(site: Site, study: StudySpec, study_text: str, run_id: int) -> Prepared:
    """The study's matrix at this site: built once per run under fedomop's executor (one process per message,
    so the in-process cache cannot help there; see feature_cache), once per process elsewhere."""
    where = feature_cache.folder()
    if where is None:
        return _prepare_cached(site, study_text)
    key = feature_cache.cache_key(run_id, site.db, study_text)
    data = feature_cache.load(where, key)
    if data is None:
        data = features.build_features(site.db, study)
        feature_cache.store(where, key, data)
    return _prepared(site, study, data)


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


def _dp_total(policy: Any, study: StudySpec) -> dict[str, float]:
    """The study's epsilon spent so far at this site (sent with every reply, kept in the model card)."""
    settings = _dp(policy, study.name)
    if settings is None:
        return {}
    from fedomop.federated.governance.dp import spent

    return {"dp-epsilon-total": spent(policy, study.name, settings.delta), "dp-delta": settings.delta}


def _log_reply(site: Site, message_type: str, reply: RecordDict) -> None:
    if not site.message_log:
        return
    entry = {"site": site.name, "message_type": message_type, "content": describe_content(reply)}
    with open(site.message_log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


# -- what each message type computes ---------------------------------------------------------------
def _describe(prep: Prepared, message: Message) -> RecordDict:
    """Who this site is and its sizes; the positives go through the small-cell rule, the stricter of the study's
    and the site policy's (a withheld cell is left out: a machine reply shows it as absent, never as a false 0;
    with the study's alone, a count between the two thresholds met the release gate and failed the whole run)."""
    counts: dict[str, int | float | list[int] | list[float]] = {"n-train": prep.train.n, "n-test": prep.test.n}
    threshold = max(prep.small_cell, prep.study.small_cell)  # the site policy's, where it is stricter
    positives = suppress_counts({"n-positive-train": int(prep.train.y.sum())}, threshold, render="none")
    counts.update({key: value for key, value in positives.items() if isinstance(value, int)})
    return RecordDict(
        {
            "site": ConfigRecord({"site": prep.site.name, "data-version": prep.data_version}),
            "counts": MetricRecord(counts),
        }
    )


def _sketch(prep: Prepared, message: Message) -> RecordDict:
    """Quantile sketch coarsened so each bin holds >= the small-cell threshold (governance.disclosure)."""
    threshold = max(prep.small_cell, prep.study.small_cell)
    return RecordDict({"sketch": xgb_histogram.site_sketch(prep.train.X, threshold)})


def _moments(prep: Prepared, message: Message) -> RecordDict:
    """Feature sums; a feature seen in fewer persons than the release minimum is withheld."""
    from fedomop.federated.models import mlp

    threshold = max(prep.release_min, prep.small_cell, prep.study.small_cell)
    return RecordDict({"moments": mlp.site_moments(prep.train.X, threshold)})


def _train(prep: Prepared, message: Message) -> RecordDict:
    """One round of the hub's model at this site (the registry imports the model's code on first use)."""
    config = message.content["config"]
    model = registry.get(str(config["model"]))
    site_config: dict[str, Any] = dict(config)
    if prep.wall_time_s:  # the site's wall-time budget for this message (the MLP stops at the next batch)
        site_config["deadline"] = time.monotonic() + prep.wall_time_s
    site_config[MIN_LEAF_KEY] = _threshold(prep)  # the site's own threshold, whatever the hub sent
    arrays = message.content.array_records["arrays"]
    updated = model.site_train(arrays, prep.train.X, prep.train.y, site_config)
    _require_large_leaves(prep, model, updated, arrays)
    if model.name == "mlp" and prep.policy is not None and _dp(prep.policy, prep.study.name):
        updated = _private_update(prep, arrays, updated, int(record_number(config.get("server-round", 0))))
    return RecordDict({"arrays": updated, "metrics": MetricRecord({"num-examples": prep.train.n})})


def _threshold(prep: Prepared) -> int:
    """The site's small-cell threshold for this study: the stricter of the study's and the site policy's."""
    return max(prep.small_cell, prep.study.small_cell)


def _require_large_leaves(prep: Prepared, model: Any, reply: ArrayRecord, sent: ArrayRecord | None) -> None:
    """No tree this site grew may leave it with a leaf of 1 to threshold - 1 of its persons (counted with XGBoost's
    ``pred_leaf`` on the training matrix): refused and audited ``blocked``. ``min_child_weight`` is set from the
    same threshold, so for logistic boosting this is a check that should never fire, not a filter."""
    threshold = _threshold(prep)
    small = model.small_leaves(reply, sent, prep.train.X, threshold)
    if not small:
        return
    reason = f"the trained model has {small} leaf/leaves holding fewer than {threshold} of this site's persons"
    _audited_refusal(prep, "train", "blocked", reason)
    raise PolicyError(
        f"site {prep.site.name!r} blocked its model: {reason}",
        where="small-cell rule on released tree models",
        fix="ask for shallower trees (max depth) or fewer trees; the site keeps every leaf at its threshold",
    )


def _audited_refusal(prep: Prepared, action: str, outcome: str, reason: str) -> None:
    """The audit record of a request this site refuses (under a governance policy; none without one)."""
    if prep.policy is not None:
        from fedomop.federated.governance import audit

        audit(prep.policy, requester=prep.requester, study=prep.study.name, app_hash=code_hash(), action=action,
              outcome=outcome, sent={}, reason=reason)  # fmt: skip


def _dp(policy: Any, study: str) -> Any:
    """The study's differential-privacy settings at this site, or None."""
    return policy.studies[study].differential_privacy if study in policy.studies else None


def _private_update(prep: Prepared, base: ArrayRecord, updated: ArrayRecord, seed: int) -> ArrayRecord:
    """DP-FedAvg at the site (governance.dp): book the release against the budget, then clip and noise."""
    from fedomop.federated.governance import dp
    from fedomop.federated.models import mlp

    settings = _dp(prep.policy, prep.study.name)
    multiplier = dp.multiplier_for(prep.policy, settings)
    dp.spend(prep.policy, prep.study.name, multiplier, requester=prep.requester, app_hash=code_hash())
    rng = np.random.default_rng()  # fresh OS entropy: noise must not be reproducible from the round number
    private, _ = dp.clip_and_noise(
        base, updated, clip=settings.clipping_norm, multiplier=multiplier, rng=rng, skip=mlp.NORM_KEYS
    )
    return private


def _train_histogram(prep: Prepared, message: Message) -> RecordDict:
    """Histogram XGBoost's one long round: join the hub's allreduce with the global edges it sent."""
    config: dict[str, Any] = dict(message.content["config"])
    config["tls"] = _histogram_tls(prep.site, bool(config.get("xgb-tls", False)), prep.policy)
    # the pooled trees' leaves hold >= the study's small_cell persons; the study's (not the site policy's) value,
    # because every rank of the allreduce must choose the same splits
    config[MIN_LEAF_KEY] = prep.study.small_cell
    model = registry.get(str(config["model"]))
    try:
        trained = model.site_train(message.content.array_records["edges"], prep.train.X, prep.train.y, config)
    except Exception as error:  # xgboost's collective error: another rank stopped answering
        if type(error).__name__ != "XGBoostError":
            raise
        from fedomop.federated.faults import PEER_LOST

        raise StudyError(
            f"histogram training stopped: {PEER_LOST} (another site stopped answering)",
            where=f"site {prep.site.name}",
            fix="nothing to do at this site; the hub names the site that stopped",
        ) from None
    return RecordDict({"model": trained, "metrics": MetricRecord({"num-examples": prep.train.n})})


def _histogram_tls(site: Site, required: bool, policy: Any = None) -> dict[str, str] | None:
    """The site's client certificate for the hub's TLS allreduce server, when the hub asks for TLS.

    A plaintext allreduce is refused, before the site dials anything, when its policy says
    ``require_allreduce_tls: true``."""
    if not required:
        if policy is not None and getattr(policy, "require_allreduce_tls", False):
            raise PolicyError(
                "the hub asked for histogram XGBoost's allreduce without TLS, and this site's policy requires "
                "mutual TLS (require_allreduce_tls)",
                where=f"site {site.name}",
                fix="the hub operator starts the hub with `fedomop hub start --certs DIR`, which runs the "
                "allreduce over mutual TLS; or train xgboost-bagging, xgboost-cyclic or mlp",
            )
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
    config: dict[str, Any] = dict(message.content["config"])
    model = registry.get(str(config["model"]))
    record = model.train_plain(prep.train.X, prep.train.y, int(config["local-total"]), min_leaf=_threshold(prep))
    if not prep.release_local_model:  # evaluated here; the model (and its normalisation means) stays
        return RecordDict({"metrics": _held_out_metrics(prep, str(config["model"]), record)})
    _require_large_leaves(prep, model, record, None)
    return RecordDict({"model": record, "metrics": MetricRecord({"num-examples": prep.train.n})})


def predict(model: str, record: ArrayRecord, X: np.ndarray) -> np.ndarray:
    return registry.get(model).predict(record, X)


METRIC_DECIMALS = 3
"""Released held-out metrics are rounded to this many decimals (coarsens, does not by itself stop, differencing)."""


def _held_out_metrics(prep: Prepared, model: str, record: ArrayRecord) -> MetricRecord:
    threshold = _threshold(prep)
    if prep.test.n < threshold:
        raise PolicyError(
            f"this site's held-out set has fewer than {threshold} persons: no metric of it is released",
            where=f"site {prep.site.name}: small-cell rule on evaluation",
            fix="a larger test_fraction or cohort, or leave this site out of the evaluation",
        )
    values = metrics.binary_metrics(prep.test.y, predict(model, record, prep.test.X))
    finite = {k: round(float(v), METRIC_DECIMALS) for k, v in values.items() if np.isfinite(v)}
    return MetricRecord({**finite, "num-examples": prep.test.n})


def _spend_evaluations(prep: Prepared, message: Message, kind: str) -> None:
    """The run's evaluation budget at this site: ``evaluate`` at most once per round of the run's plan (its
    ``rounds`` as first sent, at most the policy's ``limits.max_rounds``), and one final ``evaluate.many``. Every
    scored model is a query of the site's held-out outcomes, so a hub may not ask for more than the plan needs
    (PolicyError, audited). The number of models in the final comparison is not bounded here (the hub does not
    send the number of sites with it)."""
    if prep.policy is None:
        return
    from fedomop.federated.governance.auditlog import beside, updating

    config = message.content["config"]
    limit = int(prep.policy.limits.max_rounds)
    run = str(message.metadata.run_id)
    with updating(beside(prep.policy.audit_log, ".evaluations.json"), indent=None) as book:
        rounds = int(record_number(config.get("rounds", 0))) or limit
        entry = book.setdefault(run, {"rounds": rounds, "evaluate": 0, "many": 0})
        allowed = {"evaluate": min(entry["rounds"], limit), "many": 1}[kind]
        if entry[kind] + 1 > allowed:
            reason = f"evaluation budget of run {run} spent ({kind}: {entry[kind]} of {allowed})"
            _audited_refusal(prep, kind, "refused", reason)
            raise PolicyError(
                f"site {prep.site.name!r} refused to evaluate: {reason}",
                where="site: evaluation budget (one per round of the run's plan + the final comparison)",
                fix="evaluate once per round and once at the end; a new run has a new budget",
            )
        entry[kind] += 1


def _evaluate(prep: Prepared, message: Message) -> RecordDict:
    """A strategy's per-round evaluation of the global model on this site's held-out rows."""
    model = str(message.content["config"]["model"])
    _spend_evaluations(prep, message, "evaluate")
    return RecordDict({"metrics": _held_out_metrics(prep, model, message.content.array_records["arrays"])})


def _evaluate_many(prep: Prepared, message: Message) -> RecordDict:
    """Several models at once (``model.<label>`` records): the final comparison in one round trip."""
    model = str(message.content["config"]["model"])
    records = {key: record for key, record in message.content.array_records.items() if key.startswith("model.")}
    _spend_evaluations(prep, message, "many")
    return RecordDict(
        {
            f"metrics.{key.removeprefix('model.')}": _held_out_metrics(prep, model, record)
            for key, record in records.items()
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
        from fedomop.federated.governance.bounds import check_message_config

        check_message_config(config, policy)
        prep = _prepare(site, study, str(config["study"]), context.run_id)
        if policy is not None:
            from fedomop.federated.governance import enforce_cohort
            from fedomop.federated.governance.disclosure import enforce_one_cohort

            enforce_one_cohort(policy, study, requester=requester, app_hash=code_hash())
            enforce_cohort(policy, study.name, prep.train.n + prep.test.n, requester=requester, app_hash=code_hash())
            from fedomop.federated.governance.disclosure import enforce_min_difference

            members = [*prep.train.person_id.tolist(), *prep.test.person_id.tolist()]
            enforce_min_difference(policy, study, members, requester=requester, app_hash=code_hash())
            small_cell = max(study.small_cell, policy.small_cell(study.name))
            prep = replace(
                prep,
                small_cell=small_cell,
                release_min=max(small_cell, policy.min_cohort(study.name)),
                release_local_model=policy.release_site_alone_models and not _dp(policy, study.name),
                policy=policy,
                requester=requester,
                wall_time_s=policy.limits.wall_time_s,
            )
            if _dp(policy, study.name) and str(config.get("model", "mlp")) != "mlp":
                from fedomop.federated.governance.dp import refuse_non_dp_model

                refuse_non_dp_model(policy, study.name, str(config["model"]))
        reply = handler(prep, message)
        _release(site, policy, study, requester, message.metadata.message_type, reply)
        if policy is not None:
            from fedomop.federated.governance.auditlog import head

            reply["audit"] = ConfigRecord({"site": policy.site, **head(policy.audit_log), **_dp_total(policy, study)})
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

"""Histogram XGBoost for time-to-event outcomes through XGBoost's federated communicator: ``survival:aft`` and a
site-stratified ``survival:cox``.

``xgboost-aft``: accelerated failure time boosting (Barnwal, Cho & Hocking, "Survival regression with accelerated
failure time model in XGBoost", J. Comput. Graph. Stat. 2022): ln T = f(x) + sigma Z with Z standard normal
here. A right-censored row is the interval [T, +inf) (``label_lower_bound`` = T, ``label_upper_bound`` = inf);
an event is [T, T]. The gradient and Hessian of a row depend on that row alone, so the sites' histograms summed
by the communicator's allreduce are the pooled histograms: with the same global bin edges (agreed from quantile
sketches, :mod:`fedomop.federated.models.xgb_histogram`) the federated booster equals a pooled ``xgboost.train``
on the same discretised matrix (``tests/federated/test_boosted_survival.py``).

``xgboost-cox``: XGBoost's ``survival:cox`` (Breslow ties) computes a row's gradient over the risk set of the rows
the process holds, so under the communicator each site uses its own risk sets and the summed histograms are those
of a **site-stratified** boosted Cox model: log h_s(t|x) = log h0_s(t) + f(x), one baseline hazard per site and
one shared f. That is the model offered (the project's choice for federated Cox: stratified by site), and its
pooled reference is ``xgboost.train`` on every site's rows with the same objective computed per site
(:func:`stratified_cox_objective`); it is not the unstratified pooled ``survival:cox``, which pools the risk sets
(gap measured in docs/federated.md). ``base_score`` is fixed at 1 (margin log 1 = 0) at every site, so no
intercept is estimated from one site's rows.

In this process (like ``cox-ph``): each site is a thread with its own communicator rank (XGBoost's communicator
is per thread), and the hub's federated server listens on a fresh port for this training only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedomop.federated import xgbserver
from fedomop.federated.errors import StudyError
from fedomop.federated.models import xgb_common, xgb_histogram
from fedomop.federated.survival import cox

Array = NDArray[np.float64]
AFT = "xgboost-aft"
COX = "xgboost-cox"
AFT_SCALE = 1.0
OBJECTIVES: dict[str, dict[str, Any]] = {
    AFT: {
        "objective": "survival:aft",
        "eval_metric": "aft-nloglik",
        "aft_loss_distribution": "normal",
        "aft_loss_distribution_scale": AFT_SCALE,
    },
    # base_score is a hazard ratio for survival:cox (margin = log base_score): 1 means margin 0 everywhere
    COX: {"objective": "survival:cox", "eval_metric": "cox-nloglik", "base_score": 1.0},
}


@dataclass(frozen=True)
class Part:
    """One site's rows (missing values stay NaN): covariates, follow-up time (days) and event flag."""

    X: Array
    time: Array
    event: NDArray[np.bool_]


def params(model: str = AFT) -> dict[str, Any]:
    return xgb_common.params(OBJECTIVES[model])


def cox_label(time: Array, event: NDArray[np.bool_]) -> Array:
    """XGBoost's Cox label: |label| orders the rows, positive = event, negative = censored. Days + 1, so a 0-day
    follow-up keeps its sign; adding a constant keeps the order, and the Cox gradient depends on the order only."""
    shifted = np.asarray(time, dtype=np.float64) + 1.0
    return np.where(np.asarray(event, dtype=bool), shifted, -shifted)


def dmatrix(X: Array, time: Array, event: NDArray[np.bool_], model: str = AFT) -> Any:
    """The model's labels on ``X`` (missing stays NaN)."""
    xgb = xgb_common.xgboost()
    if model == COX:
        return xgb.DMatrix(X, label=cox_label(time, event), missing=np.nan)
    return aft_dmatrix(X, time, event)


def aft_dmatrix(X: Array, time: Array, event: NDArray[np.bool_]) -> Any:
    """Interval-censored labels: an event is [T, T], a censored row [T, inf). Time in days, floored at 1 day
    (ln T must be finite; a 0-day follow-up is an event or censoring on the index day)."""
    xgb = xgb_common.xgboost()
    lower = np.maximum(np.asarray(time, dtype=np.float64), 1.0)
    upper = np.where(np.asarray(event, dtype=bool), lower, np.inf)
    matrix = xgb.DMatrix(X, missing=np.nan)
    matrix.set_float_info("label_lower_bound", lower)
    matrix.set_float_info("label_upper_bound", upper)
    return matrix


def agreed_edges(parts: list[Part], small_cell: int) -> list[np.ndarray]:
    """Global bin edges from every site's quantile sketch (small bins withheld), as histogram XGBoost agrees them."""
    return xgb_histogram.global_edges([xgb_histogram.site_sketch(p.X, small_cell) for p in parts])


def site_train(
    part: Part, edges: list[np.ndarray], *, address: str, world: int, rank: int, rounds: int, model: str = AFT
) -> bytes:
    """One site under the communicator: its globally-binned rows, every rank ends with the same booster."""
    xgb = xgb_common.xgboost()
    with xgb.collective.CommunicatorContext(
        dmlc_communicator="federated",
        federated_server_address=address,
        federated_world_size=world,
        federated_rank=rank,
        dmlc_timeout=300,
    ):
        matrix = dmatrix(xgb_common.discretise(part.X, edges), part.time, part.event, model)
        return xgb_common.booster_bytes(xgb.train(params(model), matrix, num_boost_round=rounds))


def train_federated(parts: list[Part], edges: list[np.ndarray], rounds: int, model: str = AFT) -> bytes:
    """Start the federated server, train every site at once (one thread each), return the common booster."""
    xgb_histogram.require_federated_xgboost()
    with xgbserver.federated_server(len(parts)) as server:
        return _train_ranks(parts, edges, server.port, rounds, model)


def _train_ranks(parts: list[Part], edges: list[np.ndarray], port: int, rounds: int, model: str) -> bytes:
    """One thread per site against the server at ``127.0.0.1:port``; the common booster, or a named failure."""
    models: dict[int, bytes] = {}
    failures: dict[int, str] = {}

    def run(rank: int) -> None:
        try:
            models[rank] = site_train(
                parts[rank],
                edges,
                address=f"127.0.0.1:{port}",
                world=len(parts),
                rank=rank,
                rounds=rounds,
                model=model,
            )
        except Exception as exc:  # reported below, naming the rank
            failures[rank] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    threads = [threading.Thread(target=run, args=(rank,), daemon=True) for rank in range(len(parts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    if failures or len(set(models.values())) != 1 or len(models) != len(parts):
        raise StudyError(
            f"federated {OBJECTIVES[model]['objective']} training failed: "
            f"{failures or 'sites ended with different models'}",
            where=model,
            fix="rerun with FEDOMOP_DEBUG=1 to see XGBoost's log",
        )
    return models[0]


def train_plain(parts: list[Part], rounds: int, edges: list[np.ndarray] | None = None, model: str = AFT) -> bytes:
    """An ordinary booster on the rows of ``parts`` together: the pooled reference (with ``edges``: on the same
    discretised matrix as the federated run) or one site alone (its own raw values).

    ``xgboost-cox`` on several sites: the site-stratified pooled fit (each site's rows its own stratum), the
    model the communicator trains; one site: XGBoost's own ``survival:cox``."""
    xgb = xgb_common.xgboost()
    X = np.vstack([p.X for p in parts])
    time = np.concatenate([p.time for p in parts])
    event = np.concatenate([p.event for p in parts])
    matrix = dmatrix(xgb_common.discretise(X, edges) if edges is not None else X, time, event, model)
    objective = None
    if model == COX and len(parts) > 1:
        strata = np.concatenate([np.full(len(p.time), k) for k, p in enumerate(parts)])
        objective = stratified_cox_objective(strata, cox_label(time, event))
    booster = xgb.train(params(model), matrix, num_boost_round=rounds, obj=objective)
    return xgb_common.booster_bytes(booster)


def stratified_cox_objective(strata: NDArray[np.int_], label: Array) -> Callable[[Array, Any], tuple[Array, Array]]:
    """XGBoost's ``survival:cox`` gradient and Hessian computed within each stratum, as a custom objective.

    Per stratum, rows in stable order of |label|; with w = exp(margin), the risk-set sum at a row is the sum of w
    over the rows at or after the first row of its time (the denominator moves only when time moves forward,
    Breslow), and r, s are running sums over the events so far of 1/denominator and 1/denominator^2:
    gradient = w r - [label > 0], Hessian = w r - w^2 s."""
    groups = [np.flatnonzero(strata == k) for k in np.unique(strata)]

    def objective(margin: Array, _matrix: Any) -> tuple[Array, Array]:
        grad = np.empty(len(label))
        hess = np.empty(len(label))
        for rows in groups:
            grad[rows], hess[rows] = _cox_gradient(np.asarray(margin, dtype=np.float64)[rows], label[rows])
        return grad, hess

    return objective


def _cox_gradient(margin: Array, label: Array) -> tuple[Array, Array]:
    order = np.argsort(np.abs(label), kind="stable")
    at = np.abs(label[order])
    w = np.exp(margin[order])
    event = (label[order] > 0).astype(np.float64)
    at_or_after = np.cumsum(w[::-1])[::-1]
    denominator = at_or_after[np.searchsorted(at, at, side="left")]
    r = np.cumsum(event / denominator)
    s = np.cumsum(event / denominator**2)
    grad = np.empty_like(w)
    hess = np.empty_like(w)
    grad[order] = w * r - event
    hess[order] = w * r - w * w * s
    return grad, hess


def margin(raw: bytes, X: Array, edges: list[np.ndarray] | None) -> Array:
    """The booster's margin: f(x), the location of ln T (aft) or the log relative hazard (cox)."""
    features = xgb_common.discretise(X, edges) if edges is not None else X
    booster = xgb_common.load_booster(raw)
    values = booster.predict(xgb_common.xgboost().DMatrix(features, missing=np.nan), output_margin=True)
    return np.asarray(values, dtype=np.float64)


def survival_at(log_time_location: Array, horizon: float, scale: float = AFT_SCALE) -> Array:
    """S(h | x) = P(T > h) = 1 - Phi((ln h - f(x)) / sigma) for the normal AFT model."""
    from scipy.special import ndtr

    return np.asarray(1.0 - ndtr((np.log(horizon) - log_time_location) / scale), dtype=np.float64)


def cox_survival_at(
    train_margin: Array, time: Array, event: NDArray[np.bool_], held_out_margin: Array, horizon: float
) -> Array:
    """S(h | x) = exp(-H0(h) e^f(x)) for the boosted Cox model, with the site's own Breslow baseline H0 from its
    training rows' margins (its stratum: each site predicts with its own baseline, as ``cox-ph`` does)."""
    times, hazard = cox.breslow_baseline(np.asarray(train_margin)[:, None], time, event.astype(np.float64), np.ones(1))
    return cox.survival_at(times, hazard, np.exp(held_out_margin), horizon)

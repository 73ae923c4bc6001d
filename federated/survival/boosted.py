"""Histogram XGBoost for time-to-event outcomes (``survival:aft``) through XGBoost's federated communicator.

Method: accelerated failure time boosting (Barnwal, Cho & Hocking, "Survival regression with accelerated
failure time model in XGBoost", J. Comput. Graph. Stat. 2022): ln T = f(x) + sigma Z with Z standard normal
here. A right-censored row is the interval [T, +inf) (``label_lower_bound`` = T, ``label_upper_bound`` = inf);
an event is [T, T]. The gradient and Hessian of a row depend on that row alone, so the sites' histograms summed
by the communicator's allreduce are the pooled histograms: with the same global bin edges (agreed from quantile
sketches, :mod:`fedomop.federated.models.xgb_histogram`) the federated booster equals a pooled ``xgboost.train``
on the same discretised matrix (``tests/federated/test_boosted_survival.py``).

``survival:cox`` is refused, not approximated: XGBoost's Cox objective computes each row's gradient over the
risk set of the rows *it holds*, so under the communicator each site uses its own risk sets. The federated model
is then a site-stratified boosted Cox which no pooled ``xgboost.train`` reproduces (XGBoost has no strata; pooled
training uses the risk sets of all sites together). The federated, exact Cox model is ``cox-ph``.

In this process (like ``cox-ph``): each site is a thread with its own communicator rank (XGBoost's communicator
is per thread), and the hub's federated server listens on a fresh port for this training only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedomop.federated.errors import StudyError
from fedomop.federated.models import xgb_common, xgb_histogram

Array = NDArray[np.float64]
AFT = "xgboost-aft"
COX = "xgboost-cox"
AFT_SCALE = 1.0
AFT_PARAMS: dict[str, Any] = {
    "objective": "survival:aft",
    "eval_metric": "aft-nloglik",
    "aft_loss_distribution": "normal",
    "aft_loss_distribution_scale": AFT_SCALE,
}
COX_GAP = (
    "xgboost survival:cox does not match pooled training through the federated communicator: each site computes "
    "the Cox gradient over its own risk sets, so the result is a site-stratified boosted Cox that no pooled "
    "xgboost.train reproduces"
)


@dataclass(frozen=True)
class Part:
    """One site's rows (missing values stay NaN): covariates, follow-up time (days) and event flag."""

    X: Array
    time: Array
    event: NDArray[np.bool_]


def refuse_cox() -> None:
    raise StudyError(
        COX_GAP,
        where=f"--model {COX}",
        fix=f"use --model {AFT} (matches pooled training) or --model cox-ph (exact site-stratified Cox)",
    )


def params() -> dict[str, Any]:
    return xgb_common.params(AFT_PARAMS)


def dmatrix(X: Array, time: Array, event: NDArray[np.bool_]) -> Any:
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


def site_train(part: Part, edges: list[np.ndarray], *, address: str, world: int, rank: int, rounds: int) -> bytes:
    """One site under the communicator: its globally-binned rows, every rank ends with the same booster."""
    xgb = xgb_common.xgboost()
    with xgb.collective.CommunicatorContext(
        dmlc_communicator="federated",
        federated_server_address=address,
        federated_world_size=world,
        federated_rank=rank,
        dmlc_timeout=300,
    ):
        matrix = dmatrix(xgb_common.discretise(part.X, edges), part.time, part.event)
        return xgb_common.booster_bytes(xgb.train(params(), matrix, num_boost_round=rounds))


def train_federated(parts: list[Part], edges: list[np.ndarray], rounds: int) -> bytes:
    """Start the federated server, train every site at once (one thread each), return the common booster."""
    from xgboost.federated import run_federated_server

    xgb_histogram.require_federated_xgboost()
    port = xgb_histogram.free_port()
    with xgb_histogram._native_stderr_to_debug_log():
        run_federated_server(len(parts), port, blocking=False, timeout=600)
    models: dict[int, bytes] = {}
    failures: dict[int, str] = {}

    def run(rank: int) -> None:
        try:
            models[rank] = site_train(
                parts[rank], edges, address=f"127.0.0.1:{port}", world=len(parts), rank=rank, rounds=rounds
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
            f"federated survival:aft training failed: {failures or 'sites ended with different models'}",
            where=AFT,
            fix="rerun with FEDOMOP_DEBUG=1 to see XGBoost's log",
        )
    return models[0]


def train_plain(parts: list[Part], rounds: int, edges: list[np.ndarray] | None = None) -> bytes:
    """An ordinary booster on the rows of ``parts`` together: the pooled reference (with ``edges``: on the same
    discretised matrix as the federated run) or one site alone (its own raw values)."""
    xgb = xgb_common.xgboost()
    X = np.vstack([p.X for p in parts])
    matrix = dmatrix(
        xgb_common.discretise(X, edges) if edges is not None else X,
        np.concatenate([p.time for p in parts]),
        np.concatenate([p.event for p in parts]),
    )
    return xgb_common.booster_bytes(xgb.train(params(), matrix, num_boost_round=rounds))


def log_time(raw: bytes, X: Array, edges: list[np.ndarray] | None) -> Array:
    """The predicted location f(x) of ln T (the booster's margin)."""
    features = xgb_common.discretise(X, edges) if edges is not None else X
    booster = xgb_common.load_booster(raw)
    margin = booster.predict(xgb_common.xgboost().DMatrix(features, missing=np.nan), output_margin=True)
    return np.asarray(margin, dtype=np.float64)


def survival_at(log_time_location: Array, horizon: float, scale: float = AFT_SCALE) -> Array:
    """S(h | x) = P(T > h) = 1 - Phi((ln h - f(x)) / sigma) for the normal AFT model."""
    from scipy.special import ndtr

    return np.asarray(1.0 - ndtr((np.log(horizon) - log_time_location) / scale), dtype=np.float64)

"""Survival metrics on a site's held-out rows: Harrell's C, time-dependent AUROC, Brier score, calibration.

Censoring is handled by inverse probability of censoring weights (IPCW) where the metric needs them, with the
censoring distribution G(t) = P(C > t) estimated by Kaplan-Meier on the same held-out rows (reverse KM: a
censored row is the "event"). Definitions:

* Harrell's C (Harrell et al. 1982, JAMA 247:2543; 1996, Stat Med 15:361): a pair is comparable when the
  shorter time ends in an event (T_i < T_j, event_i; or T_i = T_j with event_i and not event_j); it is
  concordant when the row with the shorter time has the higher risk; equal risks count one half.
* Cumulative/dynamic AUROC at horizon t (Heagerty et al. 2000; IPCW form of Uno et al. 2007): cases are
  events by t weighted 1/G(T_i-), controls are rows still at risk after t; AUC = weighted share of
  (case, control) pairs where the case has the higher risk, ties one half.
* Brier score at t (Graf et al. 1999, Stat Med 18:2529): mean of S(t|x)^2 / G(T_i-) over events by t and
  (1 - S(t|x))^2 / G(t) over rows beyond t; rows censored before t get weight 0.
* Calibration at t: rows grouped into quantile bins of predicted risk; per bin the mean predicted event
  probability 1 - S(t|x) against the Kaplan-Meier observed 1 - S_KM(t); the summary is their mean absolute
  gap weighted by bin size (an integrated calibration index over bins).
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Events = NDArray[Any]  # 0/1 floats or booleans: an event indicator (1 = event, 0 = censored)


def kaplan_meier(time: Array, event: Events) -> tuple[Array, Array]:
    """Distinct event times and the product-limit survival just after each."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    times = np.unique(time[event])
    at_risk = np.array([(time >= t).sum() for t in times], dtype=np.float64)
    deaths = np.array([(event & (time == t)).sum() for t in times], dtype=np.float64)
    survival = np.cumprod(1.0 - deaths / at_risk).astype(np.float64) if len(times) else np.array([], dtype=np.float64)
    return times.astype(np.float64), survival


def step_value(times: Array, values: Array, at: float, *, before: bool = False) -> float:
    """A right-continuous step function (1 before the first step) at ``at``; ``before``: its left limit."""
    index = np.searchsorted(times, at, side="left" if before else "right") - 1
    return float(values[index]) if index >= 0 else 1.0


def censoring_survival(time: Array, event: Events) -> tuple[Array, Array]:
    """G(t) = P(C > t) by reverse Kaplan-Meier (censored rows are the events)."""
    return kaplan_meier(time, ~np.asarray(event, dtype=bool))


def harrell_c(time: Array, event: Events, risk: Array) -> float:
    """Harrell's concordance index; NaN when no pair is comparable."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    risk = np.asarray(risk, dtype=np.float64)
    concordant = 0.0
    comparable = 0.0
    for i in np.flatnonzero(event):
        later = (time > time[i]) | ((time == time[i]) & ~event)
        later[i] = False
        n = float(later.sum())
        if not n:
            continue
        comparable += n
        concordant += float((risk[i] > risk[later]).sum()) + 0.5 * float((risk[i] == risk[later]).sum())
    return concordant / comparable if comparable else float("nan")


def cumulative_dynamic_auc(time: Array, event: Events, risk: Array, horizon: float) -> float:
    """IPCW cumulative/dynamic AUROC at ``horizon``; NaN without cases or controls."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    risk = np.asarray(risk, dtype=np.float64)
    g_times, g_values = censoring_survival(time, event)
    cases = np.flatnonzero(event & (time <= horizon))
    controls = time > horizon
    if not len(cases) or not controls.any():
        return float("nan")
    control_risk = risk[controls]
    numerator = 0.0
    denominator = 0.0
    for i in cases:
        g = step_value(g_times, g_values, time[i], before=True)
        if g <= 0:
            continue
        weight = 1.0 / g
        numerator += weight * (float((risk[i] > control_risk).sum()) + 0.5 * float((risk[i] == control_risk).sum()))
        denominator += weight * len(control_risk)
    return numerator / denominator if denominator else float("nan")


def brier_score(time: Array, event: Events, survival: Array, horizon: float) -> float:
    """IPCW Brier score of predicted survival probabilities S(horizon|x); NaN when G reaches 0 too early."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    survival = np.asarray(survival, dtype=np.float64)
    g_times, g_values = censoring_survival(time, event)
    g_horizon = step_value(g_times, g_values, horizon)
    if g_horizon <= 0:
        return float("nan")
    total = 0.0
    for i in range(len(time)):
        if time[i] <= horizon and event[i]:
            g = step_value(g_times, g_values, time[i], before=True)
            total += survival[i] ** 2 / g if g > 0 else 0.0
        elif time[i] > horizon:
            total += (1.0 - survival[i]) ** 2 / g_horizon
    return total / len(time) if len(time) else float("nan")


class Calibration(TypedDict):
    """Per risk bin: rows, mean predicted and observed event probability; ``ici``: their row-weighted mean gap."""

    bins: list[dict[str, float]]
    ici: float


def calibration_at(time: Array, event: Events, survival: Array, horizon: float, bins: int = 5) -> Calibration:
    """Predicted vs Kaplan-Meier observed event probability by ``horizon`` in quantile bins of predicted risk."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    predicted = 1.0 - np.asarray(survival, dtype=np.float64)
    if not len(time):
        return {"bins": [], "ici": float("nan")}
    edges = np.unique(np.quantile(predicted, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, max(len(edges) - 2, 0))
    rows = []
    gap = 0.0
    for b in range(max(len(edges) - 1, 1)):
        members = which == b
        if not members.any():
            continue
        km_times, km_values = kaplan_meier(time[members], event[members])
        observed = 1.0 - step_value(km_times, km_values, horizon)
        mean_predicted = float(predicted[members].mean())
        rows.append({"n": int(members.sum()), "predicted": mean_predicted, "observed": observed})
        gap += members.sum() * abs(mean_predicted - observed)
    return {"bins": rows, "ici": gap / len(time)}


def survival_metrics(
    time: Array, event: Events, risk: Array, survival_by_horizon: dict[float, Array]
) -> dict[str, float]:
    """Harrell's C, and per horizon the td-AUROC, Brier score and calibration gap (names carry the horizon)."""
    values = {"c_index": harrell_c(time, event, risk)}
    for horizon, survival in survival_by_horizon.items():
        label = f"{horizon:g}d"
        values[f"auroc_{label}"] = cumulative_dynamic_auc(time, event, risk, horizon)
        values[f"brier_{label}"] = brier_score(time, event, survival, horizon)
        values[f"calibration_{label}"] = float(calibration_at(time, event, survival, horizon)["ici"])
    return values

"""The Cox proportional-hazards model, stratified by site, fitted by Newton-Raphson over per-site sums.

Method: Cox (1972), "Regression models and life-tables", J. R. Stat. Soc. B 34:187-220, with Efron's (1977)
approximation for tied event times ("The efficiency of Cox's likelihood function for censored data", JASA
72:557-565). Stratified by site: each site keeps its own baseline hazard and risk sets, so the partial
log-likelihood is a sum over sites of terms each site computes from its own rows alone. A federated fit is then
*exact*: every Newton step sums the sites' log-likelihood, gradient and Hessian (p + p*p numbers per site, no
row leaves a site) and gives the same coefficients as a pooled, site-stratified fit on the same matrix
(``tests/federated/test_survival_math.py`` checks it against lifelines to 1e-6).

Complete cases only: a row with a missing covariate is left out by the site (the count is reported, suppressed
below the small-cell threshold). Covariates are used as given (no centring in the model; centring is a
numerical device here and does not change the coefficients).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


@dataclass(frozen=True)
class SiteSums:
    """One site's contribution at the current coefficients: partial log-likelihood, its gradient and Hessian."""

    loglik: float
    gradient: Array
    hessian: Array
    events: int
    rows: int


def efron_sums(X: Array, time: Array, event: Array, beta: Array) -> SiteSums:
    """Partial log-likelihood, gradient and Hessian of one stratum (one site), Efron ties.

    For each distinct event time t with d events (set D) and risk set R = {i: T_i >= t}, with w = exp(x.beta):
    l += sum_D x.beta - sum_{k<d} log(S0 - k/d D0),   S0 = sum_R w, D0 = sum_D w (and S1, S2, D1, D2 likewise
    with w x and w x x^T); the gradient and Hessian follow term by term.
    """
    X = np.asarray(X, dtype=np.float64)
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    n, p = X.shape
    if n == 0:
        return SiteSums(0.0, np.zeros(p), np.zeros((p, p)), 0, 0)
    order = np.argsort(time, kind="stable")
    X, time, event = X[order], time[order], event[order]
    eta = X @ beta
    shift = float(eta.max())  # exp(eta - shift) keeps the sums finite; log-likelihood corrected below
    w = np.exp(eta - shift)
    wx = w[:, None] * X
    wxx = wx[:, :, None] * X[:, None, :]
    # risk-set sums: everyone with time >= t, i.e. a reverse cumulative sum over the time-sorted rows
    s0 = np.cumsum(w[::-1])[::-1]
    s1 = np.cumsum(wx[::-1], axis=0)[::-1]
    s2 = np.cumsum(wxx[::-1], axis=0)[::-1]
    loglik = 0.0
    gradient = np.zeros(p)
    hessian = np.zeros((p, p))
    event_times = np.unique(time[event])
    starts = np.searchsorted(time, event_times, side="left")  # first row at each event time: its risk set
    for t, start in zip(event_times, starts, strict=True):
        tied = (time == t) & event
        d = int(tied.sum())
        d0, d1, d2 = w[tied].sum(), wx[tied].sum(axis=0), wxx[tied].sum(axis=0)
        loglik += float(eta[tied].sum())
        gradient += X[tied].sum(axis=0)
        for k in range(d):
            frac = k / d
            a0 = s0[start] - frac * d0
            a1 = s1[start] - frac * d1
            a2 = s2[start] - frac * d2
            loglik -= float(np.log(a0) + shift)
            mean = a1 / a0
            gradient -= mean
            hessian -= a2 / a0 - np.outer(mean, mean)
    return SiteSums(loglik, gradient, hessian, int(event.sum()), n)


@dataclass
class CoxFit:
    """Coefficients, their standard errors (inverse observed information) and how the fit went."""

    beta: Array
    standard_errors: Array
    loglik: float
    iterations: int
    converged: bool
    history: list[float] = field(default_factory=list)


def newton_step(total: SiteSums, beta: Array) -> Array:
    """One Newton-Raphson step from the summed sums: beta + I^{-1} g, with I = -H the observed information."""
    information = -total.hessian
    return beta + np.linalg.solve(information, total.gradient)


def add_sums(parts: list[SiteSums]) -> SiteSums:
    """The strata's sums add up: the stratified partial likelihood is the sum of the sites' terms."""
    p = parts[0].gradient.shape[0]
    return SiteSums(
        sum(s.loglik for s in parts),
        np.sum([s.gradient for s in parts], axis=0) if parts else np.zeros(p),
        np.sum([s.hessian for s in parts], axis=0) if parts else np.zeros((p, p)),
        sum(s.events for s in parts),
        sum(s.rows for s in parts),
    )


def fit_stratified(
    sums_at: Callable[[Array], SiteSums],
    p: int,
    *,
    max_iterations: int = 50,
    tolerance: float = 1e-10,
) -> CoxFit:
    """Newton-Raphson with step halving over ``sums_at(beta) -> SiteSums`` (summed over sites by the caller).

    Stops when the largest change of a coefficient is below ``tolerance``; a step that lowers the
    log-likelihood is halved (up to 30 times), as robust Cox implementations do.
    """
    evaluate = sums_at
    beta = np.zeros(p)
    current = evaluate(beta)
    history = [current.loglik]
    for iteration in range(1, max_iterations + 1):
        proposal = newton_step(current, beta)
        candidate = evaluate(proposal)
        halvings = 0
        while candidate.loglik < current.loglik - 1e-12 and halvings < 30:
            proposal = (beta + proposal) / 2
            candidate = evaluate(proposal)
            halvings += 1
        change = float(np.max(np.abs(proposal - beta)))
        beta, current = proposal, candidate
        history.append(current.loglik)
        if change < tolerance:
            errors = np.sqrt(np.diag(np.linalg.inv(-current.hessian)))
            return CoxFit(beta, errors, current.loglik, iteration, True, history)
    errors = np.sqrt(np.abs(np.diag(np.linalg.pinv(-current.hessian))))
    return CoxFit(beta, errors, current.loglik, max_iterations, False, history)


def breslow_baseline(X: Array, time: Array, event: Array, beta: Array) -> tuple[Array, Array]:
    """A site's baseline cumulative hazard H0(t) at its distinct event times (Breslow, 1972), for predictions.

    Stratified Cox: each site has its own baseline; the site keeps it and predicts S(t|x) = exp(-H0(t) e^{x.beta}).
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=bool)
    w = np.exp(np.asarray(X, dtype=np.float64) @ beta)
    times = np.unique(time[event])
    increments = np.array([event[time == t].sum() / w[time >= t].sum() for t in times])
    return times, np.cumsum(increments)


def survival_at(times: Array, cumulative_hazard: Array, risk: Array, horizon: float) -> Array:
    """S(horizon | x) = exp(-H0(horizon) * exp(x.beta)) for each row's relative risk ``risk`` = exp(x.beta)."""
    index = np.searchsorted(times, horizon, side="right") - 1
    h0 = cumulative_hazard[index] if index >= 0 else 0.0
    return np.exp(-h0 * np.asarray(risk, dtype=np.float64))
